#!/bin/sh
# tests/linux/init.sh — /init of the pcache test guest (busybox sh, PID 1).
# Mounts the pseudo file systems, loads the NVMe/TCP and virtio-net modules,
# brings up eth0 on QEMU's user network, writes /etc/nvme/hostnqn and hostid,
# runs /test.sh (added per run by run-guest.sh), prints
# "PCACHE-GUEST-EXIT <rc>" and powers the guest off. Never exits (PID 1).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
cd /

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t configfs configfs /sys/kernel/config 2>/dev/null
echo /sbin/modprobe >/proc/sys/kernel/modprobe

echo "pcache-guest: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

# Per-run variables (PCACHE_T_*), written by run-guest.sh.
[ -f /test.env ] && . /test.env

kdir=/lib/modules/$(uname -r)
for m in $(cat /etc/pcache/modules); do
    n=${m##*/}; n=${n%.ko}
    [ -d "/sys/module/$(echo "$n" | tr - _)" ] && continue
    insmod "$kdir/$m" || echo "pcache-guest: insmod $m failed"
done
for m in $(cat /etc/pcache/modules.optional); do
    n=${m##*/}; n=${n%.ko}
    [ -d "/sys/module/$(echo "$n" | tr - _)" ] && continue
    insmod "$kdir/$m" 2>/dev/null || echo "pcache-guest: optional module $n not loaded"
done
[ -d /sys/kernel/config/nvmet ] || mount -t configfs configfs /sys/kernel/config 2>/dev/null

# Network: QEMU user net. The host's 127.0.0.1 is 10.0.2.2. No default
# route on purpose: the guest can reach 10.0.2.0/24 (the host's loopback
# through 10.0.2.2) and nothing beyond it.
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    i=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do
        sleep 0.1; i=$((i + 1))
    done
else
    echo "pcache-guest: no eth0"
fi

# NVMe host identity (nvme-cli reads these).
mkdir -p /etc/nvme
hostid=${PCACHE_T_HOSTID:-$(cat /proc/sys/kernel/random/uuid)}
echo "${PCACHE_T_HOSTNQN:-nqn.2014-08.org.nvmexpress:uuid:$hostid}" >/etc/nvme/hostnqn
echo "$hostid" >/etc/nvme/hostid

echo "PCACHE-GUEST-START"
if [ -f /test.sh ]; then
    /test.sh    # its #! line picks the shell: /bin/sh (busybox) or /bin/bash
    rc=$?
else
    echo "pcache-guest: no /test.sh"
    rc=127
fi
echo "PCACHE-GUEST-EXIT $rc"
sync
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
