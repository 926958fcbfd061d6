#!/bin/bash
# tests/linux/guest/nvmf.sh — guest side of tests/linux/nvmf.sh: the Linux
# kernel's own NVMe/TCP initiator (nvme-tcp, nvme-cli, fio, blkdiscard) against
# pcache_tgt on the host (10.0.2.2 here = the host's 127.0.0.1). Two subsystems:
# a pcache bdev whose subsystem admits only this guest's host NQN, and a malloc
# bdev open to any host. Discovery (and its per-host filtering), connect,
# sizes, Identify, O_DIRECT patterns (in-capsule 512 B/4 KiB writes, R2T'd
# 128 KiB/1 MiB writes), fio crc32c verify (4k randwrite over the whole
# device, 64k randrw, 1M writes split at MDTS), flush, discard and write
# zeroes reading back zeroes, an out-of-range read refused, a controller
# reset, list-subsys, a reconnect with header and data digests (the data
# survives it), disconnects, and the refusals: an unknown NQN, a host not
# allowed. Prints "ok: ..." / "FAIL: ..." per check; exits 1 if any failed.
#
# Environment (run-guest.sh exports the host's PCACHE_T_* variables):
#   PCACHE_T_PORT              the target's port (required)
#   PCACHE_T_ADDR              its address (10.0.2.2)
#   PCACHE_T_NQN_PCACHE / _MALLOC   the two subsystems (required)
#   PCACHE_T_PCACHE_BYTES / _MALLOC_BYTES   their namespace sizes (required)
#   PCACHE_T_PCACHE_BS / _MALLOC_BS         their block sizes (4096 / 512)
#   PCACHE_T_PCACHE_SN / _MN, PCACHE_T_MALLOC_SN / _MN  serial and model numbers
#   PCACHE_T_MDTS              the expected MDTS (unset: not checked)
#   PCACHE_T_HOSTNQN           this host's NQN (init.sh writes it to /etc/nvme)
#   PCACHE_T_LOCAL=1           reference mode: build the same two subsystems in
#                              the guest's own kernel nvmet-tcp (on 127.0.0.1)
#                              and test against that instead (tells script
#                              bugs from target bugs)
#   PCACHE_T_CMD_TIMEOUT       seconds per command (120)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
A=${PCACHE_T_ADDR:-10.0.2.2}
P=${PCACHE_T_PORT:?PCACHE_T_PORT not set}
NQN_PC=${PCACHE_T_NQN_PCACHE:?}
NQN_MA=${PCACHE_T_NQN_MALLOC:?}
PC_BYTES=${PCACHE_T_PCACHE_BYTES:?}
MA_BYTES=${PCACHE_T_MALLOC_BYTES:?}
PC_BS=${PCACHE_T_PCACHE_BS:-4096}
MA_BS=${PCACHE_T_MALLOC_BS:-512}
PC_SN=${PCACHE_T_PCACHE_SN:-}
PC_MN=${PCACHE_T_PCACHE_MN:-}
MA_SN=${PCACHE_T_MALLOC_SN:-}
MA_MN=${PCACHE_T_MALLOC_MN:-}
MDTS=${PCACHE_T_MDTS:-}
T=${PCACHE_T_CMD_TIMEOUT:-120}
HOSTNQN=$(cat /etc/nvme/hostnqn)
BAD_HOSTID=$(cat /proc/sys/kernel/random/uuid)
BAD_HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$BAD_HOSTID
UNKNOWN_NQN=nqn.2026-12.io.pcache:no-such-subsystem
MiB=$((1 << 20))
# A lost target fails I/O within seconds instead of queueing it for 10 min.
CONN_OPTS=(--ctrl-loss-tmo=15 --reconnect-delay=2)

fails=0 passes=0
FAILED=()
KLOG=/tmp/kernel.log
kmsg() { dmesg -c >>"$KLOG" 2>/dev/null; }
step() { kmsg; echo; echo "== [${SECONDS}s] $*"; }
ok() { echo "ok: $*"; passes=$((passes + 1)); }
bad() {
    echo "FAIL: $*"; fails=$((fails + 1)); FAILED+=("$*")
    dmesg -c 2>/dev/null | tee -a "$KLOG" | grep -i -E 'nvme|blk|I/O' | tail -n 15 | sed 's/^/    kernel: /'
}
# q CMD...: runs CMD under the timeout, its output in /tmp/out.
q() { timeout "$T" "$@" >/tmp/out 2>&1; }
show() { sed 's/^/    /' /tmp/out | head -n "${1:-30}"; }
field() { sed -n "s/^$1 *: //p" | head -n1 | sed 's/[[:space:]]*$//'; }  # "key : value" lines

# ---------------------------------------------------------------- helpers
# ctrl_of NQN: the live controllers (nvmeX) of the subsystem NQN.
ctrl_of() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat "$c/subsysnqn")" = "$1" ] || continue
        [ "$(cat "$c/state" 2>/dev/null)" = live ] && echo "${c##*/}"
    done
}
# ns_of NQN: the namespace block device (nvmeXnY, the multipath head when
# native multipath is on) of the subsystem NQN.
ns_of() {
    local b n
    for b in /sys/block/nvme*; do
        n=${b##*/}
        [[ $n =~ ^nvme[0-9]+n[0-9]+$ ]] || continue
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$1" ] && echo "$n"
    done
}
# wait_dev NQN: sets CTRL=/dev/nvmeX and DEV=/dev/nvmeXnY (5 s at most).
wait_dev() {
    local i c n
    CTRL='' DEV=''
    for i in $(seq 100); do
        c=$(ctrl_of "$1" | head -n1); n=$(ns_of "$1" | head -n1)
        if [ -n "$c" ] && [ -n "$n" ] && [ -b "/dev/$n" ] && [ "$(cat "/sys/block/$n/size")" != 0 ]; then
            CTRL=/dev/$c DEV=/dev/$n
            return 0
        fi
        sleep 0.1
    done
    return 1
}
# connect NQN LABEL [nvme connect options]: connects, sets CTRL and DEV.
connect() {
    local nqn=$1 label=$2; shift 2
    if q nvme connect -t tcp -a "$A" -s "$P" -n "$nqn" "${CONN_OPTS[@]}" "$@"; then
        if wait_dev "$nqn"; then
            ok "connect $label $*: $CTRL, $DEV"
            return 0
        fi
        show; bad "connect $label $*: no live controller and namespace after connect"
    else
        show; bad "connect $label $*: nvme connect failed"
    fi
    return 1
}
disconnect() {  # disconnect NQN LABEL
    local i
    if q nvme disconnect -n "$1"; then
        for i in $(seq 50); do
            [ -z "$(ctrl_of "$1")$(ns_of "$1")" ] && break
            sleep 0.1
        done
        if [ -z "$(ctrl_of "$1")$(ns_of "$1")" ]; then
            ok "disconnect $2: $(head -n1 /tmp/out)"
        else
            bad "disconnect $2: a controller or namespace is still there"
        fi
    else
        show; bad "disconnect $2"
    fi
}
# put FILE DEV OFFSET BS: writes FILE at byte OFFSET, BS bytes per O_DIRECT write.
put() { timeout "$T" dd if="$1" of="$2" bs="$4" seek=$(($3 / $4)) oflag=direct conv=notrunc 2>/tmp/dd.err \
    || { sed 's/^/    /' /tmp/dd.err; return 1; }; }
# get DEV OFFSET LEN BS OUT: reads LEN bytes at OFFSET, BS per O_DIRECT read.
get() { timeout "$T" dd if="$1" of="$5" bs="$4" skip=$(($2 / $4)) count=$(($3 / $4)) iflag=direct 2>/tmp/dd.err \
    || { sed 's/^/    /' /tmp/dd.err; return 1; }; }
# pattern FILE BYTES: random data.
pattern() { dd if=/dev/urandom of="$1" bs=64k count=$(($2 / 65536)) 2>/dev/null; }
# readback LABEL DEV OFFSET EXPECTED-FILE BS: reads back and compares.
readback() {
    local len
    len=$(stat -c %s "$4")
    if get "$2" "$3" "$len" "$5" /tmp/back && cmp -s "$4" /tmp/back; then
        ok "$1: read back $len bytes at $3 (bs $5, O_DIRECT), identical"
    else
        cmp "$4" /tmp/back 2>&1 | head -n 3 | sed 's/^/    /'
        bad "$1: read back $len bytes at $3 (bs $5) differs from what was written"
    fi
}
# fio_verify LABEL DEV fio-options...: a crc32c-verified fio job (libaio, O_DIRECT).
fio_verify() {
    local label=$1 dev=$2 summary; shift 2
    if timeout "$T" fio --name="$label" --filename="$dev" --direct=1 --ioengine=libaio \
            --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse --terse-version=3 \
            "$@" >/tmp/fio.out 2>&1; then
        summary=$(awk -F';' 'NF > 50 && $5 == 0 { printf "wrote %d KiB (%d IOPS), read %d KiB, verified", $47, $49, $6 }' /tmp/fio.out)
        if [ -n "$summary" ]; then ok "fio $label on $dev ($*): $summary"; return 0; fi
    fi
    grep -v '^3;' /tmp/fio.out | head -n 30 | sed 's/^/    /'
    bad "fio $label on $dev ($*)"
    return 1
}

# ---------------------------------------------------------------- reference target
setup_local_nvmet() {
    # The same two subsystems in the guest's kernel nvmet-tcp, on 127.0.0.1.
    local C=/sys/kernel/config/nvmet S
    [ -d $C ] || { echo "FATAL: nvmet not loaded"; exit 2; }
    A=127.0.0.1
    mk_subsys() {  # nqn file bytes allow_any serial model
        S=$C/subsystems/$1
        truncate -s "$3" "$2"
        mkdir "$S"
        echo "$4" >"$S/attr_allow_any_host"
        [ -z "$5" ] || echo "$5" >"$S/attr_serial"
        [ -z "$6" ] || echo "$6" >"$S/attr_model"
        mkdir "$S/namespaces/1"
        echo "$2" >"$S/namespaces/1/device_path"
        echo 1 >"$S/namespaces/1/buffered_io"
        echo 1 >"$S/namespaces/1/enable"
    }
    mk_subsys "$NQN_PC" /tmp/pcache.img "$PC_BYTES" 0 "$PC_SN" "$PC_MN"
    mkdir "$C/hosts/$HOSTNQN"
    ln -s "$C/hosts/$HOSTNQN" "$C/subsystems/$NQN_PC/allowed_hosts/$HOSTNQN"
    mk_subsys "$NQN_MA" /tmp/malloc.img "$MA_BYTES" 1 "$MA_SN" "$MA_MN"
    mkdir $C/ports/1
    echo tcp >$C/ports/1/addr_trtype; echo ipv4 >$C/ports/1/addr_adrfam
    echo "$A" >$C/ports/1/addr_traddr; echo "$P" >$C/ports/1/addr_trsvcid
    ln -s "$C/subsystems/$NQN_PC" "$C/ports/1/subsystems/$NQN_PC"
    ln -s "$C/subsystems/$NQN_MA" "$C/ports/1/subsystems/$NQN_MA"
    echo "reference mode: kernel nvmet-tcp on $A:$P"
}

# ================================================================ main
dmesg -c >"$KLOG" 2>/dev/null
echo "nvmf guest: target $A:$P, host NQN $HOSTNQN"
echo "  $NQN_PC: $PC_BYTES bytes, block $PC_BS, sn '$PC_SN', mn '$PC_MN' (allowed hosts only)"
echo "  $NQN_MA: $MA_BYTES bytes, block $MA_BS, sn '$MA_SN', mn '$MA_MN' (any host)"
[ "${PCACHE_T_LOCAL:-0}" = 1 ] && setup_local_nvmet
# Fail a lost command in 30 s, not 60 (applies to queues made after this).
echo 30 >/sys/module/nvme_core/parameters/admin_timeout 2>/dev/null
echo 30 >/sys/module/nvme_core/parameters/io_timeout 2>/dev/null

step "discovery (nvme discover -t tcp -a $A -s $P)"
if q nvme discover -t tcp -a "$A" -s "$P"; then
    show 60
    for nqn in "$NQN_PC" "$NQN_MA"; do
        if grep -q "^subnqn: *$nqn\$" /tmp/out; then ok "discovery log lists $nqn"; else bad "discovery log does not list $nqn"; fi
    done
    if grep -q "^trsvcid: *$P\$" /tmp/out && ! grep "^trsvcid:" /tmp/out | grep -qv ": *$P\$"; then
        ok "every discovery entry names port $P"
    else
        bad "discovery entries with another trsvcid than $P"
    fi
    if grep -qi "^trtype: *tcp" /tmp/out; then ok "discovery entries are trtype tcp"; else bad "no trtype tcp in the discovery log"; fi
else
    show; bad "nvme discover failed"
fi

step "discovery as a host that is not allowed ($BAD_HOSTNQN)"
if q nvme discover -t tcp -a "$A" -s "$P" -q "$BAD_HOSTNQN" -I "$BAD_HOSTID"; then
    grep '^subnqn' /tmp/out | sed 's/^/    /'
    if grep -q "^subnqn: *$NQN_MA\$" /tmp/out; then ok "its discovery log lists $NQN_MA (any host)"; else bad "its discovery log does not list $NQN_MA (allow_any_host)"; fi
    if grep -q "^subnqn: *$NQN_PC\$" /tmp/out; then bad "its discovery log lists $NQN_PC, which it may not connect to"; else ok "its discovery log hides $NQN_PC"; fi
else
    show; bad "nvme discover with another host NQN failed"
fi

step "connect"
PCTRL='' PDEV='' MCTRL='' MDEV=''
connect "$NQN_PC" pcache && PCTRL=$CTRL PDEV=$DEV
connect "$NQN_MA" malloc && MCTRL=$CTRL MDEV=$DEV

step "nvme list-subsys"
if q nvme list-subsys; then
    show
    for nqn in "$NQN_PC" "$NQN_MA"; do
        if grep -q "NQN=$nqn" /tmp/out && grep -A3 "NQN=$nqn" /tmp/out | grep -q "tcp traddr=$A,trsvcid=$P.* live"; then
            ok "list-subsys: $nqn live over tcp $A:$P"
        else
            bad "list-subsys: $nqn not listed live over tcp $A:$P"
        fi
    done
else
    show; bad "nvme list-subsys"
fi
q nvme list && show

# identity LABEL CTRL DEV NQN BYTES BS SN MN PCACHE?: size, Identify Controller and Namespace.
identity() {
    local label=$1 ctrl=$2 dev=$3 nqn=$4 bytes=$5 bs=$6 sn=$7 mn=$8 is_pcache=$9 n got v
    n=${dev##*/}
    step "$label: size and identity ($ctrl, $dev)"
    got=$(blockdev --getsize64 "$dev")
    if [ "$got" = "$bytes" ]; then ok "$label: blockdev --getsize64 = $got"; else bad "$label: size $got, expected $bytes"; fi
    got=$(blockdev --getss "$dev")
    if [ "$got" = "$bs" ]; then ok "$label: logical block size $got"; else bad "$label: logical block size $got, expected $bs"; fi
    if q nvme id-ctrl "$ctrl"; then
        grep -E '^(vid|sn|mn|fr|mdts|cntlid|ver|cntrltype|kas|oncs|vwc|sgls|nn|subnqn|ioccsz|iorcsz|icdoff|msdbd|maxcmd) ' /tmp/out | sed 's/^/    /'
        v=$(field sn </tmp/out)
        if [ -z "$sn" ] || [ "$v" = "$sn" ]; then ok "$label: id-ctrl sn '$v'"; else bad "$label: id-ctrl sn '$v', expected '$sn'"; fi
        v=$(field mn </tmp/out)
        if [ -z "$mn" ] || [ "$v" = "$mn" ]; then ok "$label: id-ctrl mn '$v'"; else bad "$label: id-ctrl mn '$v', expected '$mn'"; fi
        v=$(field subnqn </tmp/out)
        if [ "$v" = "$nqn" ]; then ok "$label: id-ctrl subnqn $v"; else bad "$label: id-ctrl subnqn '$v', expected $nqn"; fi
        v=$(field mdts </tmp/out)
        if [ -z "$MDTS" ] || [ "$v" = "$MDTS" ]; then
            ok "$label: id-ctrl mdts $v (max_hw_sectors_kb $(cat /sys/block/$n/queue/max_hw_sectors_kb))"
        else
            bad "$label: id-ctrl mdts '$v', expected $MDTS"
        fi
        if [ -n "$v" ] && [ "$v" != 0 ]; then
            got=$(cat /sys/block/$n/queue/max_hw_sectors_kb)
            if [ "$got" -le $((4 << v)) ]; then ok "$label: max_hw_sectors_kb $got within mdts"; else bad "$label: max_hw_sectors_kb $got above mdts $v"; fi
        fi
        v=$(field vwc </tmp/out)
        if [ "$is_pcache" = 1 ]; then
            if [ $((v & 1)) = 1 ]; then ok "$label: id-ctrl vwc $v (volatile write cache present)"; else bad "$label: id-ctrl vwc '$v': no volatile write cache"; fi
            got=$(cat /sys/block/$n/queue/write_cache)
            if [ "$got" = "write back" ]; then ok "$label: the kernel sees a write-back cache"; else bad "$label: queue/write_cache '$got'"; fi
        else
            echo "    $label: vwc $v, queue/write_cache '$(cat /sys/block/$n/queue/write_cache)'"
        fi
        v=$(field oncs </tmp/out)
        if [ $(( v & 4 )) = 4 ]; then ok "$label: id-ctrl oncs $v (Dataset Management)"; else bad "$label: id-ctrl oncs '$v' without Dataset Management"; fi
    else
        show; bad "$label: nvme id-ctrl $ctrl"
    fi
    if q nvme id-ns "$dev"; then
        grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|dlfeat|nmic|nguid|eui64|noiob|lbaf .*in use)' /tmp/out | sed 's/^/    /'
        v=$(field nsze </tmp/out)
        if [ -n "$v" ] && [ $((v)) -eq $((bytes / bs)) ]; then ok "$label: id-ns nsze $v blocks"; else bad "$label: id-ns nsze '$v', expected $((bytes / bs))"; fi
        got=$(grep 'in use' /tmp/out | sed -n 's/.*lbads:\([0-9]*\).*/\1/p')
        if [ -n "$got" ] && [ $((1 << got)) = "$bs" ]; then ok "$label: id-ns LBA format in use: lbads $got"; else bad "$label: id-ns LBA format in use: lbads '$got', expected $bs bytes"; fi
    else
        show; bad "$label: nvme id-ns $dev"
    fi
    if q nvme smart-log "$ctrl"; then ok "$label: smart-log ($(grep -E '^(critical_warning|temperature)' /tmp/out | tr -s ' ' | paste -sd, -))"; else show; bad "$label: nvme smart-log"; fi
    if q nvme get-feature "$ctrl" -f 7; then ok "$label: get-feature number of queues: $(head -n1 /tmp/out)"; else show; bad "$label: get-feature 7"; fi
}
[ -n "$PDEV" ] && identity pcache "$PCTRL" "$PDEV" "$NQN_PC" "$PC_BYTES" "$PC_BS" "$PC_SN" "$PC_MN" 1
[ -n "$MDEV" ] && identity malloc "$MCTRL" "$MDEV" "$NQN_MA" "$MA_BYTES" "$MA_BS" "$MA_SN" "$MA_MN" 0

# data LABEL DEV BYTES BS: fio, then patterns, flush, discard and write zeroes.
data() {
    local label=$1 dev=$2 bytes=$3 bs=$4 n=${2##*/} off end
    step "$label: fio crc32c verify on $dev"
    fio_verify randwrite-4k "$dev" --rw=randwrite --bs=4k --iodepth=16 --size="$bytes"
    local rr=$((bytes / 4 < 16 * MiB ? bytes / 4 : 16 * MiB)) qd=$((bytes / 8 < 4 * MiB ? bytes / 8 : 4 * MiB))
    fio_verify randrw-64k "$dev" --rw=randrw --bs=64k --iodepth=8 --size=$rr --offset=$((bytes / 4))
    fio_verify write-1m "$dev" --rw=write --bs=1M --iodepth=4 --size=8M --offset=$((bytes / 2))
    # Full queues: 128 commands in flight on each of two I/O queues.
    fio_verify qd256-4k "$dev" --rw=randwrite --bs=4k --iodepth=128 --numjobs=2 --group_reporting --size=$qd --offset=$((bytes * 3 / 4)) --offset_increment=$qd

    step "$label: O_DIRECT patterns on $dev"
    pattern /tmp/$label.p1 $((256 << 10)); pattern /tmp/$label.p2 $((4 * MiB)); pattern /tmp/$label.p4 $MiB
    # p1: one small write per block size (in-capsule data); p2: 1 MiB writes
    # (R2T, split at MDTS); p4: the last MiB in 128 KiB writes.
    off=$((bytes / 8)); end=$((bytes - MiB))
    put /tmp/$label.p1 "$dev" 0 "$bs" && ok "$label: wrote 256 KiB at 0 in $bs-byte writes" || bad "$label: dd bs=$bs write at 0"
    put /tmp/$label.p1 "$dev" $((1 * MiB)) 4096 && ok "$label: wrote 256 KiB at 1 MiB in 4 KiB writes" || bad "$label: dd bs=4k write at 1 MiB"
    put /tmp/$label.p2 "$dev" "$off" $MiB && ok "$label: wrote 4 MiB at $off in 1 MiB writes" || bad "$label: dd bs=1M write at $off"
    put /tmp/$label.p4 "$dev" "$end" $((128 << 10)) && ok "$label: wrote the last MiB in 128 KiB writes" || bad "$label: dd bs=128k write of the last MiB"
    readback "$label p1" "$dev" 0 /tmp/$label.p1 "$bs"
    readback "$label p1" "$dev" $((1 * MiB)) /tmp/$label.p1 $((256 << 10))
    readback "$label p2" "$dev" "$off" /tmp/$label.p2 4096
    readback "$label p2" "$dev" "$off" /tmp/$label.p2 $MiB
    readback "$label p4" "$dev" "$end" /tmp/$label.p4 $((256 << 10))
    if q nvme flush "$dev"; then ok "$label: nvme flush $dev: $(head -n1 /tmp/out)"; else show; bad "$label: nvme flush $dev"; fi

    step "$label: discard and write zeroes on $dev (discard_max_bytes $(cat /sys/block/$n/queue/discard_max_bytes), write_zeroes_max_bytes $(cat /sys/block/$n/queue/write_zeroes_max_bytes))"
    # A MiB of data at DOFF; discard 512 KiB from DOFF+64 KiB: the rest stays.
    local doff=$((bytes * 3 / 8)) zoff=$((bytes * 3 / 8 + 2 * MiB))
    pattern /tmp/$label.p3 $MiB
    cp /tmp/$label.p3 /tmp/$label.p3d
    dd if=/dev/zero of=/tmp/$label.p3d bs=64k seek=1 count=8 conv=notrunc 2>/dev/null
    if put /tmp/$label.p3 "$dev" "$doff" $MiB && q /sbin/blkdiscard -o $((doff + 65536)) -l $((512 << 10)) "$dev"; then
        ok "$label: blkdiscard -o $((doff + 65536)) -l $((512 << 10))"
        readback "$label discard: zeroes in the range, data around it" "$dev" "$doff" /tmp/$label.p3d 65536
    else
        show; bad "$label: write then blkdiscard at $doff"
    fi
    # Write Zeroes (blkdiscard -z): 256 KiB from ZOFF+128 KiB.
    cp /tmp/$label.p3 /tmp/$label.p3z
    dd if=/dev/zero of=/tmp/$label.p3z bs=128k seek=1 count=2 conv=notrunc 2>/dev/null
    if put /tmp/$label.p3 "$dev" "$zoff" $MiB && q /sbin/blkdiscard -z -o $((zoff + 131072)) -l $((256 << 10)) "$dev"; then
        ok "$label: blkdiscard -z (write zeroes) -o $((zoff + 131072)) -l $((256 << 10))"
        readback "$label write zeroes: zeroes in the range, data around it" "$dev" "$zoff" /tmp/$label.p3z 4096
    else
        show; bad "$label: write then blkdiscard -z at $zoff"
    fi

    step "$label: a read past the end is refused"
    local nlb=$((bytes / bs))
    if q nvme read "$dev" --start-block=$nlb --block-count=0 --data-size="$bs" --data=/tmp/oor; then
        show; bad "$label: nvme read at block $nlb (= nsze) succeeded"
    elif grep -qi 'out of range' /tmp/out \
        || { [ "${PCACHE_T_LOCAL:-0}" = 1 ] && grep -qi 'capacity exceeded' /tmp/out; }; then
        # (the kernel's nvmet file backend answers Capacity Exceeded)
        ok "$label: nvme read at block $nlb refused: $(grep -i 'status' /tmp/out | head -n1 | cut -c1-110)"
    else
        show; bad "$label: nvme read at block $nlb failed, but not with LBA Out of Range"
    fi
    rm -f /tmp/last /tmp/last.dd
    if ! q nvme read "$dev" --start-block=$((nlb - 1)) --block-count=0 --data-size="$bs" --data=/tmp/last; then
        show; bad "$label: nvme read of the last block $((nlb - 1))"
    elif ! get "$dev" $((bytes - bs)) "$bs" "$bs" /tmp/last.dd; then
        bad "$label: dd read of the last block"
    elif cmp -s /tmp/last /tmp/last.dd; then
        ok "$label: nvme read of the last block $((nlb - 1)) matches dd's"
    else
        echo "    nvme read: $(stat -c %s /tmp/last) bytes; dd: $(stat -c %s /tmp/last.dd) bytes; $(cmp /tmp/last /tmp/last.dd 2>&1 | head -n1)"
        hexdump -C /tmp/last | head -n 4 | sed 's/^/    nvme read: /'
        hexdump -C /tmp/last.dd | head -n 4 | sed 's/^/    dd:        /'
        bad "$label: nvme read of the last block $((nlb - 1)) differs from dd's"
    fi
}
[ -n "$PDEV" ] && data pcache "$PDEV" "$PC_BYTES" "$PC_BS"
[ -n "$MDEV" ] && data malloc "$MDEV" "$MA_BYTES" "$MA_BS"

if [ -n "$PDEV" ]; then
    step "pcache: controller reset (nvme reset $PCTRL)"
    if q nvme reset "$PCTRL"; then
        if wait_dev "$NQN_PC"; then
            ok "pcache: reset, live again: $CTRL, $DEV"; PDEV=$DEV
            readback "pcache p2 after the reset" "$PDEV" $((PC_BYTES / 8)) /tmp/pcache.p2 $MiB
        else
            bad "pcache: not live after the reset"
        fi
    else
        show; bad "pcache: nvme reset $PCTRL"
    fi
fi

step "disconnect"
disconnect "$NQN_PC" pcache
disconnect "$NQN_MA" malloc

step "refusals"
# refused LABEL PATTERN nvme-connect-args...: the connect must fail with the
# Connect status the kernel logs as PATTERN (not a refused or lost socket).
refused() {
    local label=$1 pat=$2 nqn=$4 k; shift 2
    kmsg
    if q nvme connect -t tcp -a "$A" -s "$P" "$@" "${CONN_OPTS[@]}"; then
        bad "$label: connected"; nvme disconnect -n "$nqn" >/dev/null 2>&1
        return
    fi
    k=$(dmesg -c 2>/dev/null | tee -a "$KLOG")
    if [ -n "$(ctrl_of "$nqn")" ]; then
        bad "$label: nvme connect failed, yet a controller of $nqn is live"
    elif grep -q "$pat" <<<"$k"; then
        ok "$label: refused: $(grep "$pat" <<<"$k" | head -n1 | sed 's/^\[[ 0-9.]*\] //' | cut -c1-140)"
    else
        show; sed 's/^/    kernel: /' <<<"$k" | tail -n 5
        bad "$label: the connect failed, but the kernel logged no '$pat'"
    fi
}
refused "connect to the unknown $UNKNOWN_NQN" "Connect Invalid Data Parameter, subsysnqn" -n "$UNKNOWN_NQN"
refused "host $BAD_HOSTNQN (not allowed) to $NQN_PC" "Connect for subsystem $NQN_PC is not allowed" \
    -n "$NQN_PC" -q "$BAD_HOSTNQN" -I "$BAD_HOSTID"
if connect "$NQN_MA" "malloc as host $BAD_HOSTNQN (any host)" -q "$BAD_HOSTNQN" -I "$BAD_HOSTID"; then
    readback "malloc p2 as another host" "$DEV" $((MA_BYTES / 8)) /tmp/malloc.p2 $MiB
    disconnect "$NQN_MA" "malloc (other host)"
fi

step "pcache with header and data digests (nvme connect --hdr-digest --data-digest)"
if connect "$NQN_PC" pcache --hdr-digest --data-digest; then
    readback "pcache p2 across the reconnect" "$DEV" $((PC_BYTES / 8)) /tmp/pcache.p2 $MiB
    readback "pcache p4 across the reconnect" "$DEV" $((PC_BYTES - MiB)) /tmp/pcache.p4 4096
    readback "pcache discarded range across the reconnect" "$DEV" $((PC_BYTES * 3 / 8)) /tmp/pcache.p3d $MiB
    fio_verify digest-4k "$DEV" --rw=randwrite --bs=4k --iodepth=16 --size=8M --offset=$((PC_BYTES / 2))
    fio_verify digest-64k "$DEV" --rw=randrw --bs=64k --iodepth=8 --size=8M --offset=$((PC_BYTES * 5 / 8))
    disconnect "$NQN_PC" "pcache (digests)"
fi
if connect "$NQN_MA" malloc --hdr-digest; then
    fio_verify hdgst-only-64k "$DEV" --rw=randrw --bs=64k --iodepth=8 --size=4M
    disconnect "$NQN_MA" "malloc (header digest)"
fi

step "result"
kmsg
if grep -qiE 'nvme.*(error|timeout|reset|failed|I/O|digest|recover)' "$KLOG"; then
    # The first ones tell what happened; repeats of the same follow-ups are dropped.
    echo "kernel messages worth a look (the first 30):"
    grep -iE 'nvme.*(error|timeout|reset|failed|I/O|digest|recover)' "$KLOG" \
        | grep -v -e 'no available path' -e 'no usable path' -e 'Failed reconnect attempt' -e 'creating [0-9]* I/O queues' | head -n 30 | sed 's/^/    /'
fi
left=$(ls /sys/class/nvme 2>/dev/null | tr '\n' ' ')
[ -z "$left" ] || { echo "controllers left: $left"; nvme disconnect-all >/dev/null 2>&1; }
echo "nvmf: $passes passed, $fails failed"
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
[ "$fails" -eq 0 ]
