#!/bin/bash
# tests/linux/guest/selftest.sh — guest side of tests/linux/selftest.sh (bash in
# the guest): proves the harness works without pcache. Checks that nvme-tcp is
# loaded, that nvme-cli, fio and blkdiscard run, that the guest reaches the
# host's loopback (an HTTP server there, PCACHE_T_HTTP_PORT) and gets
# "connection refused" from a closed host port (PCACHE_T_CLOSED_PORT), that
# fio's crc32c verify passes on tmpfs, and, end to end, that the kernel's
# initiator connects to the kernel's own nvmet-tcp target inside the guest
# and fio/blkdiscard work on the resulting /dev/nvmeXnY.
fails=0 passes=0
step() { echo "== $*"; }
ok() { echo "ok: $*"; passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

step "nvme-tcp module"
lsmod | grep -E '^(nvme_tcp|nvme_fabrics)'
if [ -d /sys/module/nvme_tcp ]; then ok "/sys/module/nvme_tcp present"; else bad "nvme_tcp not loaded"; fi
[ -c /dev/nvme-fabrics ] && ok "/dev/nvme-fabrics present" || bad "/dev/nvme-fabrics missing"

step "tools"
nvme version || bad "nvme version"
fio --version || bad "fio --version"
blkdiscard --version || bad "blkdiscard --version"
echo "hostnqn: $(cat /etc/nvme/hostnqn)"

step "network to the host (10.0.2.2 = host 127.0.0.1)"
ip -4 addr show dev eth0 | grep inet
got=$(timeout 10 wget -q -O - "http://10.0.2.2:${PCACHE_T_HTTP_PORT}/token" 2>&1)
if [ "$got" = "$PCACHE_T_TOKEN" ]; then
    ok "wget from the host's 127.0.0.1:${PCACHE_T_HTTP_PORT} returned the token"
else
    bad "wget got '$got', expected '$PCACHE_T_TOKEN'"
fi
if echo | nc -w 5 10.0.2.2 "$PCACHE_T_HTTP_PORT" >/dev/null 2>&1; then
    ok "nc connects to 10.0.2.2:${PCACHE_T_HTTP_PORT}"
else
    bad "nc cannot connect to 10.0.2.2:${PCACHE_T_HTTP_PORT}"
fi

step "nvme discover against a closed host port ${PCACHE_T_CLOSED_PORT}"
dmesg -c >/dev/null
out=$(nvme discover -t tcp -a 10.0.2.2 -s "$PCACHE_T_CLOSED_PORT" 2>&1); rc=$?
echo "$out"; echo "nvme discover rc=$rc"
dmesg | grep -i nvme
if [ $rc -ne 0 ] && dmesg | grep -q -- '-111'; then
    ok "connection refused (-111): the initiator reached the host"
elif [ $rc -ne 0 ]; then
    bad "nvme discover failed, but not with connection refused"
else
    bad "nvme discover succeeded against a closed port?"
fi

step "fio crc32c verify on tmpfs"
if fio --name=v --filename=/tmp/f --size=16M --rw=randwrite --bs=4k --verify=crc32c --direct=0 \
        --output-format=terse --terse-version=3 >/tmp/fio.out 2>&1; then
    ok "fio verify passed ($(cut -d';' -f1-6 /tmp/fio.out | head -n1))"
else
    cat /tmp/fio.out; bad "fio verify on tmpfs"
fi
rm -f /tmp/f

step "end to end: kernel initiator -> kernel nvmet-tcp on 127.0.0.1:4420 in the guest"
if [ -d /sys/kernel/config/nvmet ]; then
    nqn=nqn.2024-01.io.pcache:selftest
    truncate -s 64M /tmp/ns.img
    S=/sys/kernel/config/nvmet/subsystems/$nqn
    mkdir "$S" && echo 1 >"$S/attr_allow_any_host"
    mkdir "$S/namespaces/1"
    echo /tmp/ns.img >"$S/namespaces/1/device_path"
    echo 1 >"$S/namespaces/1/buffered_io" 2>/dev/null
    echo 1 >"$S/namespaces/1/enable"
    P=/sys/kernel/config/nvmet/ports/1
    mkdir "$P"
    echo tcp >"$P/addr_trtype"; echo ipv4 >"$P/addr_adrfam"
    echo 127.0.0.1 >"$P/addr_traddr"; echo 4420 >"$P/addr_trsvcid"
    ln -s "$S" "$P/subsystems/$nqn"
    nvme discover -t tcp -a 127.0.0.1 -s 4420 || bad "discover against nvmet-tcp"
    if nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn"; then
        dev=
        i=0
        while [ $i -lt 50 ]; do
            # With native multipath the disk is /sys/block/nvmeXnY, whose
            # device is the nvme-subsystem (it has subsysnqn).
            for b in /sys/block/nvme*n*; do
                [ -e "$b" ] && [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$nqn" ] && dev=/dev/${b##*/}
            done
            [ -n "$dev" ] && [ -b "$dev" ] && break
            sleep 0.1; i=$((i + 1))
        done
        nvme list
        if [ -n "$dev" ] && [ -b "$dev" ]; then
            ok "connected: $dev ($(cat /sys/block/${dev##*/}/size) sectors)"
            if fio --name=e2e --filename="$dev" --size=16M --rw=randwrite --bs=4k --iodepth=8 \
                    --ioengine=libaio --direct=1 --verify=crc32c --output-format=terse --terse-version=3 \
                    >/tmp/fio2.out 2>&1; then
                ok "fio libaio direct crc32c verify on $dev"
            else
                cat /tmp/fio2.out; bad "fio on $dev"
            fi
            blkdiscard "$dev" && ok "blkdiscard $dev" || bad "blkdiscard $dev"
        else
            bad "no namespace block device after connect"
        fi
        nvme disconnect -n "$nqn" || bad "disconnect"
    else
        bad "nvme connect to nvmet-tcp"
    fi
    dmesg | grep -i nvme | tail -n 8
else
    echo "skipped: nvmet not loaded"
fi

step "result"
echo "selftest: $passes passed, $fails failed"
[ $fails -eq 0 ]
