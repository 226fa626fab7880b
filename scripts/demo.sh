#!/usr/bin/env bash
# Starts viridian-host on its embedded defaults, joins it with viridian-agent, lists the VMBus
# devices, moves echo traffic, runs the integration services and the disk export, shows the host's
# status, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(swift build --show-bin-path)
dir=$(mktemp -d /tmp/viridian-demo.XXXXXX)
"$bin/viridian-host" run --runtime-dir "$dir" --image-dir "$dir" --log-level warning &
host=$!
agent=
# The agent leaves first (UNLOAD needs the host), then the host stops.
trap '[ -n "$agent" ] && { kill -TERM $agent 2>/dev/null; wait $agent 2>/dev/null; }; kill -TERM $host 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/guest1.sock" ] && break; sleep 0.1; done
link="unix:$dir/guest1.sock"
echo "== viridian-agent list -v"
"$bin/viridian-agent" list -v --link "$link" --log-level warning
echo "== viridian-agent echo (20000 packets over the echo channel)"
"$bin/viridian-agent" echo --packets 20000 --link "$link" --log-level warning
printf 'link = "%s"\ntimesync = "off"\nstate_dir = "%s/state"\nexport_dir = "%s/disks"\npoweroff_command = "echo guest would power off"\n' \
    "$link" "$dir" "$dir" > "$dir/agent.toml"
echo "== viridian-agent run (integration services), then viridian-host status"
"$bin/viridian-agent" run --config "$dir/agent.toml" --log-level warning &
agent=$!
for _ in $(seq 100); do "$bin/viridian-host" status --runtime-dir "$dir" | grep -q "heartbeat ok" && break; sleep 0.1; done
"$bin/viridian-host" status --runtime-dir "$dir"
echo "== viridian-agent disk list (the default 64 MiB disk, exported over NBD)"
for _ in $(seq 100); do [ -f "$dir/state/disks.json" ] && break; sleep 0.1; done
"$bin/viridian-agent" disk list --config "$dir/agent.toml"
nbdinfo --size "nbd+unix:///?socket=$(ls "$dir"/disks/*lun0.sock)" 2>/dev/null || true
echo "== viridian-host kvp get guest1"
"$bin/viridian-host" kvp get guest1 --runtime-dir "$dir"
echo "== viridian-host shutdown guest1"
"$bin/viridian-host" shutdown guest1 --reason demo --runtime-dir "$dir"
echo "== in-process loopback (viridian-host demo)"
"$bin/viridian-host" demo --packets 10000
