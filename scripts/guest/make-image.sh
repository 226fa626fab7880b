#!/usr/bin/env bash
# Builds the QEMU test guest (Debian bookworm kernel + a systemd root as initramfs, with the
# viridian-agent and viridian-glue-dkms packages installed by apt) into .cache/guest/: vmlinuz and
# initrd.cpio.lz4 (.gz etc. with --compress).
#
# Usage: scripts/guest/make-image.sh --deb FILE... [options]   (as root)
#   --deb FILE            a package to install in the root with apt-get install ./FILE (give
#                         viridian-agent's and viridian-glue-dkms's; make debs builds them): DKMS
#                         builds the module there against the guest kernel's headers
#   --stage-deb FILE      a package to copy into the guest's /root/debs/ without installing it
#                         (the packaging test upgrades to it)
#   --vmbus-core FILE     KernelGlue's viridian_vmbus.ko (scripts/kernelglue-check.sh --ko-for):
#                         the VMBus core for the kernel's own hv_storvsc, hv_netvsc and hv_utils.
#                         It goes into extra/ and replaces hv_vmbus in depmod's index; a guest
#                         booted with viridian.core=vmbus on its command line loads it (and not
#                         viridian_glue, so no agent starts); udev then loads the hv_* drivers
#   --no-agent            build without packages (no agent, no module)
#   --agent-config FILE   the guest's /etc/viridian/agent.toml, replacing the package's conffile
#                         as an administrator would (default: scripts/guest/agent.toml)
#   --kernel-release REL  kernel ABI, e.g. 6.1.0-57-cloud-amd64 (default: the newest
#                         /usr/src/linux-headers-*-cloud-amd64)
#   --extra-packages LIST more Debian packages for the root, comma-separated (e.g. libraries the
#                         agent links against; changing the list debootstraps the base again)
#   --mirror URL          Debian mirror for debootstrap (default: from this machine's apt sources)
#   --cache DIR           cache/output folder (default: <repo>/.cache/guest)
#   --compress KIND       lz4 (default), gzip (gzip -1), zstd or none: the initrd is
#                         initrd.cpio.lz4, .gz, .zst or initrd.cpio (the others are removed)
#   --rebuild             ignore every cached step
#
# The initrd is four compressed newc cpio archives concatenated (the kernel unpacks them in
# order, later files replacing earlier ones): base (the debootstrap'd root with DKMS and the guest
# kernel's headers, rebuilt only when the package list or the kernel changes), modules (the
# kernel's modules), packages (what apt-get install of the .debs added or changed in the root,
# DKMS's viridian_glue.ko among it) and top (depmod's output and the guest configuration: small,
# repacked in a second). Each step keeps a stamp file with the key of its inputs and is skipped
# when the key is unchanged. The compiler and the kernel headers stay out of the packed base: the
# guest never builds anything (they take 150 MB of guest RAM).
# lz4 is the default because the guest unpacks it fastest under TCG (measured on 2 cores: initrd
# of 210 MB, login after 15 s with lz4 or none, 22 s with zstd, 23 s with gzip -1).
set -euo pipefail
umask 022
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"

suite=bookworm
# dkms (and the compiler it depends on) so DKMS builds the module inside the root, as on a user's guest.
# hyperv-daemons (hv_kvp_daemon), iperf3, ethtool and fdisk serve the stock-driver mode (--vmbus-core).
include=systemd,systemd-sysv,udev,dbus,kmod,iproute2,nbd-client,e2fsprogs,iputils-ping,netcat-openbsd,coreutils,procps,libudev1,dkms,hyperv-daemons,iperf3,ethtool,fdisk
base_rev=2            # bump when the trimming of the debootstrap'd root changes
cache="$root/.cache/guest"
debs=() stage_debs=() vmbus_core= agent_config="$here/agent.toml" no_agent=0 release= mirror= rebuild=0 compress=lz4

die() { printf 'make-image: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$self"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --deb) debs+=("${2:?--deb needs a file}"); shift 2 ;;
        --stage-deb) stage_debs+=("${2:?--stage-deb needs a file}"); shift 2 ;;
        --vmbus-core) vmbus_core=${2:?--vmbus-core needs a file}; shift 2 ;;
        --no-agent) no_agent=1; shift ;;
        --agent-config) agent_config=${2:?--agent-config needs a file}; shift 2 ;;
        --kernel-release) release=${2:?}; shift 2 ;;
        --mirror) mirror=${2:?}; shift 2 ;;
        --extra-packages) include="$include,${2:?}"; shift 2 ;;
        --cache) cache=${2:?}; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --compress) compress=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) printf 'make-image: unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and device nodes need it)"
if [ "$no_agent" = 0 ]; then
    [ ${#debs[@]} -gt 0 ] || die "--deb FILE is required (the viridian-agent and viridian-glue-dkms packages; make debs builds them), or --no-agent"
else
    debs=()
fi
for i in "${!debs[@]}"; do
    [ -f "${debs[$i]}" ] || die "package ${debs[$i]} does not exist"
    debs[$i]=$(realpath "${debs[$i]}")
done
for i in "${!stage_debs[@]}"; do
    [ -f "${stage_debs[$i]}" ] || die "package ${stage_debs[$i]} does not exist"
    stage_debs[$i]=$(realpath "${stage_debs[$i]}")
done
[ -f "$agent_config" ] || die "agent configuration $agent_config does not exist"
if [ -n "$vmbus_core" ]; then
    [ -f "$vmbus_core" ] || die "--vmbus-core $vmbus_core does not exist"
    vmbus_core=$(realpath "$vmbus_core")
fi
case $compress in   # compressor (formats the kernel unpacks: lz4 needs the legacy frame) and suffix
    lz4) zip=(lz4 -l -1 -q) ext=.lz4 zpkg=lz4 ;;
    gzip) zip=(gzip -1) ext=.gz zpkg=gzip ;;
    zstd) zip=(zstd -q -3 -T0) ext=.zst zpkg=zstd ;;
    none) zip=(cat) ext= zpkg= ;;
    *) die "--compress takes lz4, gzip, zstd or none" ;;
esac

mkdir -p "$cache/logs"
cache=$(realpath "$cache")
# .cache/ is not in the repository's .gitignore: keep the cache out of git from inside.
[ -e "$root/.cache/.gitignore" ] || { mkdir -p "$root/.cache" && echo '*' > "$root/.cache/.gitignore"; }
exec 9>"$cache/.lock"
flock -n 9 || { echo "make-image: waiting for another make-image.sh on $cache" >&2; flock 9; }

# --- helpers ---------------------------------------------------------------------------------

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
t0=$(now)
step_start() { step_name=$1; step_t=$(now); }
# Prints the step's one progress line: name, what happened, time, and a size if given.
step_done() {
    local what=$1 size=${2:-}
    printf '[make-image] %-9s %s (%s s%s)\n' "$step_name:" "$what" "$(since "$step_t")" "${size:+, $size}"
}
human() { numfmt --to=iec --suffix=B --format=%.1f "$1"; }
size_of() { if [ -d "$1" ]; then human "$(du -sb "$1" | cut -f1)"; else human "$(stat -c %s "$1")"; fi; }
# Runs a command with its output going to a log; on failure shows the log's tail and stops.
logged() {
    local log=$1; shift
    if ! "$@" >>"$log" 2>&1; then
        printf '\nmake-image: error: %s failed; last lines of %s:\n' "$*" "$log" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}
stamp_ok() {   # NAME KEY OUTPUT... : the step's stamp holds KEY and all outputs exist
    local name=$1 key=$2; shift 2
    [ "$rebuild" = 0 ] && [ "$(cat "$cache/$name.stamp" 2>/dev/null)" = "$key" ] || return 1
    local f; for f in "$@"; do [ -e "$f" ] || return 1; done
}
stamp_write() { printf '%s\n' "$2" > "$cache/$1.stamp.tmp" && mv "$cache/$1.stamp.tmp" "$cache/$1.stamp"; }
hash_files() { sha256sum "$@" | sha256sum | cut -c1-16; }
# Packs DIR as the layer NAME.cpio$ext (a compressed newc cpio) unless that is cached for KEY.
# The directory modes matter: the kernel chmods existing directories to the archive's mode, so
# "." must be 0755. Prints the layer's size.
# Paths given after KEY (./usr/src/..., shell patterns) are left out of the layer.
pack_layer() {
    local name=$1 dir=$2 key="$3 compress=$compress" out="$cache/$1.cpio$ext"; shift 3
    local prune=() p
    for p in "$@"; do prune+=(${prune[0]:+-o} -path "$p"); done
    [ ${#prune[@]} = 0 ] || prune=(\( "${prune[@]}" \) -prune -o)
    key="$key prune=$*"
    if ! stamp_ok "$name-pack" "$key" "$out"; then
        rm -f "$cache/$name".cpio*
        chmod 0755 "$dir"
        (cd "$dir" && find . "${prune[@]}" -print0 | cpio --null -o -H newc --quiet | "${zip[@]}") > "$out.tmp"
        mv "$out.tmp" "$out"
        stamp_write "$name-pack" "$key"
    fi
    size_of "$out"
}
# The Debian mirror apt uses for $suite: deb822 .sources first, then one-line sources.list.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() { if (deb && hit && uri != "" && !off) { print uri; exit } deb = hit = off = 0; uri = "" }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
            tolower($1) == "enabled:" && tolower($2) == "no" { off = 1 }
            END { flush() }' "$f"
    done | grep -m1 -E '^(https?|ftp|file):' && return 0
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -E 's/\[[^]]*\]//' | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' |
        grep -m1 -E '^(https?|ftp|file):'
}

# --- a. host packages ------------------------------------------------------------------------

step_start packages
if [ -z "$release" ]; then
    release=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sed 's|.*/linux-headers-||' | sort -V | tail -n1)
fi
need=()
for p in debootstrap cpio $zpkg kmod qemu-system-x86 python3 ${release:+linux-headers-$release}; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ -n "$release" ] || need+=(linux-headers-cloud-amd64)
if [ ${#need[@]} -gt 0 ]; then
    logged "$cache/logs/apt.log" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${need[@]}"
    [ -n "$release" ] || release=$(ls -d /usr/src/linux-headers-*-cloud-amd64 | sed 's|.*/linux-headers-||' | sort -V | tail -n1)
    step_done "installed ${need[*]}"
else
    step_done "all present (debootstrap, cpio, ${zpkg:+$zpkg, }kmod, qemu-system-x86, python3, linux-headers-$release)"
fi
kver=$(dpkg-query -W -f='${Version}' "linux-headers-$release") ||
    die "linux-headers-$release is not installed"
case $release in *.*-*) ;; *) die "odd kernel release '$release'" ;; esac

# --- b. debootstrap'd base root ----------------------------------------------------------------

step_start base
# What DKMS needs to build in the root but the running guest never uses: kernel headers, the
# compiler's own files (gcc, cc1) and the assembler and linker.
base_prune=("./usr/src/linux-headers-*" ./usr/lib/gcc ./usr/libexec/gcc "./usr/lib/x86_64-linux-gnu/libbfd*"
    "./usr/lib/x86_64-linux-gnu/libctf*" "./usr/lib/x86_64-linux-gnu/libopcodes*" "./usr/bin/x86_64-linux-gnu-*")
[ -n "$mirror" ] || mirror=$(apt_mirror) ||
    die "no '$suite' mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; pass --mirror URL"
base="$cache/base/root"
base_key="suite=$suite mirror=$mirror include=$include rev=$base_rev headers=linux-headers-$release=$kver"
if stamp_ok base "$base_key" "$base/etc/os-release" "$base/usr/src/linux-headers-$release"; then
    step_done "cached ($suite from $mirror)" "$(pack_layer base "$base" "$base_key" "${base_prune[@]}")"
else
    rm -rf "$cache/base" "$cache/base.stamp"
    mkdir -p "$cache/base" "$cache/debs"   # debs: debootstrap's download cache, kept for rebuilds
    : > "$cache/logs/debootstrap.log"
    logged "$cache/logs/debootstrap.log" debootstrap --variant=minbase --include="$include" \
        --cache-dir="$cache/debs" "$suite" "$cache/base/root.tmp" "$mirror"
    # The guest kernel's headers, for DKMS, at the kernel's own version: apt inside the root, with
    # this machine's sources (the kernel's security updates are not on the debootstrap mirror).
    rb="$cache/base/root.tmp"
    cp -a "$rb/etc/apt" "$cache/base/apt.orig"
    rm -f "$rb/etc/apt/sources.list"
    cp -L /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list "$rb/etc/apt/sources.list.d/" 2>/dev/null || true
    [ -n "$(ls "$rb/etc/apt/sources.list.d/")" ] || die "no apt sources on this machine to fetch linux-headers-$release from"
    mv -f "$rb/etc/apt/sources.list.d/sources.list" "$rb/etc/apt/sources.list" 2>/dev/null || true
    cp -L /etc/resolv.conf "$rb/etc/resolv.conf" 2>/dev/null || true
    logged "$cache/logs/debootstrap.log" chroot "$rb" apt-get -q update
    logged "$cache/logs/debootstrap.log" chroot "$rb" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "linux-headers-$release=$kver"
    [ -d "$rb/usr/src/linux-headers-$release" ] || die "linux-headers-$release did not install in the root (see $cache/logs/debootstrap.log)"
    rm -rf "$rb/etc/apt"; mv "$cache/base/apt.orig" "$rb/etc/apt"
    : > "$rb/etc/resolv.conf"
    mv "$rb" "$base"
    # Trim what a test guest never reads (it all sits in guest RAM): docs, man pages,
    # translations, apt's caches and lists, logs of the bootstrap.
    rm -rf "$base"/usr/share/{doc,man,info,locale,lintian}/* "$base"/var/cache/apt/* \
        "$base"/var/lib/apt/lists/* "$base"/var/cache/debconf/*-old "$base"/var/lib/dpkg/*-old \
        "$base"/var/log/*.log "$base"/var/log/apt/* "$base/debootstrap"
    # The kernel opens /dev/console for init before anything mounts devtmpfs.
    [ -c "$base/dev/console" ] || mknod -m 600 "$base/dev/console" c 5 1
    [ -c "$base/dev/null" ] || mknod -m 666 "$base/dev/null" c 1 3
    stamp_write base "$base_key"
    step_done "debootstrap $suite from $mirror, root $(size_of "$base")" "$(pack_layer base "$base" "$base_key" "${base_prune[@]}")"
fi
# Merged /usr (bookworm's default): modules go to usr/lib/modules, /lib is a symlink to it.
if [ -L "$base/lib" ]; then moddir=usr/lib/modules; else moddir=lib/modules; fi

# --- c. kernel and its modules ---------------------------------------------------------------

step_start kernel
kdir="$cache/kernel"
kernel_key="linux-image-$release=$kver"
kmods="$kdir/root/$moddir/$release"   # the modules layer's tree
if stamp_ok kernel "$kernel_key" "$kdir/vmlinuz" "$kmods/modules.order"; then
    step_done "cached ($kernel_key)" "$(pack_layer modules "$kdir/root" "$kernel_key")"
else
    rm -rf "$kdir" "$cache/kernel.stamp"
    mkdir -p "$kdir/deb"
    klog="$cache/logs/kernel.log"; : > "$klog"
    get() { (cd "$kdir/deb" && apt-get -o APT::Sandbox::User=root download "linux-image-$release=$kver"); }
    if ! get >>"$klog" 2>&1; then
        logged "$klog" apt-get update
        logged "$klog" get
    fi
    deb=$(ls "$kdir"/deb/linux-image-"$release"_*.deb)
    logged "$klog" dpkg-deb -x "$deb" "$kdir/x"
    mv "$kdir/x/boot/vmlinuz-$release" "$kdir/vmlinuz"
    # The modules layer: the stock tree (depmod's output is in the top layer, which knows
    # about KernelGlue's module too).
    mkdir -p "$(dirname "$kmods")"
    mv "$kdir/x/lib/modules/$release" "$kmods"
    for m in nbd tun; do
        find "$kmods" -name "$m.ko*" | grep -q . || die "no $m module in $deb"
    done
    rm -rf "$kdir/x" "$kdir/deb"
    stamp_write kernel "$kernel_key"
    step_done "$kernel_key, modules $(size_of "$kmods")" "$(pack_layer modules "$kdir/root" "$kernel_key")"
fi

# --- d. the packages, installed by apt in a copy of the root ------------------------------------

step_start packages
ko= pkgs="$cache/pkgs"
if [ ${#debs[@]} = 0 ]; then
    rm -rf "$pkgs" "$cache"/packages.cpio* "$cache/packages.stamp" "$cache/packages-pack.stamp"
    step_done "none (--no-agent)"
else
    pkgs_key="$(hash_files "${debs[@]}") base=$(cat "$cache/base.stamp")"
    if stamp_ok packages "$pkgs_key" "$pkgs/layer/var/lib/dpkg/status" "$pkgs/purged/var/lib/dpkg/status"; then
        step_done "cached ($(for d in "${debs[@]}"; do basename "$d"; done | tr '\n' ' '))" \
            "$(pack_layer packages "$pkgs/layer" "$pkgs_key")"
    else
        rm -rf "$pkgs" "$cache/packages.stamp"
        mkdir -p "$pkgs"
        plog="$cache/logs/packages.log"; : > "$plog"
        w="$pkgs/root"
        cp -a "$base" "$w"
        # As on a running system, except that no service starts in the root (policy-rc.d says no).
        printf '#!/bin/sh\nexit 101\n' > "$w/usr/sbin/policy-rc.d"; chmod 0755 "$w/usr/sbin/policy-rc.d"
        mkdir -p "$w/tmp/viridian-debs"
        cp "${debs[@]}" "$w/tmp/viridian-debs/"
        mount -t proc proc "$w/proc"
        mkdir -p "$w/dev/pts" && mount -t devpts devpts "$w/dev/pts"   # apt's terminal log
        rc=0
        chroot "$w" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            $(for d in "${debs[@]}"; do printf '/tmp/viridian-debs/%s ' "$(basename "$d")"; done) >>"$plog" 2>&1 || rc=$?
        chroot "$w" dkms status >>"$plog" 2>&1 || true
        umount "$w/dev/pts" "$w/proc"
        if [ "$rc" != 0 ]; then
            printf '\nmake-image: error: apt-get install of the packages failed; last lines of %s:\n' "$plog" >&2
            tail -n 30 "$plog" >&2; exit 1
        fi
        rm -rf "$w/tmp/viridian-debs" "$w/usr/sbin/policy-rc.d" "$w"/var/cache/apt/*.bin "$w"/var/log/apt/* \
            "$w"/var/cache/debconf/*-old "$w"/var/lib/dpkg/*-old "$w"/var/log/*.log
        # The layer: what the install added or changed (rsync leaves out files equal to the base's).
        logged "$plog" rsync -a --compare-dest="$base/" "$w/" "$pkgs/layer/"
        find "$pkgs/layer" -mindepth 1 -depth -type d -empty -delete   # directories rsync made for skipped files
        gone=$(rsync -a --dry-run --delete --itemize-changes "$w/" "$base/" | sed -n 's/^\*deleting //p' | head -n 5)
        [ -z "$gone" ] || printf 'make-image: note: the install removed files the base has (they stay in the guest): %s\n' "$gone" >&2
        # The same root after apt-get purge of the packages: what is left beside the base may only
        # be dpkg's and DKMS's bookkeeping (the purged test image boots from it).
        names=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Package; done | tr '\n' ' ')
        mount -t proc proc "$w/proc"
        rc=0
        chroot "$w" env DEBIAN_FRONTEND=noninteractive apt-get purge -y $names >>"$plog" 2>&1 || rc=$?
        umount "$w/proc"
        [ "$rc" = 0 ] || { tail -n 30 "$plog" >&2; die "apt-get purge $names failed in the root (log: $plog)"; }
        rm -rf "$w"/var/log/apt/* "$w"/var/cache/debconf/*-old "$w"/var/lib/dpkg/*-old "$w"/var/log/*.log "$w"/var/cache/apt/*.bin
        logged "$plog" rsync -a --compare-dest="$base/" "$w/" "$pkgs/purged/"
        find "$pkgs/purged" -mindepth 1 -depth -type d -empty -delete
        # (depmod's index, rewritten by DKMS on removal, is replaced by the top layer's anyway.)
        keep="^\./var/(lib/(dpkg|apt|dkms|systemd/deb-systemd-helper-enabled)|cache/apt)/|^\./$moddir/$release/modules\.[a-z.]+\$"
        left=$(cd "$pkgs/purged" && find . ! -type d | grep -vE "$keep" | head -n 10 || true)
        [ -z "$left" ] || die "apt-get purge $names left files behind: $left"
        rm -rf "$w"
        stamp_write packages "$pkgs_key"
        step_done "apt-get install (and a checked purge) of $(for d in "${debs[@]}"; do basename "$d"; done | tr "\n" " ")" \
            "$(pack_layer packages "$pkgs/layer" "$pkgs_key")"
    fi
    # DKMS's module for the guest kernel (the top layer's depmod needs it).
    ko=$(find "$pkgs/layer/$moddir/$release" -name 'viridian_glue.ko*' 2>/dev/null | head -n1)
    if [ -z "$ko" ] && printf '%s\n' "${debs[@]}" | grep -q viridian-glue-dkms; then
        die "DKMS built no viridian_glue.ko for $release (see $cache/logs/packages.log)"
    fi
    if [ -n "$ko" ]; then
        vermagic=$(modinfo -F vermagic "$ko")
        [ "${vermagic%% *}" = "$release" ] || die "DKMS's viridian_glue.ko is built for '${vermagic%% *}', not $release"
    fi
fi

# --- f. guest configuration, g. packing ------------------------------------------------------

# Writes the top layer into $1: everything that is not Debian's own, plus copies of the few
# Debian files the guest changes.
write_top() {
    local t=$1; local r=$t/$moddir/$release
    mkdir -p "$t"/etc/systemd/system/getty.target.wants "$t"/etc/{sysctl.d,viridian} "$t/root" "$r"

    echo viridian-guest > "$t/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tviridian-guest\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$t/etc/hosts"
    : > "$t/etc/fstab"                      # the root is the initramfs; nothing to mount
    cp -a "$base/etc/shadow" "$t/etc/shadow"
    sed -i 's/^root:[^:]*:/root::/' "$t/etc/shadow"   # empty root password

    # Root's shell on the serial console. Like debug-shell.service, systemd starts bash as a
    # login shell right on ttyS0 (its controlling terminal): no agetty, no login/PAM (they took
    # 2 s of the boot under TCG), no wait for udev to announce dev-ttyS0.device (devtmpfs has
    # /dev/ttyS0 from the start; udev's coldplug takes seconds). serial-getty@ttyS0 is masked.
    # The root password is empty anyway (login/su work too).
    cat > "$t/etc/systemd/system/viridian-console.service" <<'EOF'
[Unit]
Description=Root shell on the serial console ttyS0 (driven by scripts/guest/console.py)
After=getty-pre.target
Before=getty.target
IgnoreOnIsolate=yes
Conflicts=rescue.service
Before=rescue.service

[Service]
Environment=TERM=dumb HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
WorkingDirectory=/root
ExecStart=/bin/bash --login
Restart=always
RestartSec=0
StandardInput=tty
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=yes
TTYVHangup=yes
KillMode=process
IgnoreSIGPIPE=no
# bash ignores SIGTERM
KillSignal=SIGHUP

[Install]
WantedBy=getty.target
EOF
    ln -s ../viridian-console.service "$t/etc/systemd/system/getty.target.wants/viridian-console.service"
    ln -s /lib/systemd/system/multi-user.target "$t/etc/systemd/system/default.target"
    # Units that only slow the boot of a diskless, throw-away guest (or fail without a disk):
    # getty-static starts gettys on tty2-6 when there is no logind; the journal has nothing to
    # flush to; debootstrap created the system users; utmp, random seed, pstore, dm and the
    # periodic jobs are of no use here; loop and fuse load on first use of /dev/loop-control and
    # /dev/fuse; nothing is in modules-load.d; debugfs, tracefs, configfs, mqueue and hugetlbfs
    # can be mounted by hand (mount -t debugfs none /sys/kernel/debug). Each unit costs about a
    # second of CPU under TCG.
    local u
    for u in serial-getty@ttyS0.service systemd-user-sessions.service systemd-sysusers.service \
        systemd-remount-fs.service getty@tty1.service getty-static.service \
        systemd-journal-flush.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
        systemd-random-seed.service systemd-pstore.service modprobe@dm_mod.service \
        modprobe@efi_pstore.service systemd-timesyncd.service systemd-hwdb-update.service \
        ldconfig.service systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
        systemd-tmpfiles-clean.timer systemd-modules-load.service modprobe@configfs.service \
        modprobe@fuse.service modprobe@loop.service dev-hugepages.mount dev-mqueue.mount \
        sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
        sys-fs-fuse-connections.mount; do
        ln -s /dev/null "$t/etc/systemd/system/$u"
    done
    # systemd-networkd manages the network, so KVP IP injection goes through a network manager
    # (a .network file, networkctl over D-Bus). It manages only links a .network file names;
    # nothing waits for it at boot.
    mkdir -p "$t/etc/systemd/system/multi-user.target.wants" "$t/etc/systemd/system/sockets.target.wants"
    ln -sf /lib/systemd/system/systemd-networkd.service "$t/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /lib/systemd/system/systemd-networkd.socket "$t/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
    ln -sf /dev/null "$t/etc/systemd/system/systemd-networkd-wait-online.service"
    # Only emergency messages on the console once systemd-sysctl ran (console.py also runs
    # dmesg -n 1), so command output on the serial shell stays clean.
    echo 'kernel.printk = 1 4 1 7' > "$t/etc/sysctl.d/10-viridian-console.conf"

    # A shell console.py can drive: known prompt, no pager, no colours, no bracketed paste.
    cp -a "$base/root/." "$t/root/"
    touch "$t/root/.hushlogin"
    cat > "$t/root/.bashrc" <<'EOF'
# viridian test guest: root's shell on the serial console (driven by scripts/guest/console.py)
export TERM=dumb PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 LANG=C.UTF-8
unset HISTFILE
stty cols 512 rows 50 2>/dev/null
PS1='root@viridian-guest:\w# '
EOF
    printf '# ~/.profile: login shells read ~/.bashrc\n[ -n "$BASH" ] && . ~/.bashrc\n' > "$t/root/.profile"
    { if [ -f "$base/etc/inputrc" ]; then cat "$base/etc/inputrc"; fi
      echo 'set enable-bracketed-paste off'; } > "$t/etc/inputrc"

    # The agent comes from its package (unit, udev rule, conffile). The test configuration
    # replaces the conffile, as an administrator's edit would, and, for timesync = "clock", the
    # package's example drop-in grants the clock.
    if [ ${#debs[@]} -gt 0 ]; then
        cp "$agent_config" "$t/etc/viridian/agent.toml"
        local dropin="$pkgs/layer/usr/share/doc/viridian-agent/examples/timesync-clock.conf"
        if grep -qE '^timesync *= *"clock"' "$agent_config" && [ -f "$dropin" ]; then
            mkdir -p "$t/etc/systemd/system/viridian-agent.service.d"
            cp "$dropin" "$t/etc/systemd/system/viridian-agent.service.d/timesync-clock.conf"
        fi
    fi
    if [ ${#stage_debs[@]} -gt 0 ]; then
        mkdir -p "$t/root/debs"
        cp "${stage_debs[@]}" "$t/root/debs/"
    fi

    # depmod's output for the stock tree plus DKMS's module in updates/dkms (udev loads it for
    # PCI 1af4:1110 through modules.alias).
    local scratch=$t.depmod
    rm -rf "$scratch"; mkdir -p "$scratch/lib/modules"
    cp -al "$kmods" "$scratch/lib/modules/"
    if [ -n "$ko" ]; then
        mkdir -p "$scratch/lib/modules/$release/updates/dkms"
        cp "$ko" "$scratch/lib/modules/$release/updates/dkms/"
    fi
    # The VMBus core in extra/: it exports hv_vmbus's API with hv_vmbus's symbol versions, so with
    # hv_vmbus left out of the index the stock hv_* drivers depend on it (hv_vmbus.ko stays in the
    # modules layer, unindexed: it refuses to load off Hyper-V anyway).
    if [ -n "$vmbus_core" ]; then
        mkdir -p "$r/extra" "$scratch/lib/modules/$release/extra"
        cp "$vmbus_core" "$r/extra/viridian_vmbus.ko"
        cp "$vmbus_core" "$scratch/lib/modules/$release/extra/viridian_vmbus.ko"
        find "$scratch/lib/modules/$release/kernel/drivers/hv" -name 'hv_vmbus.ko*' -delete
        cat > "$t/etc/systemd/system/viridian-vmbus-core.service" <<'EOF'
[Unit]
Description=VMBus core for the kernel's own Hyper-V drivers (test guest, viridian.core=vmbus)
ConditionKernelCommandLine=viridian.core=vmbus
DefaultDependencies=no
After=systemd-udevd.service
Wants=systemd-udevd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/modprobe viridian_vmbus

[Install]
WantedBy=sysinit.target
EOF
        mkdir -p "$t/etc/systemd/system/sysinit.target.wants"
        ln -s ../viridian-vmbus-core.service "$t/etc/systemd/system/sysinit.target.wants/viridian-vmbus-core.service"
    fi
    depmod -b "$scratch" "$release"
    cp -a "$scratch/lib/modules/$release"/modules.* "$r/"
    rm -rf "$scratch"

    # Directories that exist in the base keep the base's mode and owner (/root is 0700).
    (cd "$t" && find . -mindepth 1 -type d) | while read -r d; do
        if [ -d "$base/$d" ]; then chmod --reference="$base/$d" "$t/$d"; chown --reference="$base/$d" "$t/$d"; fi
    done
}

step_start config
top_key="$release $(hash_files "$self" "$agent_config" "${stage_debs[@]}" ${ko:+"$ko"} ${vmbus_core:+"$vmbus_core"}) \
base=$(cat "$cache/base.stamp") kernel=$(cat "$cache/kernel.stamp") packages=$(cat "$cache/packages.stamp" 2>/dev/null || echo none) staged=${#stage_debs[@]}"
if stamp_ok top-pack "$top_key compress=$compress" "$cache/top.cpio$ext"; then
    step_done "cached" "$(size_of "$cache/top.cpio$ext")"
else
    rm -rf "$cache/top"
    write_top "$cache/top"
    step_done "hostname viridian-guest, root shell on ttyS0, agent.toml, ${#stage_debs[@]} staged packages, depmod" \
        "$(pack_layer top "$cache/top" "$top_key")"
    rm -rf "$cache/top"
fi

# The purged image (with packages only): the root after apt-get purge, without the test
# configuration; in $cache/purged/ (vmlinuz, initrd), for run-qemu.sh --image-dir.
if [ ${#debs[@]} -gt 0 ]; then
    step_start purged
    purged_key="$top_key purged"
    if ! stamp_ok top-purged-pack "$purged_key compress=$compress" "$cache/top-purged.cpio$ext"; then
        rm -rf "$cache/top-purged"
        (debs=() stage_debs=() ko= vmbus_core= && write_top "$cache/top-purged")
        pack_layer top-purged "$cache/top-purged" "$purged_key" >/dev/null
        rm -rf "$cache/top-purged"
    fi
    pack_layer packages-purged "$pkgs/purged" "$(cat "$cache/packages.stamp") purged" >/dev/null
    mkdir -p "$cache/purged"
    cat "$cache/base.cpio$ext" "$cache/modules.cpio$ext" "$cache/packages-purged.cpio$ext" "$cache/top-purged.cpio$ext" \
        > "$cache/purged/initrd.cpio$ext.tmp"
    mv "$cache/purged/initrd.cpio$ext.tmp" "$cache/purged/initrd.cpio$ext"
    for f in "$cache"/purged/initrd.cpio{,.gz,.lz4,.zst}; do [ "$f" = "$cache/purged/initrd.cpio$ext" ] || rm -f "$f"; done
    ln -f "$kdir/vmlinuz" "$cache/purged/vmlinuz"
    step_done "the root after apt-get purge: $cache/purged/initrd.cpio$ext" "$(size_of "$cache/purged/initrd.cpio$ext")"
else
    rm -rf "$cache/purged"
fi

step_start pack
initrd="$cache/initrd.cpio$ext"
layers=("$cache/base.cpio$ext" "$cache/modules.cpio$ext")
[ ${#debs[@]} = 0 ] || layers+=("$cache/packages.cpio$ext")
cat "${layers[@]}" "$cache/top.cpio$ext" > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
for f in "$cache"/initrd.cpio{,.gz,.lz4,.zst}; do [ "$f" = "$initrd" ] || rm -f "$f"; done   # other --compress
cp "$kdir/vmlinuz" "$cache/vmlinuz.tmp" && mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
step_done "$initrd (base + modules${debs:+ + packages} + top), $cache/vmlinuz ($(size_of "$cache/vmlinuz"))" "$(size_of "$initrd")"
printf '[make-image] total     %s s\n' "$(since "$t0")"
