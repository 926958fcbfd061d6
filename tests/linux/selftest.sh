#!/usr/bin/env bash
# tests/linux/selftest.sh [log-file] — proves the Linux-initiator harness works
# without pcache: runs setup.sh (seconds when cached), serves a token over
# HTTP on the host's 127.0.0.1, picks a closed port, then boots the guest
# with guest/selftest.sh (nvme-tcp loaded, tools run, host reachable,
# connection refused on the closed port, fio crc32c verify, and an end-to-end
# connect to the kernel's own nvmet-tcp inside the guest). Exit code: the
# guest's.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

bash "$HERE/setup.sh"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
WWW=$(mktemp -d /tmp/pcache-selftest.XXXXXX)
HTTP_PID=
cleanup() {
    [ -z "$HTTP_PID" ] || kill "$HTTP_PID" 2>/dev/null || true
    rm -rf "$WWW"
}
trap cleanup EXIT

TOKEN=pcache-$RANDOM-$RANDOM
echo "$TOKEN" >"$WWW/token"
HTTP_PORT=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$WWW" "$HTTP_PORT" >"$WWW.http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 50); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $HTTP_PORT), 1)" 2>/dev/null && break
    sleep 0.1
done
CLOSED_PORT=$(free_port)   # bound and released: nothing listens there

export PCACHE_T_HTTP_PORT=$HTTP_PORT PCACHE_T_CLOSED_PORT=$CLOSED_PORT PCACHE_T_TOKEN=$TOKEN
rc=0
bash "$HERE/run-guest.sh" "$HERE/guest/selftest.sh" "$@" || rc=$?
echo "selftest: host HTTP server log:"; sed 's/^/  /' "$WWW.http.log"; rm -f "$WWW.http.log"
exit "$rc"
