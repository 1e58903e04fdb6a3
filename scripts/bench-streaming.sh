#!/usr/bin/env bash
# Streaming benchmark (`make bench-streaming`): one pod, through moatd's
# streaming server, as a user drives it with moatctl and curl; prints a
# table: exec of `true` as ExecSync and as a streaming (WebSocket) session,
# port-forward throughput (SPDY, 64 MiB per connection, 1 and 4 at once),
# and moatd's RSS with 16 idle exec sessions open.
# Runs directly where the host's KVM can run guests, else inside the test node.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
probe=$(target/release/moat-node probe)
echo "bench-streaming: $probe"

read -r -d '' script <<'SH' || true
set -e
W=$(mktemp -d /tmp/moat-bench-streaming.XXXXXX)
. scripts/lib/local-moatd.sh
cleanup() {
  [ -n "${pf:-}" ] && kill "$pf" 2>/dev/null
  [ -n "${idle:-}" ] && kill $idle 2>/dev/null
  if [ -n "${pod:-}" ]; then $C stopp "$pod" >/dev/null 2>&1; $C rmp "$pod" >/dev/null 2>&1; fi
  local_moatd_stop "$W" moatbench0
  rm -rf "$W"
}
trap cleanup EXIT
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss() { awk '/^VmRSS:/ {print int($2/1024)}' "/proc/$1/status"; }

local_moatd_start "$W" moatbench0 10.89.0.0/16
$C pull 127.0.0.1:5000/moat/busybox:latest >/dev/null
pod=$($C runp --runtime microvm --name bench --namespace default --log-dir "$W/pods")
ctr=$($C create "$pod" 127.0.0.1:5000/moat/busybox:latest --name web -- \
  sh -c 'mkdir -p /www && head -c 67108864 /dev/zero > /www/big && exec httpd -f -p 127.0.0.1:8080 -h /www')
$C start "$ctr" >/dev/null
until $C exec --sync "$ctr" -- test -s /www/big 2>/dev/null; do sleep 0.5; done
sleep 2

for _ in $(seq "$RUNS"); do t=$(date +%s%N); $C exec --sync "$ctr" -- true; ms "$t"; done | median > "$W/sync"
for _ in $(seq "$RUNS"); do t=$(date +%s%N); $C exec "$ctr" -- true; ms "$t"; done | median > "$W/ws"

$C port-forward "$pod" :8080 > "$W/pf.out" 2>&1 &
pf=$!
for _ in $(seq 100); do grep -q Forwarding "$W/pf.out" && break; sleep 0.1; done
port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$W/pf.out")
get() { curl -sS -o /dev/null "http://127.0.0.1:$port/big"; }
get
t=$(date +%s%N); get; one=$(ms "$t")
t=$(date +%s%N)
gets=
for _ in 1 2 3 4; do get & gets="$gets $!"; done
wait $gets; four=$(ms "$t")
kill "$pf"; wait "$pf" 2>/dev/null || true; pf=

base=$(rss "$moatd")
# Each session's stdin: a FIFO this shell holds open and never writes.
mkfifo "$W/quiet"
exec 3<>"$W/quiet"
idle=
for _ in $(seq 16); do
  $C exec -i "$ctr" -- cat <&3 > /dev/null 2>&1 &
  idle="$idle $!"
done
sleep 10
open=$($C exec --sync "$ctr" -- sh -c 'ps -o args | grep -c "^cat$"' || echo '?')
with=$(rss "$moatd")

echo
echo "| measure (median of $RUNS where repeated) | value |"
echo "|---|---|"
echo "| exec \`true\`: ExecSync (moatctl exec --sync) | $(cat "$W/sync") ms |"
echo "| exec \`true\`: streaming session (moatctl exec, WebSocket v5) | $(cat "$W/ws") ms |"
echo "| port-forward, 1 connection, 64 MiB (SPDY, curl) | $(awk -v t="$one" 'BEGIN {printf "%.1f", 64000/t}') MiB/s |"
echo "| port-forward, 4 connections at once, 4 x 64 MiB | $(awk -v t="$four" 'BEGIN {printf "%.1f", 256000/t}') MiB/s in all |"
echo "| moatd RSS: no session / 16 idle exec sessions ($open open) | $base MiB / $with MiB (+$((with - base)) MiB) |"
SH
export RUNS=$runs
case "$probe" in
  *"run directly"*) sh -c "$script" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 1800 -- env RUNS="$runs" sh -c "$script" ;;
  *) echo "bench-streaming: no environment here can boot microVMs" >&2; exit 1 ;;
esac
