#!/usr/bin/env bash
# Volume benchmark (`make bench-volumes`): one microVM pod through moatd, as
# a user drives it with moatctl, with a host directory shared over virtio-fs,
# a host file as a raw block volume (virtio-blk, ext2 made in the guest) and
# a tmpfs of the guest's own; the same operations on the host directory
# directly. Prints a table: sequential write (dd, fsync'd) and read (the
# guest's caches dropped first) in MiB/s, and small files created, listed
# with their attributes (ls -l: one lstat each) and unlinked, in files/s;
# then how long a configmap's `..data` swap on the host takes to show in the
# guest. Every figure is timed by busybox's `time` where the work runs (1/100
# s). Runs directly where the host's KVM can run guests, else inside the
# test node (there the host directory is on the node's tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
probe=$(target/release/moat-node probe)
echo "bench-volumes: $probe"

read -r -d '' script <<'SH' || true
set -e
W=$(mktemp -d /tmp/moat-bench-volumes.XXXXXX)
. scripts/lib/local-moatd.sh
cleanup() {
  local_moatd_stop "$W" moatbench2
  rm -rf "$W"
}
trap cleanup EXIT
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The operations, in a directory ($1), with $2 MiB and $3 small files;
# prints the five timings in seconds.
OPS='D=$1; MB=$2; N=$3
T() { busybox time -f %e "$@" 2>&1 >/dev/null | tail -1; }
w=$(T dd if=/dev/zero of=$D/seq bs=1M count=$MB conv=fsync)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
r=$(T dd if=$D/seq of=/dev/null bs=1M)
rm -f $D/seq; mkdir -p $D/small
c=$(T sh -c "i=0; while [ \$i -lt $N ]; do : > $D/small/f\$i; i=\$((i+1)); done")
s=$(T ls -l $D/small)
u=$(T rm -rf $D/small)
echo "$w $r $c $s $u"'
row() {
  echo "$2" | awk -v what="$1" -v mb="$MB" -v n="$FILES" '{
    for (i = 1; i <= 5; i++) if ($i < 0.01) $i = 0.01
    printf "| %s | %d | %d | %d | %d | %d |\n", what, mb / $1, mb / $2, n / $3, n / $4, n / $5 }'
}
# kubelet's atomic writer: the data in a new directory, `..data` swapped
# to it by one rename.
configmap() {
  mkdir -p "$W/cm/..$1"
  echo "$1" > "$W/cm/..$1/key"
  ln -sfn "..$1" "$W/cm/..data_tmp"
  mv -T "$W/cm/..data_tmp" "$W/cm/..data"
  [ -e "$W/cm/key" ] || ln -s ..data/key "$W/cm/key"
}

MICROVM_EXTRA='guest_privileged = true
default_memory_mib = 512'
local_moatd_start "$W" moatbench2 10.91.0.0/16
$C pull 127.0.0.1:5000/moat/busybox:latest >/dev/null
mkdir -p "$W/vol" "$W/host"
truncate -s 1G "$W/disk.img"
configmap v0
pod=$($C runp --runtime microvm --name bench-volumes --namespace default --log-dir "$W/pods")
ctr=$($C create "$pod" 127.0.0.1:5000/moat/busybox:latest --name c --privileged \
  --mount "$W/vol:/vol" --mount "$W/cm:/cm:ro" --device "$W/disk.img:/dev/xvdb:rwm" -- sleep 3600)
$C start "$ctr" >/dev/null
X() { $C exec --sync "$ctr" -- sh -c "$1"; }
X 'mkdir -p /tmpfs /blk && mount -t tmpfs -o size=400m tmpfs /tmpfs && mke2fs -q /dev/xvdb >/dev/null && mount /dev/xvdb /blk'

echo
echo "| where ($MB MiB, $FILES files) | seq write MiB/s | seq read MiB/s | create files/s | stat files/s | unlink files/s |"
echo "|---|---|---|---|---|---|"
row "guest tmpfs" "$(X "set -- /tmpfs $MB $FILES; $OPS")"
row "virtio-fs volume" "$(X "set -- /vol $MB $FILES; $OPS")"
row "virtio-blk volume (ext2)" "$(X "set -- /blk $MB $FILES; $OPS")"
row "host directory directly" "$(sh -c "$OPS" - "$W/host" "$MB" "$FILES")"

# A configmap update: from the swap on the host until a reader in the guest
# sees the new value, less one exec's round trip.
: > "$W/exec"; : > "$W/seen"
for i in 1 2 3 4 5; do
  t=$(date +%s%N); X true; ms "$t" >> "$W/exec"
done
base=$(median < "$W/exec")
for i in 1 2 3 4 5; do
  configmap "v$i"
  t=$(date +%s%N)
  X "until grep -q v$i /cm/key; do usleep 20000; done"
  echo $(( $(ms "$t") - base )) >> "$W/seen"
done
echo
echo "configmap update visible in the guest: median $(median < "$W/seen") ms, at most $(sort -n "$W/seen" | tail -1) ms (of 5; one exec's round trip, $base ms, subtracted)"
$C stopp "$pod" >/dev/null; $C rmp "$pod" >/dev/null
SH
export MB=${MB:-64} FILES=${FILES:-1000}
case "$probe" in
  *"run directly"*) sh -c "$script" ;;
  *"inside the test node"*) target/release/moat-node run --timeout 1800 -- env MB="$MB" FILES="$FILES" sh -c "$script" ;;
  *) echo "bench-volumes: no way to run pods here: $probe" >&2; exit 1 ;;
esac
