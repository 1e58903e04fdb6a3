#!/usr/bin/env bash
# The moat demo: a local registry, moatd serving CRI, and a pod in its own
# microVM with a container in it (pull, run pod, create and start a
# container, its logs, execs and a port-forward through the streaming
# server, stats, stop,
# remove) — directly where the
# host's KVM can run guests, else inside the test node. Run by `make demo`
# after the artefacts are built.
set -euo pipefail
cd "$(dirname "$0")/.."

probe=$(target/release/moat-node probe)
echo "demo: $probe"

read -r -d '' script <<'SH' || true
set -e
W=$(mktemp -d /tmp/moat-demo.XXXXXX)
. scripts/lib/local-moatd.sh
cleanup() {
  local_moatd_stop "$W" moatdemo0
  rm -rf "$W"
}
trap cleanup EXIT

echo "== 1. a local OCI registry on 127.0.0.1 with the project's busybox image"
echo "== 2. moatd serving CRI on $W/moat.sock (CNI: Debian's bridge + host-local plugins)"
local_moatd_start "$W" moatdemo0 10.88.0.0/16
$C version
$C info

echo "== 3. pull the image through CRI (content store -> layers -> erofs block image)"
$C pull 127.0.0.1:5000/moat/busybox:latest
$C images

echo "== 4. run a pod: its own network namespace, a CNI IP, and a microVM with moat-agent as PID 1"
start=$(date +%s%N)
pod=$($C runp --runtime microvm --name demo --namespace default --label app=demo --log-dir "$W/pods")
echo "RunPodSandbox returned after $(( ($(date +%s%N) - start) / 1000000 )) ms: $pod"
$C pods
$C inspectp "$pod"

echo "== 5. a container in the pod: the image attached as a block device, created and started by the agent"
start=$(date +%s%N)
ctr=$($C create "$pod" 127.0.0.1:5000/moat/busybox:latest --name hello --memory-mib 64 -- \
  sh -c 'echo "hello from $(hostname), pid $$ in its own PID namespace"; echo "kernel $(uname -r)"; while true; do sleep 1; done')
$C start "$ctr" >/dev/null
echo "CreateContainer + StartContainer took $(( ($(date +%s%N) - start) / 1000000 )) ms: $ctr"
$C ps
sleep 1
echo "-- its log (CRI format at $W/pods/default_demo_default-demo/hello/0.log):"
$C logs "$ctr"
echo "-- exec into it (CRI Exec: a WebSocket session on moatd's streaming server):"
$C exec "$ctr" -- sh -c 'echo "exec sees: $(cat /etc/hostname), $(ps | wc -l) process lines, memory limit $(cat /sys/fs/cgroup/memory.max)"'
echo "-- exec with a terminal, and one reading stdin:"
$C exec -t "$ctr" -- sh -c 'echo "on $(tty)"'
echo "piped into the container" | $C exec -i "$ctr" -- cat
set +e; $C exec "$ctr" -- sh -c 'exit 3'; echo "exit code passed back: $?"; set -e
echo "-- port-forward to a web server bound only to 127.0.0.1 inside the pod (SPDY, as kubectl port-forward):"
web=$($C create "$pod" 127.0.0.1:5000/moat/busybox:latest --name web -- \
  sh -c 'mkdir -p /www && echo "served from the pod'"'"'s localhost" > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www')
$C start "$web" >/dev/null
$C port-forward "$pod" :8080 > "$W/port-forward.out" 2>&1 &
pf=$!
for _ in $(seq 100); do grep -q Forwarding "$W/port-forward.out" && break; sleep 0.1; done
cat "$W/port-forward.out"
port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$W/port-forward.out")
for _ in $(seq 50); do curl -sS --max-time 20 "http://127.0.0.1:$port/index.html" 2>/dev/null && break; sleep 0.2; done
kill "$pf"; wait "$pf" 2>/dev/null || true
$C stats
$C statsp

echo "== 6. stop the container (SIGTERM, grace period, SIGKILL), remove it, stop and remove the pod"
$C stop --timeout 2 "$ctr" >/dev/null
$C inspect "$ctr" | grep -E "state|exit code|reason"
$C rm "$ctr" >/dev/null
$C stop --timeout 2 "$web" >/dev/null
$C rm "$web" >/dev/null
$C stopp "$pod"
$C rmp "$pod"
$C pods
echo "== moatd log (pod start, then the last lines)"
grep "pod sandbox ready" "$W/moatd.log" | sed 's/^/  | /'
tail -5 "$W/moatd.log" | sed 's/^/  | /'
SH
case "$probe" in
  *"run directly"*) sh -c "$script" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 600 -- sh -c "$script" ;;
  *) echo "demo: no environment here can boot microVMs" >&2; exit 1 ;;
esac
