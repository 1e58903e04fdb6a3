#!/usr/bin/env bash
# Boot benchmark (`make bench-boot`): boots the same guest kernel RUNS times
# with moat-vmm and with QEMU's microvm machine in the same run, and prints a
# table: spawn→exit with an initramfs whose /init powers off at once (the
# same for both), spawn→agent-ready with the agent initramfs, VMM RSS.
# Runs directly where the host's KVM can run guests, else inside the test node.
#
# The emulated test node now and then locks up under a stream of nested
# boots. Each round's figures are printed as it ends, so when the node is
# killed for a lockup, a fresh node runs the rounds still missing (at most
# ATTEMPTS nodes) and the table covers every round that finished.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
attempts=${ATTEMPTS:-4}
bench=target/release/moat-bench-boot
files=(--kernel build/vmlinux --poweroff-initrd build/poweroff.cpio --agent-initrd build/initramfs.cpio)
probe=$(target/release/moat-node probe)
echo "bench-boot: $probe"
case "$probe" in
  *"run directly"*) exec "$bench" "${files[@]}" --runs "$runs" ;;
  *"inside the test node"*) ;;
  *) echo "bench-boot: no environment here can boot microVMs" >&2; exit 1 ;;
esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
done_rounds=0
for attempt in $(seq 1 "$attempts"); do
  left=$((runs - done_rounds))
  [ "$left" -gt 0 ] || break
  [ "$attempt" -eq 1 ] || echo "bench-boot: node attempt $attempt for the $left rounds left" >&2
  # Only the command's own output (stdout) is kept: on a lockup moat-node
  # repeats the console on stderr, which would count rounds twice.
  target/release/moat-node run --timeout 1800 -- "$bench" "${files[@]}" --runs "$left" \
    > "$out/attempt-$attempt.log" || true
  done_rounds=$(cat "$out"/attempt-*.log | grep -c '@round ' || true)
done
table_args=()
for f in "$out"/attempt-*.log; do table_args+=(--table-from "$f"); done
"$bench" "${table_args[@]}"
# Each failed boot with its reason (moat-vmm's last line, e.g. a triple fault).
grep -h -E '^(moat-vmm|moat-vmm ready|qemu \((lean|defaults)\)) run [0-9]+: ' "$out"/attempt-*.log || true
used=$(ls "$out"/attempt-*.log | wc -l)
qemu=$("${MOAT_NODE_QEMU:-qemu-system-x86_64}" --version | head -n1)
echo "test node ($qemu): $used node attempt(s) for $done_rounds of $runs rounds, $((used - 1)) node(s) replaced after dying mid-run"
