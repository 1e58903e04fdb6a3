#!/usr/bin/env bash
# Builds the busybox image moat's tests and demo use, as an OCI image layout,
# from Debian's busybox-static — no image is downloaded. Two layers: busybox
# with its applet links, then a layer that adds /etc/moat-release and deletes
# /etc/deleted-by-layer-2 (so the image carries a whiteout).
#
# Usage: scripts/build-test-image.sh OUT_LAYOUT_DIR   (tag: latest)
set -euo pipefail
out=${1:?usage: build-test-image.sh OUT_LAYOUT_DIR}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build-test-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if [ -f "$out/index.json" ] && [ "$out/index.json" -nt "$0" ] && [ "$out/index.json" -nt "$busybox" ]; then
  echo "build-test-image: $out is up to date" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:latest"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
root=$work/bundle/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
echo "this file is deleted by the image's second layer" > "$root/etc/deleted-by-layer-2"
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
# A fresh unpack, so the second repack stacks a layer on the first.
rm -rf "$work/bundle"
umoci unpack --image "$out:latest" "$work/bundle" >/dev/null
rm "$root/etc/deleted-by-layer-2"
echo "moat test image" > "$root/etc/moat-release"
umoci repack --image "$out:latest" "$work/bundle" >/dev/null
umoci config --image "$out:latest" --os linux --architecture amd64 \
  --config.env PATH=/bin:/usr/bin:/sbin:/usr/sbin --config.cmd sh --config.workingdir / \
  --author moat >/dev/null
umoci gc --layout "$out"
echo "build-test-image: wrote $out (busybox, tag latest)" >&2
