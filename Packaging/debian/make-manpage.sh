#!/bin/sh
# Prints a man page for BINARY: help2man of its --help, with each subcommand's --help as a
# section of its own. Usage: make-manpage.sh BINARY VERSION
set -eu
bin=$1 version=$2
name=$(basename "$bin")
extra=$(mktemp)
trap 'rm -f "$extra"' EXIT
subs=$("$bin" --help | awk '/^SUBCOMMANDS:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }')
for s in $subs; do
    printf '[SUBCOMMAND %s]\n' "$(echo "$s" | tr a-z A-Z)"
    printf '.nf\n'
    "$bin" help "$s" | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./'
    printf '.fi\n'
done > "$extra"
case $name in
    viridian-agent) files='/etc/viridian/agent.toml: configuration (TOML; every key is described there).
.br
/var/lib/viridian/agent: state (key-value pools, the device list of the running agent).
.br
/run/viridian/disks: NBD sockets of the synthetic disks.' ;;
    *) files='/etc/viridian/host.toml: configuration (TOML; every key is described there).
.br
/run/viridian: PartitionLink, ivshmem and status sockets.
.br
/var/lib/viridian/images: default disk images.' ;;
esac
printf '[FILES]\n%s\n' "$files" >> "$extra"
help2man --no-info --no-discard-stderr --version-string="$version" --section=1 \
    --name="$("$bin" --help | sed -n 's/^OVERVIEW: //p' | sed 's/\.$//')" \
    --include="$extra" "$bin"
