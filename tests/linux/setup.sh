#!/usr/bin/env bash
# tests/linux/setup.sh — prepares everything needed to run the Linux kernel's
# own NVMe/TCP initiator against pcache inside a QEMU (TCG) guest:
#   * installs qemu-system-x86 (from bookworm-backports, to match the image's
#     qemu-utils 10) and the host tools the build needs (cpio, binutils, xz);
#   * downloads (apt-get download, never installs) a Debian cloud kernel,
#     busybox-static, bash, nvme-cli, fio and util-linux plus every shared library
#     they need, and unpacks them with dpkg -x into a cache folder;
#   * builds the base initramfs (cpio newc, gzip) with /init = init.sh.
# Idempotent: what is already in the cache is reused; a second run takes
# seconds. Cache: ${PCACHE_GUEST_CACHE:-/var/cache/pcache-guest}.
# PCACHE_GUEST_REFRESH=1 re-resolves the kernel version (apt-get update).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PCACHE_GUEST_CACHE:-/var/cache/pcache-guest}
DEBS=$CACHE/debs          # downloaded .deb files
LISTS=$CACHE/lists        # one file list per unpacked package
SYSROOT=$CACHE/sysroot    # every userland package unpacked here
KROOT=$CACHE/kernel       # the kernel package unpacked here
STAGE=$CACHE/stage        # the initramfs tree (rebuilt when inputs change)
ARCH_LIB=x86_64-linux-gnu
# Userland packages whose binaries go into the guest (libraries follow).
TOP_PKGS=(busybox-static bash nvme-cli fio util-linux libc6)
# Binaries copied into the guest, with their libraries.
# bash: test scripts may use it (busybox sh runs its own applets, such as its
# blkdiscard, before anything in PATH).
BINARIES=(/bin/bash /usr/sbin/nvme /usr/bin/fio /sbin/blkdiscard)
# Kernel modules loaded at boot (with dependencies, in order); the optional
# ones may fail (crc32c-intel needs SSE4.2 in the guest CPU).
MODULES=(virtio_pci virtio_net nvme-tcp)
OPT_MODULES=(crc32c-intel nvmet-tcp)

log() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

mkdir -p "$DEBS" "$LISTS" "$SYSROOT" "$KROOT"

# ---------------------------------------------------------------- apt
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

ensure_backports() {
    if grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    log "adding the bookworm-backports source"
    cat >/etc/apt/sources.list.d/pcache-bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    APT_UPDATED=0
}

install_host_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v readelf >/dev/null || missing+=(binutils)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v gzip >/dev/null || missing+=(gzip)
    [ ${#missing[@]} = 0 ] && return
    log "installing host tools: ${missing[*]}"
    ensure_backports
    apt_update_once
    local plain=() m
    for m in "${missing[@]}"; do [ "$m" = qemu-system-x86 ] || plain+=("$m"); done
    if [ ${#plain[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${plain[@]}" >/dev/null
    fi
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
        # bookworm's qemu 7.2 conflicts with the image's qemu-utils 10.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
    fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 still missing"
}

# fetch_deb NAME: downloads NAME's .deb into $DEBS unless one is there, and
# sets DEB to its path (no subshell, so apt-get update runs once per run).
# Fails (status 1) if apt does not know NAME.
fetch_deb() {
    local name=$1
    DEB=$(ls "$DEBS/${name}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$DEB" ]; then
        apt_update_once
        log "apt-get download $name"
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$name" >/dev/null 2>&1) || return 1
        DEB=$(ls "$DEBS/${name}"_*.deb 2>/dev/null | head -n1 || true)
        [ -n "$DEB" ] || return 1
    fi
}

# unpack NAME: fetch + dpkg -x into $SYSROOT (once); records its file list.
unpack() {
    local name=$1
    [ -s "$LISTS/$name.list" ] && return 0
    fetch_deb "$name" || return 1
    dpkg -x "$DEB" "$SYSROOT"
    dpkg-deb --fsys-tarfile "$DEB" | tar -t | sed -e 's|^\./|/|' -e 's|/$||' >"$LISTS/$name.list.tmp"
    mv "$LISTS/$name.list.tmp" "$LISTS/$name.list"
}

# lib_deps DEB: the library packages DEB depends on (first alternative).
lib_deps() {
    dpkg-deb -f "$1" Pre-Depends Depends \
        | sed -e 's/^[A-Za-z-]*: //' | tr ',' '\n' \
        | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g' \
        | grep -E '^(lib|zlib1g$)' | sort -u || true
}

# ---------------------------------------------------------------- kernel
KVER_FILE=$CACHE/kernel.version
resolve_kernel() {
    if [ -s "$KVER_FILE" ] && [ "${PCACHE_GUEST_REFRESH:-0}" != 1 ] \
        && [ -f "$CACHE/vmlinuz" ] && [ -d "$KROOT/lib/modules/$(cat "$KVER_FILE")" ]; then
        KVER=$(cat "$KVER_FILE")
        return
    fi
    apt_update_once
    local meta pkg
    for meta in linux-image-cloud-amd64 linux-image-amd64; do
        pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
        [ -n "$pkg" ] || { log "cannot resolve $meta"; continue; }
        KVER=${pkg#linux-image-}
        log "kernel package $pkg"
        fetch_deb "$pkg" || { log "cannot download $pkg"; continue; }
        rm -rf "$KROOT" && mkdir -p "$KROOT"
        dpkg -x "$DEB" "$KROOT"
        if compgen -G "$KROOT/lib/modules/$KVER/kernel/drivers/nvme/host/nvme-tcp.ko*" >/dev/null; then
            [ "$meta" = linux-image-cloud-amd64 ] || log "NOTE: the cloud kernel lacks nvme-tcp; using $pkg"
            cp "$KROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
            echo "$KVER" >"$KVER_FILE"
            return
        fi
        log "$pkg has no nvme-tcp module"
    done
    die "no kernel package with nvme-tcp found"
}

# ---------------------------------------------------------------- ELF closure
# Resolve a path inside $SYSROOT following symlinks there (absolute link
# targets are relative to $SYSROOT). Prints the logical final path.
sys_real() {
    local p=$1 n=0 t
    while [ -L "$SYSROOT$p" ]; do
        t=$(readlink "$SYSROOT$p")
        case $t in /*) p=$t ;; *) p=$(dirname "$p")/$t ;; esac
        p=$(realpath -m -s "$p")
        n=$((n + 1)); [ $n -lt 40 ] || return 1
    done
    [ -e "$SYSROOT$p" ] || return 1
    echo "$p"
}

# stage_path P: copies P (and the chain of symlinks leading to its file)
# from $SYSROOT into $STAGE, keeping paths.
stage_path() {
    local p=$1 t
    while :; do
        mkdir -p "$STAGE$(dirname "$p")"
        if [ -L "$SYSROOT$p" ]; then
            t=$(readlink "$SYSROOT$p")
            ln -sfn "$t" "$STAGE$p"
            case $t in /*) p=$t ;; *) p=$(realpath -m -s "$(dirname "$p")/$t") ;; esac
        else
            cp -a "$SYSROOT$p" "$STAGE$p"
            return
        fi
    done
}

owner_pkg() {  # package whose file list holds $1
    grep -lxF "$1" "$LISTS"/*.list 2>/dev/null | head -n1 | xargs -r basename | sed 's/\.list$//'
}

find_soname() {  # find_soname SONAME RUNPATH-DIRS... -> logical path
    local so=$1 d p; shift
    for d in "$@" /lib/$ARCH_LIB /usr/lib/$ARCH_LIB /lib /usr/lib; do
        p=$(realpath -m -s "$d/$so")
        if sys_real "$p" >/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

declare -A DONE_ELF=() MISSING=() FAILED_PKG=()
# stage_elf P: stages the ELF file P, its interpreter and, recursively,
# every library it needs that the sysroot has; records the others in
# MISSING[soname]=owner-package (stage_all downloads them).
stage_elf() {
    local p=$1 real dyn so found interp rp
    real=$(sys_real "$p") || die "$p not found in the sysroot"
    stage_path "$p"
    [ -z "${DONE_ELF[$real]:-}" ] || return 0
    DONE_ELF[$real]=1
    dyn=$(readelf -d "$SYSROOT$real" 2>/dev/null || true)
    interp=$(readelf -l "$SYSROOT$real" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    [ -z "$interp" ] || stage_elf "$interp"
    local -a runpath=()
    rp=$(sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p' <<<"$dyn" | head -n1)
    if [ -n "$rp" ]; then
        IFS=: read -r -a runpath <<<"${rp//\$ORIGIN/$(dirname "$real")}"
    fi
    for so in $(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dyn"); do
        if found=$(find_soname "$so" "${runpath[@]}"); then
            stage_elf "$found"
        else
            MISSING[$so]=$(owner_pkg "$real")
            [ -n "${MISSING[$so]}" ] || die "$so (for $real): no owner package known"
        fi
    done
}

# fetch_many NAME...: downloads the missing .debs in one apt-get call (one
# by one if that fails), then unpacks each; records failures in FAILED_PKG.
fetch_many() {
    local n need=()
    for n in "$@"; do compgen -G "$DEBS/${n}_*.deb" >/dev/null || need+=("$n"); done
    if [ ${#need[@]} -gt 0 ]; then
        apt_update_once
        log "apt-get download ${need[*]}"
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${need[@]}" >/dev/null 2>&1) || true
    fi
    for n in "$@"; do unpack "$n" || { log "cannot fetch $n"; FAILED_PKG[$n]=1; }; done
}

# stage_all: stages BINARIES with their library closure, downloading in
# waves the library packages that the owners of unresolved sonames depend
# on (first those named like the soname, then all of them).
stage_all() {
    local so owner stem d
    local -a want=() deps=() cand=() uniq=()
    for _ in $(seq 1 30); do
        DONE_ELF=() MISSING=()
        for so in "${BINARIES[@]}"; do stage_elf "$so"; done
        [ ${#MISSING[@]} -gt 0 ] || return 0
        want=()
        for so in "${!MISSING[@]}"; do
            owner=${MISSING[$so]}
            fetch_deb "$owner" || die "cannot fetch $owner"
            stem=${so%%.so*}
            deps=() cand=()
            for d in $(lib_deps "$DEB"); do
                [ -s "$LISTS/$d.list" ] || [ -n "${FAILED_PKG[$d]:-}" ] || deps+=("$d")
            done
            for d in "${deps[@]}"; do [[ $d == "$stem"* ]] && cand+=("$d"); done
            [ ${#cand[@]} -gt 0 ] || cand=("${deps[@]}")
            want+=("${cand[@]}")
        done
        [ ${#want[@]} -gt 0 ] || die "unresolved libraries: $(for so in "${!MISSING[@]}"; do printf '%s (of %s) ' "$so" "${MISSING[$so]}"; done)"
        mapfile -t uniq < <(printf '%s\n' "${want[@]}" | sort -u)
        fetch_many "${uniq[@]}"
    done
    die "library closure did not converge"
}

# ---------------------------------------------------------------- modules
declare -A MOD_PATH=() MOD_DEPS=() MOD_SEEN=()
MOD_ORDER=()
load_modules_dep() {
    local mdir=$KROOT/lib/modules/$KVER line m
    if [ ! -s "$mdir/modules.dep" ]; then
        # The kernel package ships no modules.dep (postinst makes it).
        "$SYSROOT/bin/busybox" depmod -b "$KROOT" "$KVER"
    fi
    while IFS= read -r line; do
        m=${line%%:*}
        local base=${m##*/}; base=${base%%.ko*}; base=${base//-/_}
        MOD_PATH[$base]=$m
        MOD_DEPS[$base]=${line#*:}
    done <"$mdir/modules.dep"
}
mod_visit() {  # topological order: dependencies first
    local n=${1//-/_} d b
    [ -n "${MOD_PATH[$n]:-}" ] || return 1
    [ -z "${MOD_SEEN[$n]:-}" ] || return 0
    MOD_SEEN[$n]=1
    for d in ${MOD_DEPS[$n]}; do
        b=${d##*/}; b=${b%%.ko*}; mod_visit "$b"
    done
    MOD_ORDER+=("${MOD_PATH[$n]}")
}

# ---------------------------------------------------------------- build
build_initramfs() {
    local out=$CACHE/initramfs.cpio.gz m
    rm -rf "$STAGE"
    mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc/nvme,etc/pcache,proc,sys,dev,tmp,run,root,mnt,var/tmp,lib64}
    chmod 1777 "$STAGE/tmp" "$STAGE/var/tmp"

    # busybox and its applets (never over a real tool).
    cp -a "$SYSROOT/bin/busybox" "$STAGE/bin/busybox"
    local real_tools=" bash nvme fio blkdiscard "
    while read -r m; do
        [[ $real_tools == *" ${m##*/} "* ]] && continue
        [ -e "$STAGE/$m" ] || ln -s /bin/busybox "$STAGE/$m"
    done < <("$SYSROOT/bin/busybox" --list-full)

    # dynamic tools and their libraries.
    stage_all
    printf '%s\n' /lib/$ARCH_LIB /usr/lib/$ARCH_LIB >"$STAGE/etc/ld.so.conf"
    ldconfig -r "$STAGE" 2>/dev/null || log "ldconfig -r failed (the loader's default paths still apply)"

    # kernel modules, in load order.
    load_modules_dep
    for m in "${MODULES[@]}"; do mod_visit "$m" || die "module $m not in $KVER"; done
    local required=("${MOD_ORDER[@]}")
    MOD_ORDER=()
    for m in "${OPT_MODULES[@]}"; do mod_visit "$m" || log "optional module $m not in $KVER"; done
    local optional=("${MOD_ORDER[@]}")
    local mdst=$STAGE/lib/modules/$KVER
    mkdir -p "$mdst"
    : >"$STAGE/etc/pcache/modules"; : >"$STAGE/etc/pcache/modules.optional"
    for m in "${required[@]}" "${optional[@]}"; do
        mkdir -p "$mdst/$(dirname "$m")"
        case $m in
            *.ko.xz) xz -dc "$KROOT/lib/modules/$KVER/$m" >"$mdst/${m%.xz}" ;;
            *.ko.zst) zstd -qdc "$KROOT/lib/modules/$KVER/$m" >"$mdst/${m%.zst}" ;;
            *.ko.gz) gzip -dc "$KROOT/lib/modules/$KVER/$m" >"$mdst/${m%.gz}" ;;
            *) cp "$KROOT/lib/modules/$KVER/$m" "$mdst/$m" ;;
        esac
    done
    for m in "${required[@]}"; do echo "${m%.ko*}.ko" >>"$STAGE/etc/pcache/modules"; done
    for m in "${optional[@]}"; do echo "${m%.ko*}.ko" >>"$STAGE/etc/pcache/modules.optional"; done
    cp "$KROOT/lib/modules/$KVER"/modules.builtin* "$mdst/" 2>/dev/null || true
    "$SYSROOT/bin/busybox" depmod -b "$STAGE" "$KVER"   # for modprobe / request_module

    # /init and small config.
    install -m 0755 "$HERE/init.sh" "$STAGE/init"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
    printf 'root:x:0:\n' >"$STAGE/etc/group"
    echo "$KVER" >"$STAGE/etc/pcache/kernel"

    (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        | gzip -6 >"$out.tmp"
    mv "$out.tmp" "$out"
    log "initramfs $(du -h "$out" | cut -f1) compressed, $(du -sh "$STAGE" | cut -f1) unpacked"
}

# ---------------------------------------------------------------- main
install_host_tools
resolve_kernel
fetch_many "${TOP_PKGS[@]}"
for p in "${TOP_PKGS[@]}"; do [ -z "${FAILED_PKG[$p]:-}" ] || die "cannot fetch $p"; done

# Rebuild the initramfs only when an input changed.
inputs=$( { cat "${BASH_SOURCE[0]}" "$HERE/init.sh"; echo "$KVER"; ls "$DEBS"; } | sha256sum | cut -d' ' -f1)
if [ -f "$CACHE/initramfs.cpio.gz" ] && [ "$(cat "$CACHE/initramfs.stamp" 2>/dev/null)" = "$inputs" ]; then
    log "initramfs up to date ($(du -h "$CACHE/initramfs.cpio.gz" | cut -f1))"
else
    build_initramfs
    # Downloads during the build change the input list: stamp after it.
    inputs=$( { cat "${BASH_SOURCE[0]}" "$HERE/init.sh"; echo "$KVER"; ls "$DEBS"; } | sha256sum | cut -d' ' -f1)
    echo "$inputs" >"$CACHE/initramfs.stamp"
fi
log "ready: kernel $KVER, $CACHE/vmlinuz, $CACHE/initramfs.cpio.gz"
