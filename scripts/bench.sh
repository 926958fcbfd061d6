#!/usr/bin/env bash
# Base-bdev benchmarks with bdevperf, all in one session so ratios compare like with like.
# Prints a markdown table for docs/performance.md. Not part of the test suite (it takes minutes).
# Usage: scripts/bench.sh [seconds per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -p tools >/dev/null 2>&1
dir=$(mktemp -d /var/tmp/pcache-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
truncate -s 1G "$dir/uring.img"
cat > "$dir/bench.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_passthru_create","params":{"base_bdev_name":"Malloc1","name":"Pass0"}},
 {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":4096}},
 {"method":"bdev_uring_create","params":{"name":"Uring0","filename":"$dir/uring.img","block_size":4096}}
]}]}
JSON
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "command: bdevperf -c bench.json -T <bdev> -q 32 -o 4096 -w <workload> -t $secs -m <mask> (-C with 2 cores)"
echo
echo "| bdev | workload | cores | IOPS | MiB/s | avg µs | p99 µs | ratio |"
echo "|---|---|---|---|---|---|---|---|"
declare -A base
run() { # bdev workload mask label
    local out
    # With two reactors every core drives the bdev (-C), each on its own half.
    local every=""
    [ "$3" = 0x1 ] || every="-C"
    out=$(./target/release/bdevperf -c "$dir/bench.json" -T "$1" -q 32 -o 4096 -w "$2" -t "$secs" -m "$3" $every \
        --json-output "$dir/out.json" >/dev/null 2>&1 && cat "$dir/out.json")
    python3 - "$1" "$2" "$3" "$4" <<PY
import json, sys
bdev, wl, mask, ref = sys.argv[1:5]
r = json.loads('''$out''')["results"]
iops = sum(j["iops"] for j in r); mib = sum(j["mibps"] for j in r)
avg = sum(j["avg_us"] * j["iops"] for j in r) / max(iops, 1); p99 = max(j["p99_us"] for j in r)
import os
key = f"/tmp/pcache-bench-{wl}-{ref}"
ratio = ""
if ref != "-" and os.path.exists(key):
    ratio = f"{iops / float(open(key).read()):.2f}× {ref}"
if ref == "-" or not os.path.exists(key):
    open(f"/tmp/pcache-bench-{wl}-{bdev}-{mask}", "w").write(str(iops))
cores = bin(int(mask, 16)).count("1")
print(f"| {bdev} | {wl} | {cores} | {iops/1e6:.2f}M | {mib:.0f} | {avg:.2f} | {p99:.2f} | {ratio} |")
PY
}
for wl in randread randwrite; do
    run Malloc0 "$wl" 0x1 -
    run Null0 "$wl" 0x1 -
    run Pass0 "$wl" 0x1 "Malloc0-0x1"
    run Uring0 "$wl" 0x1 -
    run Malloc0 "$wl" 0x3 "Malloc0-0x1"
done
rm -f /tmp/pcache-bench-*
