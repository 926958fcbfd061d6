#!/usr/bin/env bash
# tests/linux/run-guest.sh <test-script> [log-file] — boots the pcache test
# guest (QEMU, TCG, the kernel and initramfs made by setup.sh) running
# <test-script> as /test.sh (its #! line picks /bin/sh = busybox, or
# /bin/bash), streams the serial console, and exits with the script's exit
# code, read from the guest's "PCACHE-GUEST-EXIT <rc>" line. The host's
# 127.0.0.1 is 10.0.2.2 in the guest (the guest has no default route).
#
# Environment:
#   PCACHE_GUEST_CACHE    cache made by setup.sh (default /var/cache/pcache-guest)
#   PCACHE_GUEST_TIMEOUT  seconds before QEMU is killed and the run fails (600)
#   PCACHE_GUEST_QUIET=1  do not stream the console (the log file has it)
#   PCACHE_GUEST_OVERLAY  a directory whose contents are added to the guest's /
#   PCACHE_GUEST_APPEND   extra kernel command line arguments
#   PCACHE_GUEST_MEM / PCACHE_GUEST_SMP  guest memory (MiB, 1024) and cpus (2)
#   PCACHE_T_*            exported with the same names inside the guest
# The console log goes to [log-file] (default /tmp/pcache-guest-<script>.log).
# Exit codes: the guest script's; 124 on timeout; 125 when the guest ended
# without the marker (panic, crash); 2 on bad usage or missing setup.
set -euo pipefail

usage() { echo "usage: $0 <test-script> [log-file]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
SCRIPT=$1
[ -f "$SCRIPT" ] || { echo "run-guest: no such script: $SCRIPT" >&2; exit 2; }
CACHE=${PCACHE_GUEST_CACHE:-/var/cache/pcache-guest}
TIMEOUT=${PCACHE_GUEST_TIMEOUT:-600}
for f in "$CACHE/vmlinuz" "$CACHE/initramfs.cpio.gz"; do
    [ -f "$f" ] || { echo "run-guest: $f missing: run tests/linux/setup.sh first" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "run-guest: qemu-system-x86_64 missing: run tests/linux/setup.sh" >&2; exit 2; }

WORK=$(mktemp -d /tmp/pcache-guest.XXXXXX)
LOG=${2:-${TMPDIR:-/tmp}/pcache-guest-$(basename "$SCRIPT" .sh).log}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
QPID='' TPID=''
cleanup() {
    [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
    [ -z "$TPID" ] || kill "$TPID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The per-run archive: /test.sh, /test.env and the overlay, appended to the
# base initramfs (the kernel unpacks concatenated archives in order).
mkdir -p "$WORK/run"
if [ -n "${PCACHE_GUEST_OVERLAY:-}" ]; then
    cp -a "$PCACHE_GUEST_OVERLAY"/. "$WORK/run/"
fi
install -m 0755 "$SCRIPT" "$WORK/run/test.sh"
: >"$WORK/run/test.env"
while IFS= read -r name; do
    val=${!name}
    printf "export %s='%s'\n" "$name" "${val//\'/\'\\\'\'}" >>"$WORK/run/test.env"
done < <(compgen -e | grep '^PCACHE_T_' || true)
(cd "$WORK/run" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$WORK/run.cpio.gz"
cat "$CACHE/initramfs.cpio.gz" "$WORK/run.cpio.gz" >"$WORK/initrd"

start=$(date +%s.%N)
echo "run-guest: booting $(basename "$SCRIPT") (timeout ${TIMEOUT}s, log $LOG)" >&2
qemu-system-x86_64 \
    -accel tcg -cpu max -m "${PCACHE_GUEST_MEM:-1024}" -smp "${PCACHE_GUEST_SMP:-2}" \
    -nographic -no-reboot -vga none \
    -kernel "$CACHE/vmlinuz" -initrd "$WORK/initrd" \
    -append "console=ttyS0 quiet panic=-1 ${PCACHE_GUEST_APPEND:-}" \
    -netdev user,id=n0,ipv6=off -device virtio-net-pci,netdev=n0,romfile= \
    </dev/null >>"$LOG" 2>&1 &
QPID=$!
if [ "${PCACHE_GUEST_QUIET:-0}" != 1 ]; then
    tail -n +1 -f --pid="$QPID" "$LOG" | tr -d '\r' &
    TPID=$!
fi

marker_rc() { tr -d '\r' <"$LOG" | sed -n 's/^.*PCACHE-GUEST-EXIT \([0-9][0-9]*\).*$/\1/p' | tail -n1; }
deadline=$(( $(date +%s) + TIMEOUT ))
seen=
while kill -0 "$QPID" 2>/dev/null; do
    now=$(date +%s)
    if [ "$now" -ge "$deadline" ]; then
        echo "run-guest: TIMEOUT after ${TIMEOUT}s: killing QEMU (log $LOG)" >&2
        kill "$QPID" 2>/dev/null || true; sleep 1; kill -9 "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
        QPID=
        exit 124
    fi
    # The guest powers off after the marker; give it 30 s to do so.
    if [ -z "$seen" ] && [ -n "$(marker_rc)" ]; then seen=$now; fi
    if [ -n "$seen" ] && [ $((now - seen)) -ge 30 ]; then
        echo "run-guest: guest printed its marker but did not power off; killing QEMU" >&2
        kill "$QPID" 2>/dev/null || true
        break
    fi
    sleep 0.5
done
wait "$QPID" 2>/dev/null || true
QPID=
[ -z "$TPID" ] || wait "$TPID" 2>/dev/null || true
TPID=
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
rc=$(marker_rc)
if [ -z "$rc" ]; then
    echo "run-guest: FAILED: the guest ended without PCACHE-GUEST-EXIT (panic or crash; log $LOG)" >&2
    tail -n 30 "$LOG" | tr -d '\r' >&2
    exit 125
fi
echo "run-guest: guest script exited $rc after ${elapsed}s" >&2
exit "$rc"
