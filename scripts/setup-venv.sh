#!/usr/bin/env bash
# Installs SPDK's official JSON-RPC client (`pip install spdk` → `spdk-rpc`) into .venv, which the
# integration tests in tests/ drive pcache_tgt with. Idempotent and quiet: a second run that finds
# the right version installed does nothing. Works on a fresh Debian machine with python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SPDK_VERSION=26.9
VENV=.venv
PY=${PYTHON:-python3}

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ -x "$VENV/bin/spdk-rpc" ] &&
    [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("spdk"))' 2>/dev/null)" = "$SPDK_VERSION" ]; then
    exit 0
fi

if ! command -v "$PY" >/dev/null; then
    echo "setup-venv: installing python3" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian ships venv (and its bundled pip) in a separate package.
        echo "setup-venv: python3 -m venv failed; installing python3-venv" >&2
        rm -rf "$VENV"
        sudo_if_needed apt-get update -qq
        pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
            || sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv"
        "$PY" -m venv "$VENV"
    fi
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "spdk==$SPDK_VERSION"
if [ ! -x "$VENV/bin/spdk-rpc" ]; then
    echo "setup-venv: spdk==$SPDK_VERSION installed no spdk-rpc entry point" >&2
    exit 1
fi
echo "setup-venv: spdk-rpc $SPDK_VERSION ready in $VENV" >&2
