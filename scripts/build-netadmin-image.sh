#!/usr/bin/env bash
# Builds the "netadmin" test image (OCI layout): the busybox test image's
# busybox plus Debian's iptables (nft and legacy back ends, their xtables
# extensions) and iproute2's ip, with the shared libraries they load, for
# the tests of a
# privileged container managing its pod's network. No image is downloaded:
# the files come from the packages installed here.
#
# Usage: scripts/build-netadmin-image.sh OUT_LAYOUT_DIR   (tag: latest)
set -euo pipefail
out=${1:?usage: build-netadmin-image.sh OUT_LAYOUT_DIR}
busybox=${BUSYBOX:-/bin/busybox}
nft=/usr/sbin/xtables-nft-multi
legacy=/usr/sbin/xtables-legacy-multi
xtables=/usr/lib/x86_64-linux-gnu/xtables
ip=/bin/ip
for f in "$busybox" "$nft" "$legacy" "$xtables" "$ip"; do
  [ -e "$f" ] || { echo "build-netadmin-image: $f missing (apt-get install busybox-static iptables iproute2)" >&2; exit 1; }
done
if [ -f "$out/index.json" ] && [ "$out/index.json" -nt "$0" ] && [ "$out/index.json" -nt "$nft" ] && [ "$out/index.json" -nt "$busybox" ]; then
  echo "build-netadmin-image: $out is up to date" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
root=$work/bundle/rootfs
mkdir -p "$root/bin" "$root/sbin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev" "$root/run"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# iptables: both multi-call binaries, the usual names, extensions, libraries.
cp "$nft" "$legacy" "$root/sbin/"
# iproute2's ip (busybox's cannot make vxlan devices), found first in PATH.
cp "$ip" "$root/sbin/ip"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf xtables-nft-multi "$root/sbin/$n"
  ln -sf xtables-legacy-multi "$root/sbin/${n/tables/tables-legacy}"
done
mkdir -p "$root$xtables"
cp -a "$xtables/." "$root$xtables/"
copy_libs() {
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
}
for f in "$nft" "$legacy" "$ip" "$xtables"/*.so; do copy_libs "$f"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
umoci config --image "$out:latest" --os linux --architecture amd64 \
  --config.env PATH=/sbin:/bin:/usr/sbin:/usr/bin --config.cmd sh --config.workingdir / \
  --author moat >/dev/null
umoci gc --layout "$out"
echo "build-netadmin-image: wrote $out (busybox + iptables, tag latest)" >&2
