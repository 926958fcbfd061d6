#!/usr/bin/env bash
# NVMe/TCP benchmarks, all in one session so ratios compare like with like: bdevperf on core 1
# drives our initiator (bdev_nvme_attach_controller) against pcache_tgt on core 0 over loopback,
# for a malloc namespace and a pcache namespace with every block cached; the baseline is bdevperf
# directly on the same kind of bdev on core 0. 4 KiB randread and randwrite at qd 32, 128 KiB
# sequential read at qd 32. Prints markdown rows for docs/performance.md. Not part of the test
# suite. Usage: scripts/bench-nvmf.sh [seconds per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -p app -p tools >/dev/null 2>&1
dir=$(mktemp -d /var/tmp/pcache-bench-nvmf.XXXXXX)
shm=$(mktemp -d /dev/shm/pcache-bench-nvmf.XXXXXX)
tgt_pid=""
cleanup() {
    [ -n "$tgt_pid" ] && kill "$tgt_pid" 2>/dev/null && wait "$tgt_pid" 2>/dev/null || true
    rm -rf "$dir" "$shm"
}
trap cleanup EXIT
perf=./target/release/bdevperf
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The bdevs: a 1 GiB malloc, and a pcache (2 GiB emulated pmem) over a 1 GiB malloc origin.
bdevs() {
    cat <<JSON
 {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"Origin0","num_blocks":262144,"block_size":4096,"uuid":"5eed0000-0000-4000-8000-000000000002"}},
 {"method":"bdev_pmem_create","params":{"name":"Pmem0","pmem_file":"$1","block_size":4096,"num_blocks":524288}},
 {"method":"bdev_pcache_create","params":{"name":"Pcache0","cache_bdev":"Pmem0","origin_bdev":"Origin0","format":true}}
JSON
}
cat > "$dir/direct.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
$(bdevs "$shm/direct.pmem")
]}]}
JSON
cat > "$dir/target.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
$(bdevs "$shm/target.pmem")
]},{"subsystem":"nvmf","config":[
 {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"nqn.2026-12.io.pcache:malloc","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"nqn.2026-12.io.pcache:malloc","namespace":{"bdev_name":"Malloc0"}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"nqn.2026-12.io.pcache:malloc","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$port"}}},
 {"method":"nvmf_create_subsystem","params":{"nqn":"nqn.2026-12.io.pcache:pcache","allow_any_host":true}},
 {"method":"nvmf_subsystem_add_ns","params":{"nqn":"nqn.2026-12.io.pcache:pcache","namespace":{"bdev_name":"Pcache0"}}},
 {"method":"nvmf_subsystem_add_listener","params":{"nqn":"nqn.2026-12.io.pcache:pcache","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$port"}}}
]}]}
JSON
# One controller per client config: an idle second qpair would cost every poll a read.
for sub in malloc pcache; do
    n=0; [ $sub = pcache ] && n=1
    cat > "$dir/client-$sub.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme$n","trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"$port","subnqn":"nqn.2026-12.io.pcache:$sub"}}
]}]}
JSON
done

# run CONFIG BDEV WORKLOAD SIZE MASK LABEL [REF-LABEL]: one bdevperf run; prints a table row.
declare -A iops_of
run() {
    local cfg=$1 bdev=$2 wl=$3 size=$4 mask=$5 label=$6 ref=${7:-}
    $perf -c "$dir/$cfg.json" -T "$bdev" -q 32 -o "$size" -w "$wl" -t "$secs" -m "$mask" \
        --json-output "$dir/out.json" > "$dir/$label.log" 2>&1 || {
        echo "bdevperf failed for $label:" >&2
        cat "$dir/$label.log" >&2
        exit 1
    }
    local row
    row=$(python3 - "$dir/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
iops = sum(j["iops"] for j in r)
mibs = sum(j["mibps"] for j in r)
avg = sum(j["avg_us"] * j["iops"] for j in r) / max(iops, 1)
p99 = max(j["p99_us"] for j in r)
failed = sum(j.get("io_failed", 0) for j in r)
print(f"{iops:.0f} {mibs:.0f} {avg:.1f} {p99:.1f} {failed}")
PY
)
    read -r iops mibs avg p99 failed <<< "$row"
    iops_of[$label]=$iops
    local ratio=""
    if [ -n "$ref" ]; then
        ratio=$(python3 -c "print(f'{$iops / ${iops_of[$ref]}:.2f}× $ref')")
    fi
    printf '| %s | %s | %s %s | %.3fM | %s | %s | %s | %s | %s |\n' "$label" "$bdev" "$wl" "$size" \
        "$(python3 -c "print($iops / 1e6)")" "$mibs" "$avg" "$p99" "$failed" "$ratio"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "bdevperf -q 32 -t $secs; direct runs on core 0 (-m 0x1); NVMe/TCP: pcache_tgt -m 0x1, bdevperf -m 0x2 over loopback"
echo
echo "| run | bdev | workload | IOPS | MiB/s | avg µs | p99 µs | failed | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
run direct Malloc0 randread 4096 0x1 direct-malloc-rr
run direct Malloc0 randwrite 4096 0x1 direct-malloc-rw
run direct Malloc0 read 131072 0x1 direct-malloc-seq
# Every block of the pcache written once (all cached, dirty), then measured.
$perf -c "$dir/direct.json" -T Pcache0 -q 32 -o 131072 -w write --pattern 1 -t 600 -m 0x1 > "$dir/warm-direct.log" 2>&1
sed -i 's/,"format":true//' "$dir/direct.json"
run direct Pcache0 randread 4096 0x1 direct-pcache-rr
run direct Pcache0 randwrite 4096 0x1 direct-pcache-rw
run direct Pcache0 read 131072 0x1 direct-pcache-seq

./target/release/pcache_tgt -m 0x1 -r "$dir/tgt.sock" -c "$dir/target.json" > "$dir/tgt.log" 2>&1 &
tgt_pid=$!
for _ in $(seq 1 200); do grep -q "pcache_tgt ready" "$dir/tgt.log" && break; sleep 0.05; done
grep -q "pcache_tgt ready" "$dir/tgt.log" || { cat "$dir/tgt.log" >&2; exit 1; }
$perf -c "$dir/client-pcache.json" -T Nvme1n1 -q 32 -o 131072 -w write --pattern 1 -t 600 -m 0x2 > "$dir/warm-nvmf.log" 2>&1
run client-malloc Nvme0n1 randread 4096 0x2 nvmf-malloc-rr direct-malloc-rr
run client-malloc Nvme0n1 randwrite 4096 0x2 nvmf-malloc-rw direct-malloc-rw
run client-malloc Nvme0n1 read 131072 0x2 nvmf-malloc-seq direct-malloc-seq
run client-pcache Nvme1n1 randread 4096 0x2 nvmf-pcache-rr direct-pcache-rr
run client-pcache Nvme1n1 randwrite 4096 0x2 nvmf-pcache-rw direct-pcache-rw
run client-pcache Nvme1n1 read 131072 0x2 nvmf-pcache-seq direct-pcache-seq
