#!/usr/bin/env bash
# Starts viridian-host on its embedded defaults, joins it with viridian-agent, lists the VMBus
# devices, moves echo traffic, shows the host's status, and stops the host cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(swift build --show-bin-path)
dir=$(mktemp -d /tmp/viridian-demo.XXXXXX)
"$bin/viridian-host" run --runtime-dir "$dir" &
host=$!
trap 'kill -TERM $host 2>/dev/null || true; wait $host 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$dir/guest1.sock" ] && break; sleep 0.1; done
link="unix:$dir/guest1.sock"
echo "== viridian-agent list -v"
"$bin/viridian-agent" list -v --link "$link" --log-level warning
echo "== viridian-agent echo (20000 packets over the echo channel)"
"$bin/viridian-agent" echo --packets 20000 --link "$link" --log-level warning
echo "== viridian-host status"
"$bin/viridian-host" status --runtime-dir "$dir"
echo "== in-process loopback (viridian-host demo)"
"$bin/viridian-host" demo --packets 10000
