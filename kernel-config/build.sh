#!/usr/bin/env bash
# Builds the moat guest kernel (an uncompressed ELF vmlinux) from a kernel
# source tree: tinyconfig + guest.config. The result is cached outside the
# clone, keyed by the source version and the hash of guest.config and this
# script, so a second build is instant.
#
# Usage: kernel-config/build.sh [--print-path]
#   MOAT_KERNEL_SRC      kernel source tarball or directory
#                        (default: /usr/src/linux-source-6.1.tar.xz, from
#                        Debian's linux-source-6.1 package)
#   MOAT_CACHE_DIR       cache root (default: ${XDG_CACHE_HOME:-~/.cache}/moat)
#   MOAT_KERNEL_JOBS     parallel jobs (default: nproc)
# Prints the path of the cached vmlinux on its last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${MOAT_KERNEL_SRC:-/usr/src/linux-source-6.1.tar.xz}
cache_root=${MOAT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moat}
jobs=${MOAT_KERNEL_JOBS:-$(nproc)}
fragment=$here/guest.config

log() { echo "kernel-config: $*" >&2; }

[ -e "$src" ] || { log "kernel source '$src' not found (apt-get install linux-source-6.1, or set MOAT_KERNEL_SRC)"; exit 1; }

# Source identity: the Debian package version when the default tarball is
# used, else the tarball's/directory's own identity.
if [ "$src" = /usr/src/linux-source-6.1.tar.xz ] && command -v dpkg-query >/dev/null; then
  src_id=$(dpkg-query -W -f='${Package}-${Version}' linux-source-6.1)
elif [ -f "$src" ]; then
  src_id=$(basename "$src")-$(stat -c '%s-%Y' "$src")
else
  src_id=$(basename "$src")-$(make -s -C "$src" kernelversion 2>/dev/null || echo unknown)
fi
frag_hash=$(cat "$fragment" "$here/build.sh" | sha256sum | cut -c1-16)
key=$(echo "$src_id" | tr -c 'A-Za-z0-9._+\n-' '_')-$frag_hash
out_dir=$cache_root/kernel/$key
vmlinux=$out_dir/vmlinux

if [ -s "$vmlinux" ]; then
  log "cached: $vmlinux"
  echo "$vmlinux"
  exit 0
fi

mkdir -p "$cache_root/kernel"
work=$(mktemp -d "$cache_root/kernel/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

if [ -f "$src" ]; then
  log "unpacking $src"
  tar -xf "$src" -C "$work"
  tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
else
  tree=$work/src
  cp -a "$src" "$tree"
fi

log "configuring (tinyconfig + guest.config)"
make -s -C "$tree" ARCH=x86_64 tinyconfig >/dev/null
(cd "$tree" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null)
make -s -C "$tree" ARCH=x86_64 olddefconfig >/dev/null

# Every option the fragment sets must be in the final config as written.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$tree/.config" || { log "option lost in olddefconfig: $line"; missing=1; } ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      if grep -q "^$opt=" "$tree/.config"; then log "option should be unset: $opt"; missing=1; fi ;;
  esac
done < "$fragment"
[ "$missing" = 0 ] || { log "guest.config does not apply cleanly"; exit 1; }

log "building vmlinux with $jobs jobs"
make -s -C "$tree" ARCH=x86_64 -j"$jobs" vmlinux >&2

mkdir -p "$out_dir.tmp"
cp "$tree/vmlinux" "$out_dir.tmp/vmlinux"
cp "$tree/.config" "$out_dir.tmp/config"
echo "$src_id" > "$out_dir.tmp/source"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
log "built in $(( $(date +%s) - start )) s: $vmlinux ($(stat -c %s "$vmlinux") bytes)"
echo "$vmlinux"
