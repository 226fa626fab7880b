#!/usr/bin/env bash
# `make guest`: viridian-host serves a QEMU partition, Debian's stock kernel boots in QEMU (TCG),
# KernelGlue and viridian-agent join it, and the guest's VMBus devices and the host's status are shown.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "$root" && swift build --show-bin-path)
dir=$(mktemp -d /tmp/viridian-guest.XXXXXX)
ram=/dev/shm/viridian-demo-$$.ram
host= qemu=
cleanup() {
    [ -n "$qemu" ] && kill -KILL "$qemu" 2>/dev/null || true
    [ -n "$host" ] && kill -TERM "$host" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir" "$ram"
}
trap cleanup EXIT
cat > "$dir/host.toml" <<TOML
runtime_dir = "$dir"
image_dir = "$dir/images"
[[partition]]
name = "guest1"
carrier = "qemu"
memory_mib = 1024
vps = 2
echo_devices = 0
ram_file = "$ram"
TOML
console() { python3 "$here/console.py" --socket "$dir/console.sock" "$@"; }
status() { "$bin/viridian-host" status --runtime-dir "$dir"; }

echo "== viridian-host run (partition guest1, carrier qemu, 1024 MiB, 2 VPs)"
"$bin/viridian-host" run --config "$dir/host.toml" --log-level notice 2> "$dir/host.log" &
host=$!
for _ in $(seq 100); do [ -S "$dir/guest1.ivshmem" ] && break; sleep 0.1; done
[ -S "$dir/guest1.ivshmem" ] || { cat "$dir/host.log"; exit 1; }
start=$(date +%s)
echo "== booting Debian's cloud kernel under QEMU (software emulation; about 30 s)"
"$here/run-qemu.sh" --ram-file "$ram" --memory 1024 --vps 2 --ivshmem-socket "$dir/guest1.ivshmem" --vectors 32 \
    --console-socket "$dir/console.sock" --log "$dir/serial.log" > "$dir/qemu.log" 2>&1 &
qemu=$!
for _ in $(seq 100); do [ -S "$dir/console.sock" ] && break; sleep 0.1; done
console wait-login --timeout 240 >/dev/null || { echo "no login prompt"; tail -20 "$dir/serial.log"; exit 1; }
echo "   login after $(( $(date +%s) - start )) s"
echo "== waiting for the agent (systemd starts it when udev sees /dev/viridian-glue0)"
for _ in $(seq 240); do status | grep -q "heartbeat ok" && break; sleep 0.5; done
echo "   heartbeat ok after $(( $(date +%s) - start )) s"
echo "== in the guest: uname -r; lsmod | grep viridian; viridian-agent list --running"
console run --timeout 60 -- 'uname -r; lsmod | grep viridian; viridian-agent list --running'
echo "== viridian-host status"
status
echo "== viridian-host kvp get guest1"
"$bin/viridian-host" kvp get guest1 --runtime-dir "$dir"
echo "== viridian-host shutdown guest1 (systemd powers the guest off; QEMU exits)"
"$bin/viridian-host" shutdown guest1 --reason demo --runtime-dir "$dir"
for _ in $(seq 120); do kill -0 "$qemu" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$qemu" 2>/dev/null; then echo "QEMU did not exit"; exit 1; fi
qemu=
echo "== done in $(( $(date +%s) - start )) s"
