#!/usr/bin/env bash
# Unpacks the test tools that must not be installed on the machine into .cache/tools/:
#   chrony (chronyd, chronyc): installing the package would replace systemd-timesyncd and start
#   a daemon that steers this machine's clock; the time-sync test runs its own chronyd from here.
# The libraries they link against are installed by `make test-deps`. Cached: runs apt-get download
# only when the unpacked tree is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.cache/tools"
mkdir -p "$tools"
[ -e "$root/.cache/.gitignore" ] || echo '*' > "$root/.cache/.gitignore"

if [ -x "$tools/chrony/usr/sbin/chronyd" ] && [ -x "$tools/chrony/usr/bin/chronyc" ]; then
    echo "test-tools: chrony already unpacked in $tools/chrony"
    exit 0
fi
tmp=$(mktemp -d "$tools/chrony.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# apt-get download runs as the invoking user; as root apt's sandbox user cannot write here.
(cd "$tmp" && apt-get -q -o APT::Sandbox::User="$(id -un)" download chrony >/dev/null) || {
    apt-get update -qq && (cd "$tmp" && apt-get -q -o APT::Sandbox::User="$(id -un)" download chrony >/dev/null)
}
deb=$(ls "$tmp"/chrony_*.deb)
dpkg-deb -x "$deb" "$tmp/root"
missing=$(ldd "$tmp/root/usr/sbin/chronyd" | grep 'not found' || true)
[ -z "$missing" ] || { echo "test-tools: chronyd needs libraries that are not installed: $missing" >&2; exit 1; }
rm -rf "$tools/chrony"
mv "$tmp/root" "$tools/chrony"
echo "test-tools: unpacked $(basename "$deb") into $tools/chrony"
