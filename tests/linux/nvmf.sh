#!/usr/bin/env bash
# tests/linux/nvmf.sh [guest-log] — the Linux kernel's own NVMe/TCP initiator
# against pcache_tgt. Runs setup.sh (seconds when cached), builds pcache_tgt
# (cargo build --release -p app), writes a config into a temp dir — a pcache
# bdev (64 MiB emulated pmem cache over a 64 MiB uring file origin) exported
# as a subsystem only this guest's host NQN may use (nvmf_subsystem_add_host),
# a 16 MiB malloc bdev with 512-byte blocks in a second subsystem open to any
# host, both listening with the discovery subsystem on 127.0.0.1:<free port>
# — starts the target, boots the QEMU guest with guest/nvmf.sh (see there for
# what it checks), then checks that the target still serves RPC
# (nvmf_get_subsystems) with no controller left, stops it with SIGTERM and
# requires exit 0 and "pcache stopped cleanly". On failure prints the tails
# of the guest's and the target's logs and keeps the temp dir. Exit code:
# 0 when everything passed.
#
# Environment:
#   PCACHE_NVMF_REFERENCE=1  no pcache_tgt: the guest builds the same two
#                            subsystems in its own kernel nvmet-tcp and tests
#                            those (to tell a script bug from a target bug)
#   PCACHE_NVMF_NO_BUILD=1   use target/release/pcache_tgt as it is
#   PCACHE_NVMF_KEEP=1       keep the temp dir (config, logs) even on success
#   PCACHE_NVMF_LOGFLAGS     extra pcache_tgt -L flags, space separated
#   PCACHE_GUEST_TIMEOUT     guest time limit (240 s here)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REFERENCE=${PCACHE_NVMF_REFERENCE:-0}
T0=$(date +%s.%N)
say() { echo "nvmf: $*" >&2; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

bash "$HERE/setup.sh"
TGT=$ROOT/target/release/pcache_tgt
if [ "$REFERENCE" != 1 ] && [ "${PCACHE_NVMF_NO_BUILD:-0}" != 1 ]; then
    say "cargo build --release -p app"
    (cd "$ROOT" && cargo build --release -q -p app)
fi
[ "$REFERENCE" = 1 ] || [ -x "$TGT" ] || { say "no $TGT"; exit 2; }

TMP=$(mktemp -d /tmp/pcache-nvmf.XXXXXX)
GLOG=${1:-$TMP/guest.log}
TLOG=$TMP/tgt.log
SOCK=$TMP/rpc.sock
CFG=$TMP/config.json
TPID=''
RESULT=1
cleanup() {
    if [ -n "$TPID" ] && kill -0 "$TPID" 2>/dev/null; then
        kill -TERM "$TPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TPID" 2>/dev/null || true
    fi
    if [ "$RESULT" = 0 ] && [ "${PCACHE_NVMF_KEEP:-0}" != 1 ]; then
        rm -rf "$TMP"
    else
        say "kept $TMP (config.json, tgt.log, guest.log)"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failed() {
    say "FAILED: $*"
    if [ -s "$GLOG" ]; then
        echo "---- guest log (last 60 lines of $GLOG)" >&2
        tr -d '\r' <"$GLOG" | tail -n 60 >&2
    fi
    if [ -s "$TLOG" ]; then
        echo "---- target log (last 60 lines of $TLOG, without backtrace frames)" >&2
        grep -v -E '^ +([0-9]+: | *at )' "$TLOG" | tail -n 60 >&2
    fi
    say "failed after $(elapsed) s"
    exit 1
}

# rpc METHOD [JSON-PARAMS]: one JSON-RPC call over the Unix socket; prints the result.
rpc() {
    python3 - "$SOCK" "$@" <<'EOF'
import json, socket, sys
sock, method = sys.argv[1], sys.argv[2]
req = {"jsonrpc": "2.0", "id": 1, "method": method}
if len(sys.argv) > 3:
    req["params"] = json.loads(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sock)
s.sendall(json.dumps(req).encode())
buf, dec = b"", json.JSONDecoder()
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("rpc: connection closed")
    buf += chunk
    try:
        resp, _ = dec.raw_decode(buf.decode())
        break
    except ValueError:
        continue
if "error" in resp:
    sys.exit("rpc %s: %s" % (method, resp["error"]))
print(json.dumps(resp["result"]))
EOF
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
new_uuid() { cat /proc/sys/kernel/random/uuid; }

PORT=$(free_port)
NQN_PC=nqn.2026-12.io.pcache:linux-pcache
NQN_MA=nqn.2026-12.io.pcache:linux-malloc
PC_SN=PCACHE0000000042 PC_MN="pcache over NVMe/TCP"
MA_SN=PCMALLOC00000007 MA_MN="pcache malloc"
HOSTID=$(new_uuid)
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$HOSTID
MiB=$((1 << 20))

export PCACHE_T_PORT=$PORT PCACHE_T_NQN_PCACHE=$NQN_PC PCACHE_T_NQN_MALLOC=$NQN_MA
export PCACHE_T_HOSTNQN=$HOSTNQN PCACHE_T_HOSTID=$HOSTID
export PCACHE_T_PCACHE_SN=$PC_SN PCACHE_T_PCACHE_MN=$PC_MN
export PCACHE_T_MALLOC_SN=$MA_SN PCACHE_T_MALLOC_MN=$MA_MN

if [ "$REFERENCE" = 1 ]; then
    # The kernel's nvmet in the guest: file namespaces on tmpfs (4 KiB blocks), no MDTS.
    export PCACHE_T_LOCAL=1 PCACHE_T_PCACHE_BYTES=$((64 * MiB)) PCACHE_T_MALLOC_BYTES=$((16 * MiB))
    export PCACHE_T_PCACHE_BS=4096 PCACHE_T_MALLOC_BS=4096
else
    truncate -s $((64 * MiB)) "$TMP/origin.img"
    cat >"$CFG" <<EOF
{
  "subsystems": [
    {
      "subsystem": "bdev",
      "config": [
        { "method": "bdev_pmem_create",
          "params": { "name": "Pmem0", "pmem_file": "$TMP/cache.pmem", "block_size": 4096, "num_blocks": 16384, "mode": "emulated" } },
        { "method": "bdev_uring_create",
          "params": { "name": "Origin0", "filename": "$TMP/origin.img", "block_size": 4096, "uuid": "$(new_uuid)" } },
        { "method": "bdev_pcache_create",
          "params": { "name": "Pcache0", "cache_bdev": "Pmem0", "origin_bdev": "Origin0", "mode": "writeback", "data_crc": true } },
        { "method": "bdev_malloc_create",
          "params": { "name": "Malloc0", "num_blocks": 32768, "block_size": 512 } }
      ]
    },
    {
      "subsystem": "nvmf",
      "config": [
        { "method": "nvmf_create_transport", "params": { "trtype": "TCP" } },
        { "method": "nvmf_create_subsystem",
          "params": { "nqn": "$NQN_PC", "allow_any_host": false, "serial_number": "$PC_SN", "model_number": "$PC_MN" } },
        { "method": "nvmf_subsystem_add_host", "params": { "nqn": "$NQN_PC", "host": "$HOSTNQN" } },
        { "method": "nvmf_subsystem_add_ns", "params": { "nqn": "$NQN_PC", "namespace": { "bdev_name": "Pcache0" } } },
        { "method": "nvmf_subsystem_add_listener",
          "params": { "nqn": "$NQN_PC", "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$PORT" } } },
        { "method": "nvmf_create_subsystem",
          "params": { "nqn": "$NQN_MA", "allow_any_host": true, "serial_number": "$MA_SN", "model_number": "$MA_MN" } },
        { "method": "nvmf_subsystem_add_ns", "params": { "nqn": "$NQN_MA", "namespace": { "bdev_name": "Malloc0" } } },
        { "method": "nvmf_subsystem_add_listener",
          "params": { "nqn": "$NQN_MA", "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$PORT" } } },
        { "method": "nvmf_subsystem_add_listener",
          "params": { "nqn": "discovery", "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$PORT" } } }
      ]
    }
  ]
}
EOF
    LOGFLAGS=()
    for f in ${PCACHE_NVMF_LOGFLAGS:-}; do LOGFLAGS+=(-L "$f"); done
    say "starting pcache_tgt on 127.0.0.1:$PORT (log $TLOG)"
    "$TGT" -m 0x1 --idle-backoff -r "$SOCK" -c "$CFG" "${LOGFLAGS[@]}" >"$TLOG" 2>&1 &
    TPID=$!
    for _ in $(seq 300); do
        grep -q "pcache_tgt ready" "$TLOG" 2>/dev/null && break
        kill -0 "$TPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$TPID" 2>/dev/null || { wait "$TPID" || true; TPID=''; failed "pcache_tgt exited during start"; }
    grep -q "pcache_tgt ready" "$TLOG" || failed "pcache_tgt not ready after 30 s"
    # The namespaces' sizes and block sizes as the target has them.
    bdev_geometry() {  # NAME -> "bytes block_size"
        rpc bdev_get_bdevs "{\"name\": \"$1\"}" | python3 -c \
            'import json, sys; b = json.load(sys.stdin)[0]; print(b["num_blocks"] * b["block_size"], b["block_size"])'
    }
    read -r PCACHE_T_PCACHE_BYTES PCACHE_T_PCACHE_BS < <(bdev_geometry Pcache0) || failed "bdev_get_bdevs Pcache0"
    read -r PCACHE_T_MALLOC_BYTES PCACHE_T_MALLOC_BS < <(bdev_geometry Malloc0) || failed "bdev_get_bdevs Malloc0"
    export PCACHE_T_PCACHE_BYTES PCACHE_T_PCACHE_BS PCACHE_T_MALLOC_BYTES PCACHE_T_MALLOC_BS
    # MDTS as the transport's max_io_size gives it (in 4 KiB pages, log2).
    PCACHE_T_MDTS=$(rpc nvmf_get_transports | python3 -c \
        'import json, sys; t = json.load(sys.stdin)[0]; print((t["max_io_size"] // 4096).bit_length() - 1)') \
        || failed "nvmf_get_transports"
    export PCACHE_T_MDTS
    say "Pcache0 $PCACHE_T_PCACHE_BYTES bytes (block $PCACHE_T_PCACHE_BS), Malloc0 $PCACHE_T_MALLOC_BYTES bytes (block $PCACHE_T_MALLOC_BS), MDTS $PCACHE_T_MDTS"
fi

say "guest: guest/nvmf.sh (log $GLOG)"
rc=0
PCACHE_GUEST_TIMEOUT=${PCACHE_GUEST_TIMEOUT:-240} bash "$HERE/run-guest.sh" "$HERE/guest/nvmf.sh" "$GLOG" || rc=$?
if [ "$REFERENCE" = 1 ]; then
    [ "$rc" = 0 ] || failed "guest exited $rc (reference mode)"
    RESULT=0
    say "passed against the kernel's nvmet-tcp (reference mode) in $(elapsed) s"
    exit 0
fi

# The target after the guest: alive, serving, no controller left.
problems=()
[ "$rc" = 0 ] || problems+=("guest exited $rc")
if ! kill -0 "$TPID" 2>/dev/null; then
    wait "$TPID" && st=0 || st=$?
    TPID=''
    failed "pcache_tgt died during the guest's run (exit $st)${problems:+; ${problems[*]}}"
fi
if [ -x "$ROOT/.venv/bin/spdk-rpc" ]; then
    subs=$("$ROOT/.venv/bin/spdk-rpc" -s "$SOCK" nvmf_get_subsystems 2>&1) || problems+=("spdk-rpc nvmf_get_subsystems failed: $subs")
else
    subs=$(rpc nvmf_get_subsystems 2>&1) || problems+=("nvmf_get_subsystems failed: $subs")
fi
for nqn in "$NQN_PC" "$NQN_MA"; do
    grep -q "\"$nqn\"" <<<"$subs" || problems+=("nvmf_get_subsystems lacks $nqn")
done
for nqn in "$NQN_PC" "$NQN_MA"; do
    left=''
    for _ in $(seq 50); do
        left=$(rpc nvmf_subsystem_get_controllers "{\"nqn\": \"$nqn\"}" 2>&1) || break
        [ "$left" = "[]" ] && break
        sleep 0.1
    done
    [ "$left" = "[]" ] || problems+=("$nqn still has controllers after the guest disconnected: $left")
done
[ ${#problems[@]} = 0 ] && say "after the guest: the target serves nvmf_get_subsystems, no controller left"

say "stopping pcache_tgt (SIGTERM)"
kill -TERM "$TPID"
st=''
for _ in $(seq 300); do
    if ! kill -0 "$TPID" 2>/dev/null; then wait "$TPID" && st=0 || st=$?; break; fi
    sleep 0.1
done
if [ -z "$st" ]; then
    problems+=("pcache_tgt still running 30 s after SIGTERM")
    kill -KILL "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
fi
TPID=''
[ -z "$st" ] || [ "$st" = 0 ] || problems+=("pcache_tgt exited $st after SIGTERM")
grep -q "pcache stopped cleanly" "$TLOG" || problems+=("no \"pcache stopped cleanly\" in the target log")
if grep -qE ' (ERROR|WARN) ' "$TLOG"; then
    say "target warnings and errors:"
    grep -E ' (ERROR|WARN) ' "$TLOG" | tail -n 20 | sed 's/^/    /' >&2
fi
[ ${#problems[@]} = 0 ] || failed "$(printf '%s; ' "${problems[@]}")"
RESULT=0
say "passed in $(elapsed) s"
