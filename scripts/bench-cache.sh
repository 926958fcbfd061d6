#!/usr/bin/env bash
# pcache benchmarks with bdevperf, all in one session so ratios compare like with like: cached
# randread against malloc, randwrite bursting into a large cache and sustained once writeback and
# GC run against the origin's own rate, two reactors against one, replay rate, DRAM per cached
# block. Prints markdown for docs/performance.md. Not part of the test suite (it takes minutes).
#
# The emulated pmem file lives on a tmpfs mounted with huge=always when run as root (as fsdax pmem
# is mapped with 2 MiB pages; with 4 KiB pages every cached read also misses the TLB), else in
# /dev/shm. Usage: scripts/bench-cache.sh [seconds per run, default 5] [pmem GiB, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
pmem_gib=${2:-8}
cargo build --release >/dev/null 2>&1
dir=$(mktemp -d /var/tmp/pcache-bench-cache.XXXXXX)
pmem_dir=$dir/pmem
mkdir -p "$pmem_dir"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o "size=$((pmem_gib + 1))G,huge=always" tmpfs "$pmem_dir" 2>/dev/null; then
    pages="tmpfs huge=always (2 MiB pages)"
else
    pmem_dir=$(mktemp -d /dev/shm/pcache-bench.XXXXXX)
    pages="/dev/shm (4 KiB pages)"
fi
cleanup() {
    pkill -f "pcache_tgt -c $dir" 2>/dev/null || true
    if mountpoint -q "$dir/pmem"; then umount "$dir/pmem"; fi
    rm -rf "$dir"
    case $pmem_dir in /dev/shm/*) rm -rf "$pmem_dir" ;; esac
}
trap cleanup EXIT
perf=./target/release/bdevperf
blocks=$((pmem_gib * 262144))

# config NAME DATA_CRC FORMAT [DURABLE]: 1 GiB malloc baseline, 1 GiB malloc origin, the pcache
# bdev.
config() {
    local fmt=""
    [ "$3" = true ] && fmt=',"format":true'
    [ "${4:-false}" = true ] && fmt="$fmt"',"durable":true'
    cat > "$dir/$1.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"Origin0","num_blocks":262144,"block_size":4096,"uuid":"5eed0000-0000-4000-8000-000000000001"}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","pmem_file":"$pmem_dir/cache.pmem","block_size":4096,"num_blocks":$blocks}},
 {"method":"bdev_pcache_create","params":{"name":"Pcache0","cache_bdev":"Pmem0","origin_bdev":"Origin0","data_crc":$2$fmt}}
]}]}
JSON
}

# run CONFIG BDEV WORKLOAD SECONDS MASK LABEL [REF-LABEL]: one bdevperf run; prints a table row.
declare -A iops_of
run() {
    local cfg=$1 bdev=$2 wl=$3 t=$4 mask=$5 label=$6 ref=${7:-}
    local every=""
    [ "$mask" = 0x1 ] || every="-C"
    $perf -c "$dir/$cfg.json" -T "$bdev" -q 32 -o 4096 -w "$wl" -t "$t" -m "$mask" $every \
        --json-output "$dir/out.json" > "$dir/$label.log" 2>&1
    local row
    row=$(python3 - "$dir/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
iops = sum(j["iops"] for j in r)
avg = sum(j["avg_us"] * j["iops"] for j in r) / max(iops, 1)
p99 = max(j["p99_us"] for j in r)
print(f"{iops:.0f} {avg:.2f} {p99:.2f}")
PY
)
    read -r iops avg p99 <<< "$row"
    iops_of[$label]=$iops
    local ratio=""
    if [ -n "$ref" ]; then
        ratio=$(python3 -c "print(f'{$iops / ${iops_of[$ref]}:.2f}× $ref')")
    fi
    local cores
    cores=$(python3 -c "print(bin($mask).count('1'))")
    printf '| %s | %s | %s | %s | %.2fM | %s | %s | %s |\n' "$label" "$bdev" "$wl" "$cores" \
        "$(python3 -c "print($iops / 1e6)")" "$avg" "$p99" "$ratio"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "pmem: ${pmem_gib} GiB emulated file on $pages; origin: 1 GiB malloc; baseline: 1 GiB malloc"
echo "command: bdevperf -c <config> -T <bdev> -q 32 -o 4096 -w <workload> -t <s> -m <mask> (-C with 2 cores)"
echo
echo "| run | bdev | workload | cores | IOPS | avg µs | p99 µs | ratio |"
echo "|---|---|---|---|---|---|---|---|"
config fresh_crc true true
config crc true false
config fresh_nocrc false true
config nocrc false false
config fresh_durable true true true
rm -f "$pmem_dir/cache.pmem"

run crc Malloc0 randread "$secs" 0x1 malloc-randread
run crc Malloc0 randwrite "$secs" 0x1 malloc-randwrite
# Every origin block cached (4 KiB keys), then read at random from a new process (after replay).
run fresh_nocrc Pcache0 write 2 0x1 fill-nocrc
run nocrc Pcache0 randread "$secs" 0x1 cached-randread-nocrc malloc-randread
run fresh_crc Pcache0 write 2 0x1 fill-crc
run crc Pcache0 randread "$secs" 0x1 cached-randread-crc malloc-randread
run crc Pcache0 randread "$secs" 0x3 cached-randread-crc-2cores cached-randread-crc
replay=$(grep -o 'log replayed.*' "$dir/cached-randread-crc.log" | sed 's/\x1b\[[0-9;]*m//g' | head -1)
# A burst into the freshly formatted cache (it holds more than the run writes), then a new
# process keeps writing into the full cache: writeback to the origin and GC run all along.
run fresh_crc Pcache0 randwrite 1 0x1 burst-randwrite-crc malloc-randwrite
# Durable mode: every completed write already persistent (key-sets group-committed per poll).
run fresh_durable Pcache0 randwrite 1 0x1 burst-randwrite-crc-durable burst-randwrite-crc
run crc Pcache0 randwrite $((secs * 3)) 0x1 sustained-randwrite-crc malloc-randwrite
run crc Pcache0 randwrite $((secs * 3)) 0x3 sustained-randwrite-crc-2cores sustained-randwrite-crc
echo
echo "replay at the start of cached-randread-crc: $replay"

# DRAM per cached block: the index after replay, from bdev_pcache_get_stats.
sock=$dir/rpc.sock
./target/release/pcache_tgt -c "$dir/crc.json" -r "$sock" -m 0x1 > "$dir/tgt.log" 2>&1 &
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
python3 - "$sock" <<'PY'
import json, socket, sys, time
def call(method, params):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    buf = b""
    while True:
        buf += s.recv(65536)
        try:
            return json.loads(buf)["result"]
        except ValueError:
            continue
for _ in range(100):
    try:
        st = call("bdev_pcache_get_stats", {"name": "Pcache0"})
        break
    except (OSError, KeyError):
        time.sleep(0.1)
blocks = st["cached_bytes"] // 4096
print(f"index after replay: {st['index_entries']} entries, {st['index_memory_bytes']} bytes for "
      f"{blocks} cached blocks = {st['index_memory_bytes'] / max(blocks, 1):.1f} B per cached 4 KiB block")
call("spdk_kill_instance", {"sig_name": "SIGTERM"})
PY
wait
