#!/usr/bin/env bash
# Pod benchmark (`make bench-pods`): a native pod (the built-in runc
# handler) against a microVM pod, through moatd as a user drives it with
# moatctl; prints a table: RunPodSandbox, then CreateContainer +
# StartContainer until the container's first output, and the host memory
# one idle pod holds (its processes' proportional set size: for a native
# pod its agent and the namespace holder, for a microVM pod its moat-vmm,
# guest memory included; the container's own process in both).
# Runs directly where the host's KVM can run guests, else inside the test node.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
probe=$(target/release/moat-node probe)
echo "bench-pods: $probe"

read -r -d '' script <<'SH' || true
set -e
W=$(mktemp -d /tmp/moat-bench-pods.XXXXXX)
. scripts/lib/local-moatd.sh
cleanup() {
  local_moatd_stop "$W" moatbench1
  rm -rf "$W"
}
trap cleanup EXIT
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Proportional set size in KiB of every process whose cgroup or command
# line names the pod.
pss() {
  total=0
  for d in /proc/[0-9]*; do
    if grep -q "$1" "$d/cgroup" 2>/dev/null || tr '\0' ' ' 2>/dev/null < "$d/cmdline" | grep -q "$2"; then
      k=$(awk '/^Pss:/ {print $2}' "$d/smaps_rollup" 2>/dev/null || echo 0)
      total=$((total + ${k:-0}))
    fi
  done
  echo $((total / 1024))
}

local_moatd_start "$W" moatbench1 10.90.0.0/16
$C pull 127.0.0.1:5000/moat/busybox:latest >/dev/null
for handler in runc microvm; do
  : > "$W/run.$handler"; : > "$W/ctr.$handler"; : > "$W/mem.$handler"
  for i in $(seq "$RUNS"); do
    t=$(date +%s%N)
    pod=$($C runp --runtime "$handler" --name "b-$handler-$i" --namespace default --log-dir "$W/pods")
    ms "$t" >> "$W/run.$handler"
    t=$(date +%s%N)
    ctr=$($C create "$pod" 127.0.0.1:5000/moat/busybox:latest --name c -- sh -c 'echo up; exec sleep 3600')
    $C start "$ctr" >/dev/null
    until $C logs "$ctr" 2>/dev/null | grep -q up; do sleep 0.01; done
    ms "$t" >> "$W/ctr.$handler"
    sleep 2
    pss "$pod" "$(echo "$pod" | cut -c1-16)" >> "$W/mem.$handler"
    $C stopp "$pod" >/dev/null; $C rmp "$pod" >/dev/null
  done
done

echo
echo "| pod (median of $RUNS) | RunPodSandbox | create + start → first output | host memory of one idle pod (PSS) |"
echo "|---|---|---|---|"
for handler in runc microvm; do
  echo "| $handler | $(median < "$W/run.$handler") ms | $(median < "$W/ctr.$handler") ms | $(median < "$W/mem.$handler") MiB |"
done
SH
export RUNS=$runs
case "$probe" in
  *"run directly"*) sh -c "$script" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 1800 -- env RUNS="$runs" sh -c "$script" ;;
  *) echo "bench-pods: no way to run pods here: $probe" >&2; exit 1 ;;
esac
