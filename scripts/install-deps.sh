#!/usr/bin/env bash
# Installs the Debian packages moat needs to build, test and demo. Idempotent:
# packages already installed are skipped, and apt is not touched at all when
# nothing is missing. Needs root (or sudo).
set -euo pipefail

packages=(
  # guest kernel build
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils
  # the test node: Debian's kernel + modules, QEMU (TCG), busybox for its initramfs
  linux-image-amd64 qemu-system-x86 busybox-static cpio kmod
  # protoc for the CRI and agent protocols
  protobuf-compiler
  # container images: registry, image tools, block images
  docker-registry umoci skopeo erofs-utils e2fsprogs
  # networking: CNI plugins, ip; iptables for the portmap plugin (hostPort)
  containernetworking-plugins iproute2 iptables curl
  # the Python gRPC clients of the CRI tests (a venv from scripts/python-cri-env.sh)
  python3 python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
