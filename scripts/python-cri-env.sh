#!/usr/bin/env bash
# A Python virtualenv with the gRPC clients other people wrote, for the
# CRI client tests: grpcio + grpcio-tools (stubs generated at test time from
# the CRI api.proto) and h2 (hyper-h2, raw HTTP/2 requests). Idempotent:
# a stamp file records what was installed; nothing is fetched when it matches.
#
#   scripts/python-cri-env.sh        prints the venv's python on its last line
# Environment: MOAT_PYENV (default ~/.cache/moat/pyenv).
set -euo pipefail
venv=${MOAT_PYENV:-${XDG_CACHE_HOME:-$HOME/.cache}/moat/pyenv}
packages=(grpcio grpcio-tools h2 protobuf)
want="v1 ${packages[*]}"
stamp=$venv/.moat-stamp

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv/bin/python"
  exit 0
fi
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "python-cri-env: $python not found (scripts/install-deps.sh installs python3-venv)" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
rm -rf "$venv"
"$python" -m venv "$venv" >&2 || { echo "python-cri-env: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" -m pip install -q "${packages[@]}" >&2
"$venv/bin/python" -c 'import grpc, grpc_tools, h2, google.protobuf' >&2
echo "$want" > "$stamp"
echo "python-cri-env: grpcio $("$venv/bin/python" -c 'import grpc; print(grpc.__version__)'), h2 $("$venv/bin/python" -c 'import h2; print(h2.__version__)') in $venv" >&2
echo "$venv/bin/python"
