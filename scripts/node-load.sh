#!/bin/sh
# The fixed load of `moat-node stress`, run inside one test node (or
# directly where the host's KVM runs guests): ROUNDS rounds of the boot
# benchmark (moat-vmm and QEMU microvm boots in a row), then PODS pods
# started at once through moatd, each with a container that answers an exec.
# Prints `@round` lines (the benchmark's), `@pod-ready NAME MS` per pod up,
# `@pod-failed NAME` per pod that was not, and `@guest-reset LINE` for each
# guest reset moatd logged. Exits non-zero if any part failed.
set -u
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
pods=${PODS:-3}
rc=0

echo "node-load: $rounds boot-benchmark rounds"
target/release/moat-bench-boot --kernel build/vmlinux --poweroff-initrd build/poweroff.cpio \
  --agent-initrd build/initramfs.cpio --runs "$rounds" || rc=1

echo "node-load: $pods pods at once through moatd"
W=$(mktemp -d /tmp/moat-load.XXXXXX)
. scripts/lib/local-moatd.sh
trap 'local_moatd_stop "$W" moatload0; rm -rf "$W"' EXIT
local_moatd_start "$W" moatload0 10.87.0.0/16 || exit 1
image=127.0.0.1:5000/moat/busybox:latest
$C pull "$image" > /dev/null || exit 1

one_pod() {
  trap - EXIT # the cleanup is the main shell's, not this job's
  name=load$1
  t0=$(date +%s%N)
  pod=$($C runp --runtime microvm --name "$name" --namespace stress --log-dir "$W/pods") &&
  echo "$pod" >> "$W/pod-ids" &&
  ctr=$($C create "$pod" "$image" --name c -- sh -c 'echo up; exec sleep 600') &&
  $C start "$ctr" > /dev/null &&
  [ "$($C exec "$ctr" -- echo ok)" = ok ] || { echo "@pod-failed $name"; return 1; }
  echo "@pod-ready $name $(( ($(date +%s%N) - t0) / 1000000 ))"
}
i=0 jobs=
while [ "$i" -lt "$pods" ]; do one_pod "$i" & jobs="$jobs $!"; i=$((i + 1)); done
for job in $jobs; do wait "$job" || rc=1; done
for pod in $(cat "$W/pod-ids" 2>/dev/null); do
  $C stopp "$pod" > /dev/null 2>&1; $C rmp "$pod" > /dev/null 2>&1
done
grep -iE "triple fault|guest reset" "$W/moatd.log" | sed 's/^/@guest-reset /'
exit $rc
