#!/usr/bin/env bash
# Boot benchmark (`make bench-boot`): boots the same guest kernel and
# initramfs RUNS times with moat-vmm and with QEMU's microvm machine in the
# same run, and prints a table (spawn→exit, spawn→agent-ready, VMM RSS).
# Runs directly where the host's KVM can run guests, else inside the test node.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
probe=$(target/release/moat-node probe)
echo "bench-boot: $probe"
cmd=(target/release/moat-bench-boot --kernel build/vmlinux --initrd build/initramfs.cpio --runs "$runs")
case "$probe" in
  *"run directly"*) "${cmd[@]}" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 1800 -- "${cmd[@]}" ;;
  *) echo "bench-boot: no environment here can boot microVMs" >&2; exit 1 ;;
esac
