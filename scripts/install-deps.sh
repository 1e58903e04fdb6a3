#!/usr/bin/env bash
# Installs the Debian packages moat needs to build, test and demo, and
# virtiofsd (not packaged for bookworm) from crates.io. Idempotent: packages
# already installed are skipped, apt is not touched at all when nothing is
# missing, and virtiofsd is built only when its pinned version is not
# installed. Needs root (or sudo).
set -euo pipefail

packages=(
  # guest kernel build
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils
  # the test node: Debian's kernel + modules, QEMU (TCG; 10.x, see below),
  # busybox for its initramfs
  linux-image-amd64 qemu-system-x86 busybox-static cpio kmod
  # protoc for the CRI and agent protocols
  protobuf-compiler
  # container images: registry, image tools, block images; htpasswd for the
  # registry's password file in the pull-credentials test
  docker-registry umoci skopeo erofs-utils e2fsprogs apache2-utils
  # networking: CNI plugins, ip; iptables for the portmap plugin (hostPort)
  containernetworking-plugins iproute2 iptables curl
  # the Python gRPC clients of the CRI tests (a venv from scripts/python-cri-env.sh)
  python3 python3-venv
  # a WebSocket client written by others for the streaming tests (exec, attach,
  # port-forward over v4/v5.channel.k8s.io)
  python3-websocket
  # the OCI runtime of native pods (the `oci` handler kind)
  runc
  # the streaming TLS test's and the registry TLS tests' certificates
  openssl
  # virtiofsd's build (seccomp, capabilities)
  libseccomp-dev libcap-ng-dev pkg-config
)

# The vhost-user-fs daemon of pod volumes: a pinned release from crates.io,
# built with its locked dependencies into /usr/local/bin.
virtiofsd_version=1.14.0
install_virtiofsd() {
  if /usr/local/bin/virtiofsd --version 2>/dev/null | grep -qF "$virtiofsd_version"; then
    return 0
  fi
  echo "install-deps: building virtiofsd $virtiofsd_version from crates.io"
  $SUDO env PATH="$PATH" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
    cargo install --quiet --locked --root /usr/local virtiofsd --version "$virtiofsd_version"
}

# The test node's QEMU must be 10.0 or newer: bookworm's 7.2 locks up or
# panics the emulated node under nested boots far more often (the table from
# `make node-stress` in the project's notes). On bookworm it comes from the
# distribution's backports suite, enabled from the machine's own Debian
# source entry.
qemu_min=1:10.0
qemu_ok() {
  v=$(dpkg-query -W -f='${Status} ${Version}' qemu-system-x86 2>/dev/null) || return 1
  case "$v" in "install ok installed "*) ;; *) return 1 ;; esac
  dpkg --compare-versions "${v##* }" ge "$qemu_min"
}

missing=()
for p in "${packages[@]}"; do
  [ "$p" != qemu-system-x86 ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ ${#missing[@]} -eq 0 ] && qemu_ok; then
  echo "install-deps: all ${#packages[@]} packages present"
  install_virtiofsd
  exit 0
fi

# Adds bookworm-backports beside the machine's bookworm suites: to the
# `Suites:` line of its deb822 source (or, for a one-line sources.list, a
# line with the same mirror), so no host name is written here.
enable_backports() {
  [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ] || return 0
  grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    if grep -qE '^Suites:.*\bbookworm-updates\b' "$f"; then
      echo "install-deps: enabling bookworm-backports in $f"
      $SUDO sed -i -E '/^Suites:.*\bbookworm-updates\b/ s/$/ bookworm-backports/' "$f"
      return 0
    fi
  done
  local line
  line=$(grep -hE '^deb [^#]*[[:space:]]bookworm[[:space:]]' /etc/apt/sources.list 2>/dev/null | head -n1)
  if [ -n "$line" ]; then
    echo "install-deps: enabling bookworm-backports in /etc/apt/sources.list.d/moat-backports.list"
    echo "$line" | sed -E 's/[[:space:]]bookworm[[:space:]]/ bookworm-backports /' \
      | $SUDO tee /etc/apt/sources.list.d/moat-backports.list > /dev/null
    return 0
  fi
  echo "install-deps: no bookworm source entry found to add bookworm-backports to" >&2
  return 1
}

qemu_args=()
if ! qemu_ok; then
  enable_backports || true
  qemu_args=(qemu-system-x86)
  [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" != bookworm ] \
    || qemu_args=(-t bookworm-backports qemu-system-x86)
fi
echo "install-deps: installing ${missing[*]} ${qemu_args[*]}"
$SUDO apt-get update -q
export DEBIAN_FRONTEND=noninteractive
[ ${#missing[@]} -eq 0 ] || $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
if [ ${#qemu_args[@]} -gt 0 ]; then
  # Without the newer QEMU (no backports reachable) the distribution's
  # still runs the node, only less reliably: say so and go on.
  $SUDO apt-get install -y -q --no-install-recommends "${qemu_args[@]}" \
    || $SUDO apt-get install -y -q --no-install-recommends qemu-system-x86
fi
qemu_ok || echo "install-deps: WARNING: qemu-system-x86 >= $qemu_min is not available here;" \
  "the test node runs on $(dpkg-query -W -f='${Version}' qemu-system-x86) and locks up more often" >&2
install_virtiofsd
