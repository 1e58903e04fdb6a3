#!/usr/bin/env bash
# A real OCI registry on loopback for tests and the demo (Debian's
# docker-registry), holding the project's own busybox image.
#
#   scripts/registry.sh start     start it (idempotent) and push the image
#   scripts/registry.sh stop      stop it
#   scripts/registry.sh status
# Environment: MOAT_REGISTRY_ADDR (127.0.0.1:5000), MOAT_REGISTRY_DIR
# (/tmp/moat-registry: config, storage, pid, log), MOAT_TEST_IMAGE_LAYOUT
# (build/images/busybox, made by scripts/build-test-image.sh),
# MOAT_REGISTRY_TLS_CERT and MOAT_REGISTRY_TLS_KEY (PEM files: serve HTTPS),
# MOAT_REGISTRY_CLIENT_CA (with TLS: demand a client certificate signed by
# this CA; MOAT_REGISTRY_PUSH_CERT_DIR holds the one the push uses, in
# Docker's client.cert/client.key layout), MOAT_REGISTRY_USER and
# MOAT_REGISTRY_PASSWORD (demand these credentials, htpasswd).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
addr=${MOAT_REGISTRY_ADDR:-127.0.0.1:5000}
dir=${MOAT_REGISTRY_DIR:-/tmp/moat-registry}
layout=${MOAT_TEST_IMAGE_LAYOUT:-$here/build/images/busybox}
pidfile=$dir/registry.pid
tls_cert=${MOAT_REGISTRY_TLS_CERT:-}
tls_key=${MOAT_REGISTRY_TLS_KEY:-}
client_ca=${MOAT_REGISTRY_CLIENT_CA:-}
push_cert_dir=${MOAT_REGISTRY_PUSH_CERT_DIR:-}
user=${MOAT_REGISTRY_USER:-}
password=${MOAT_REGISTRY_PASSWORD:-}
scheme=http
[ -z "$tls_cert" ] || scheme=https
curl_args=(-sk -o /dev/null -w '%{http_code}')
push_args=(--dest-tls-verify=false)
if [ -n "$push_cert_dir" ]; then
  curl_args+=(--cert "$push_cert_dir/client.cert" --key "$push_cert_dir/client.key")
  push_args+=(--dest-cert-dir "$push_cert_dir")
fi
[ -z "$user" ] || push_args+=(--dest-creds "$user:$password")

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
# Up when /v2/ answers, open (200) or asking for credentials (401).
answering() { curl "${curl_args[@]}" "$scheme://$addr/v2/" 2>/dev/null | grep -qE '^(200|401)$'; }

start() {
  if ! running; then
    mkdir -p "$dir/storage"
    cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $addr
YML
    if [ -n "$tls_cert" ]; then
      printf '  tls:\n    certificate: %s\n    key: %s\n' "$tls_cert" "$tls_key" >> "$dir/config.yml"
      [ -z "$client_ca" ] || printf '    clientcas:\n      - %s\n' "$client_ca" >> "$dir/config.yml"
    fi
    if [ -n "$user" ]; then
      htpasswd -Bbn "$user" "$password" > "$dir/htpasswd"
      printf 'auth:\n  htpasswd:\n    realm: moat-registry\n    path: %s\n' "$dir/htpasswd" >> "$dir/config.yml"
    fi
    nohup docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
    echo $! > "$pidfile"
  fi
  for _ in $(seq 1 200); do
    answering && break
    running || { echo "registry: failed to start:" >&2; cat "$dir/registry.log" >&2; exit 1; }
    sleep 0.05
  done
  answering || { echo "registry: not answering on $addr" >&2; exit 1; }
  [ -f "$layout/index.json" ] || "$here/scripts/build-test-image.sh" "$layout"
  skopeo copy -q "${push_args[@]}" "oci:$layout:latest" "docker://$addr/moat/busybox:latest"
  # The netadmin image (busybox + iptables) beside it, when it was built.
  netadmin=$(dirname "$layout")/netadmin
  if [ -f "$netadmin/index.json" ]; then
    skopeo copy -q "${push_args[@]}" "oci:$netadmin:latest" "docker://$addr/moat/netadmin:latest"
  fi
  echo "registry: serving on $addr with moat/busybox:latest" >&2
}

stop() {
  if running; then kill "$(cat "$pidfile")"; fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && answering; then echo "running on $addr"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
