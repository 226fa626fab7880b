#!/usr/bin/env bash
# Eight partitions under storage and network load for a while (default 600 s), one worker process
# each: every control request must answer, no partition may stall, and each worker's RSS must stay
# within 10 % of what it was after the warm-up. Needs root (network namespaces, TAPs, FUSE-free:
# fio's nbd engine), fio, iperf3, and a release or debug build (BIN, default .build/release).
# Usage: sudo scripts/soak-workers.sh [SECONDS]
set -euo pipefail
SECONDS_TOTAL=${1:-600}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build/release}
N=8
WARMUP=60
DIR=$(mktemp -d /tmp/viridian-soak.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for i in $(seq 1 $N); do ip netns del vsh$i 2>/dev/null || true; ip netns del vsg$i 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "soak-workers: needs root (network namespaces and TAPs)" >&2; exit 2; }
for tool in fio iperf3; do command -v $tool >/dev/null || { echo "soak-workers: $tool is missing" >&2; exit 2; }; done

{
    echo "runtime_dir = \"$DIR\""
    echo "image_dir = \"$DIR/images\""
    for i in $(seq 1 $N); do
        ip netns add vsh$i; ip netns add vsg$i
        ip -n vsh$i link set lo up; ip -n vsg$i link set lo up
        cat <<TOML
[[partition]]
name = "p$i"
memory_mib = 256
echo_devices = 0
integration_services = ["heartbeat"]
[[partition.disk]]
path = "$DIR/images/p$i.img"
size_mib = 128
[[partition.nic]]
tap = "vh$i"
netns = "vsh$i"
TOML
    done
} > "$DIR/host.toml"
"$BIN/viridian-host" run --config "$DIR/host.toml" --log-level warning 2> "$DIR/host.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$DIR/host.sock" ] && break; sleep 0.1; done
for i in $(seq 1 $N); do
    cat > "$DIR/agent$i.toml" <<TOML
link = "unix:$DIR/p$i.sock"
state_dir = "$DIR/state$i"
export_dir = "$DIR/exports$i"
log_level = "warning"
timesync = "off"
network = true
nic_tap = "vg%d"
nic_netns = "vsg$i"
TOML
    "$BIN/viridian-agent" run --config "$DIR/agent$i.toml" 2> "$DIR/agent$i.log" &
    PIDS+=($!)
done
for i in $(seq 1 $N); do
    for _ in $(seq 150); do ip -n vsg$i link show vg0 >/dev/null 2>&1 && ls "$DIR/exports$i"/*lun0.sock >/dev/null 2>&1 && break; sleep 0.2; done
    ip -n vsh$i addr add 10.90.$i.1/24 dev vh$i; ip -n vsh$i link set vh$i up
    ip -n vsg$i addr add 10.90.$i.2/24 dev vg0; ip -n vsg$i link set vg0 up
    ip netns exec vsh$i iperf3 -s -1 -B 10.90.$i.1 >/dev/null 2>&1 &
    PIDS+=($!)
done
sleep 1
for i in $(seq 1 $N); do
    sock=$(ls "$DIR/exports$i"/*lun0.sock)
    fio --name=soak$i --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw=randrw --bs=16k --size=64M \
        --time_based --runtime="$SECONDS_TOTAL" --iodepth=4 --verify=crc32c --verify_fatal=1 --output="$DIR/fio$i.txt" >/dev/null 2>&1 &
    PIDS+=($!)
    ip netns exec vsg$i iperf3 -c 10.90.$i.1 -t "$SECONDS_TOTAL" -b 50M --logfile "$DIR/iperf$i.txt" >/dev/null 2>&1 &
    PIDS+=($!)
done
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status 2>/dev/null || echo 0; }
start=$(date +%s); declare -A base last; stalls=0; slowest=0
echo "soak: $N partitions, storage (fio randrw 16k QD4, crc32c verify) and network (iperf3 50 Mbit/s) for $SECONDS_TOTAL s"
while [ $(( $(date +%s) - start )) -lt "$SECONDS_TOTAL" ]; do
    sleep 30
    t0=$(date +%s%N)
    status=$("$BIN/viridian-host" status --runtime-dir "$DIR" --json) || { echo "status failed"; stalls=$((stalls + 1)); continue; }
    took=$(( ($(date +%s%N) - t0) / 1000000 )); [ $took -gt $slowest ] && slowest=$took
    attached=$(grep -c '"state" : "attached"' <<<"$status" || true)
    [ "$attached" = $N ] || { echo "only $attached of $N attached"; stalls=$((stalls + 1)); }
    line="t=$(( $(date +%s) - start ))s status ${took}ms RSS KiB:"
    for pid in $(grep -A8 '"worker"' <<<"$status" | grep -oE '"pid" : [0-9]+' | grep -oE '[0-9]+'); do
        r=$(rss $pid); line="$line $r"
        if [ $(( $(date +%s) - start )) -ge $WARMUP ] && [ -z "${base[$pid]:-}" ]; then base[$pid]=$r; fi
        last[$pid]=$r
    done
    echo "$line"
done
worst=0
for pid in "${!base[@]}"; do
    growth=$(( (${last[$pid]} - ${base[$pid]}) * 1000 / ${base[$pid]} ))
    [ ${growth#-} -gt ${worst#-} ] && worst=$growth
done
errors=$( (grep -lE "err= *[1-9]|verify:" "$DIR"/fio*.txt 2>/dev/null || true) | wc -l)
echo "soak: stalls $stalls, slowest status ${slowest} ms, fio runs with errors $errors, worst worker RSS change after warm-up $((worst / 10)).$(( ${worst#-} % 10 )) %"
[ $stalls = 0 ] && [ "$errors" = 0 ] && [ ${worst#-} -le 100 ]
