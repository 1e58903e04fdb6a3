#!/usr/bin/env bash
# The moat demo: boot a pod microVM with moat-vmm and talk to its agent over
# vsock — directly where the host's KVM can run guests, else inside the test
# node. Run by `make demo` after the artefacts are built.
set -euo pipefail
cd "$(dirname "$0")/.."

probe=$(target/release/moat-node probe)
echo "demo: $probe"

read -r -d '' script <<'SH' || true
set -e
dir=$(mktemp -d /tmp/moat-demo.XXXXXX)
echo "demo: starting moat-vmm (1 vCPU, 256 MiB) with the moat guest kernel and agent"
start=$(date +%s%N)
target/release/moat-vmm --kernel build/vmlinux --initrd build/initramfs.cpio \
  --cpus 1 --memory-mib 256 --vsock-uds "$dir/vsock.sock" --api-sock "$dir/api.sock" \
  --serial "$dir/console.log" &
vmm=$!
target/release/moat-agentctl --vsock-uds "$dir/vsock.sock" --wait-secs 60 ping
echo "demo: agent answered $(( ($(date +%s%N) - start) / 1000000 )) ms after moat-vmm was spawned"
target/release/moat-agentctl --vsock-uds "$dir/vsock.sock" details
echo "demo: VM state from the control socket:"
printf '{"op":"state"}\n' | timeout 5 nc -U -q1 "$dir/api.sock" 2>/dev/null || \
  python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"{\"op\":\"state\"}\n"); print(s.makefile().readline().strip())' "$dir/api.sock"
echo "demo: asking the agent to power the guest off"
target/release/moat-agentctl --vsock-uds "$dir/vsock.sock" shutdown
rc=0; wait "$vmm" || rc=$?
echo "demo: moat-vmm exited with $rc (0 = guest powered off cleanly)"
echo "demo: guest console:"; sed 's/^/  | /' "$dir/console.log"
rm -rf "$dir"
exit "$rc"
SH

case "$probe" in
  *"run directly"*) sh -c "$script" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 300 -- sh -c "$script" ;;
  *) echo "demo: no environment here can boot microVMs" >&2; exit 1 ;;
esac
