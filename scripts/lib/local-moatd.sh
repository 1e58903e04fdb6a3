# Sourced by the demo and the node load (POSIX sh): a local registry with the
# project's busybox image and a moatd on its own socket, CNI through Debian's
# bridge and host-local plugins, everything under one work directory.
#
#   local_moatd_start WORKDIR BRIDGE SUBNET   sets $moatd (pid) and $C (moatctl);
#                                             $MICROVM_EXTRA: more lines for the
#                                             microvm handler's table
#   local_moatd_stop WORKDIR BRIDGE
local_moatd_start() {
  _w=$1 _bridge=$2 _subnet=$3
  MOAT_REGISTRY_DIR=$_w/registry scripts/registry.sh start
  mkdir -p "$_w/net.d"
  cat > "$_w/net.d/10-moat.conflist" <<J
{"cniVersion":"1.0.0","name":"moat-local","plugins":[{"type":"bridge","bridge":"$_bridge","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","dataDir":"$_w/ipam","ranges":[[{"subnet":"$_subnet"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}
J
  cat > "$_w/moatd.toml" <<T
socket = "$_w/moat.sock"
state_dir = "$_w/state"
run_dir = "$_w/run"
log_dir = "$_w/log"
cni_conf_dir = "$_w/net.d"
agent_timeout_secs = 120
[runtime_handlers.microvm]
kernel = "$PWD/build/vmlinux"
initramfs = "$PWD/build/initramfs.cpio"
vmm = "$PWD/target/release/moat-vmm"
${MICROVM_EXTRA:-}
T
  target/release/moatd --config "$_w/moatd.toml" > "$_w/moatd.log" 2>&1 &
  moatd=$!
  C="target/release/moatctl --socket $_w/moat.sock"
  for _ in $(seq 200); do [ -S "$_w/moat.sock" ] && break; sleep 0.05; done
  [ -S "$_w/moat.sock" ] || { echo "moatd did not start:" >&2; cat "$_w/moatd.log" >&2; return 1; }
}

local_moatd_stop() {
  [ -n "${moatd:-}" ] && kill "$moatd" 2>/dev/null && wait "$moatd" 2>/dev/null
  MOAT_REGISTRY_DIR=$1/registry scripts/registry.sh stop
  ip link del "$2" 2>/dev/null || true
}
