#!/usr/bin/env bash
# Builds pcache and starts pcache_tgt on the demo config: a pcache bdev, Pcache0, caching a file
# origin (Origin0) in an emulated pmem file (Pmem0), served over JSON-RPC on /var/tmp/spdk.sock
# (override with PCACHE_RPC_SOCK) and exported over NVMe/TCP as nqn.2026-12.io.pcache:demo on
# 127.0.0.1:4420 (override the port with PCACHE_NVMF_PORT). Ctrl-C stops it; the next run
# reattaches to the cache it left.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${PCACHE_DEMO_DIR:-/var/tmp/pcache-demo}
sock=${PCACHE_RPC_SOCK:-/var/tmp/spdk.sock}
mkdir -p "$state"
cargo build --release -p app -p tools
# The origin is a sparse 1 GiB file; the pmem file is created by bdev_pmem_create itself.
[ -f "$state/origin.img" ] || truncate -s 1G "$state/origin.img"
port=${PCACHE_NVMF_PORT:-4420}
sed -e "s|@STATE@|$state|g" -e "s|@NVMF_PORT@|$port|g" configs/demo.json > "$state/demo.json"
echo "pcache_tgt: config $state/demo.json, RPC socket $sock, NVMe/TCP on 127.0.0.1:$port"
exec ./target/release/pcache_tgt -c "$state/demo.json" -r "$sock" -m "${PCACHE_CPUMASK:-0x1}" "$@"
