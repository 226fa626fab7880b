#!/usr/bin/env bash
# Boots the QEMU test guest built by make-image.sh (TCG), exec'ing QEMU so the caller's PID is QEMU's.
#
# Usage: scripts/guest/run-qemu.sh [options] [-- extra QEMU arguments]
#   --ram-file PATH        guest RAM is this existing file (shared mapping, share=on), so the host
#                          can map the guest's memory; empty (QEMU grows it) or at least --memory
#                          MiB (QEMU refuses a smaller one)
#   --memory MIB           guest RAM (default 1024)
#   --vps N                virtual processors (default 2)
#   --ivshmem-socket PATH  add an ivshmem-doorbell PCI device (1af4:1110) served by the
#                          ivshmem server listening on PATH
#   --vectors N            MSI-X vectors of that device (default 1)
#   --console-socket PATH  serial console on a Unix socket server at PATH (for console.py);
#                          default: the serial console on stdio (Ctrl-A X quits)
#   --log FILE             also copy the serial output to FILE
#   --qmp-socket PATH      QMP monitor on a Unix socket server at PATH
#   --append TEXT          more kernel command-line arguments
#   --image-dir DIR        where make-image.sh put the guest (its --cache; default <repo>/.cache/guest)
#   --kernel FILE          default: DIR/vmlinuz
#   --initrd FILE          default: the DIR/initrd.cpio* make-image.sh wrote
#   --dry-run              print the QEMU command line instead of running it
#
# The guest powers off with `poweroff` (QEMU exits 0); a reboot or a kernel panic (panic=-1)
# also ends QEMU (-no-reboot).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
image="$root/.cache/guest"

mem=1024 vps=2 ram_file= ivsh= vectors=1 con= log= qmp= append= dry=0
kernel= initrd=

die() { printf 'run-qemu: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --ram-file) ram_file=${2:?}; shift 2 ;;
        --memory) mem=${2:?}; shift 2 ;;
        --vps) vps=${2:?}; shift 2 ;;
        --ivshmem-socket) ivsh=${2:?}; shift 2 ;;
        --vectors) vectors=${2:?}; shift 2 ;;
        --console-socket) con=${2:?}; shift 2 ;;
        --log) log=${2:?}; shift 2 ;;
        --qmp-socket) qmp=${2:?}; shift 2 ;;
        --append) append=${2:?}; shift 2 ;;
        --image-dir) image=${2:?}; shift 2 ;;
        --kernel) kernel=${2:?}; shift 2 ;;
        --initrd) initrd=${2:?}; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        *) printf 'run-qemu: unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
done

[ -n "$kernel" ] || kernel="$image/vmlinuz"
if [ -z "$initrd" ]; then
    for f in "$image"/initrd.cpio{.lz4,.gz,.zst,}; do [ -f "$f" ] && { initrd=$f; break; }; done
fi
[[ $mem =~ ^[0-9]+$ && $vps =~ ^[0-9]+$ && $vectors =~ ^[0-9]+$ ]] || die "--memory, --vps and --vectors take numbers"
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no guest image (${kernel}, ${initrd:-$image/initrd.cpio*}); run scripts/guest/make-image.sh"

# Serial output copy: QEMU opens (truncates) the log, path must not contain commas.
logopt=
if [ -n "$log" ]; then
    [[ $log != *,* ]] || die "--log path must not contain ','"
    logopt=",logfile=$log"
fi

# TCG (no usable KVM here). Flags chosen for boot time (measured): -cpu qemu64 boots about 3 s
# faster than -cpu max (fewer CPU-feature modules; -svm keeps kvm_amd from loading), no default
# devices (no NIC, VGA, floppy, CD), no HPET. Multi-threaded TCG: one host thread per VP.
args=(
    -accel tcg,thread=multi
    -cpu qemu64,-svm
    -smp "$vps"
    -m "${mem}M"
    -nodefaults -no-user-config -display none -vga none
    -no-reboot
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 rdinit=/sbin/init panic=-1${append:+ $append}"
)
if [ -n "$ram_file" ]; then
    # The host created the file; QEMU opens it (it does not create or unlink an existing path).
    [ -f "$ram_file" ] || die "--ram-file $ram_file does not exist (the host creates it)"
    [[ $ram_file != *,* ]] || die "--ram-file path must not contain ','"
    args+=(-machine pc,hpet=off,memory-backend=ram
           -object "memory-backend-file,id=ram,size=${mem}M,mem-path=$ram_file,share=on")
else
    args+=(-machine pc,hpet=off)
fi
if [ -n "$con" ]; then
    [[ $con != *,* ]] || die "--console-socket path must not contain ','"
    args+=(-chardev "socket,id=con,path=$con,server=on,wait=off$logopt" -serial chardev:con)
else
    args+=(-chardev "stdio,id=con,mux=on,signal=off$logopt" -serial chardev:con -mon chardev=con)
fi
if [ -n "$ivsh" ]; then
    [ -S "$ivsh" ] || die "--ivshmem-socket $ivsh is not a socket (start the ivshmem server first)"
    args+=(-chardev "socket,id=ivsh,path=$ivsh" -device "ivshmem-doorbell,chardev=ivsh,vectors=$vectors")
fi
if [ -n "$qmp" ]; then
    args+=(-qmp "unix:$qmp,server=on,wait=off")
fi
args+=("$@")

if [ "$dry" = 1 ]; then
    printf '%q ' qemu-system-x86_64 "${args[@]}"; echo
    exit 0
fi
exec qemu-system-x86_64 "${args[@]}"
