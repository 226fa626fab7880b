#!/usr/bin/env bash
# Checks KernelGlue: a W=1 build and a sparse pass against every installed Debian
# amd64 header flavour, and checkpatch on every source file. Any warning fails.
#
#   scripts/kernelglue-check.sh                      all checks (CI runs it as root)
#   scripts/kernelglue-check.sh --ko-for KDIR OUTDIR only build viridian_glue.ko and
#                                                    viridian_vmbus.ko against KDIR,
#                                                    copy them to OUTDIR
#
# viridian_vmbus exports hv_vmbus's API; its symbol versions must be hv_vmbus's (from KDIR's
# Module.symvers), or the kernel's hv_storvsc, hv_netvsc and hv_utils refuse it: checked too.
#
# Builds happen in temporary copies of KernelGlue/, so the source tree stays clean.
# checkpatch.pl comes from Debian's linux-source-6.1 and is kept in .cache/checkpatch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/KernelGlue"
cache="$root/.cache/checkpatch"
packages=(linux-headers-cloud-amd64 linux-headers-amd64 sparse make gcc xz-utils perl)
jobs=$(nproc 2>/dev/null || echo 1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

die() {
	echo "kernelglue: $*" >&2
	exit 1
}

# build KDIR COPY LOG [MAKE ARGS...]: a fresh copy of KernelGlue/ at COPY, built against KDIR.
build() {
	local kdir=$1 copy=$2 log=$3
	shift 3
	rm -rf "$copy"
	cp -a "$src" "$copy"
	make -C "$copy" -j"$jobs" KDIR="$kdir" "$@" >"$log" 2>&1
}

if [[ ${1:-} == --ko-for ]]; then
	[[ $# -eq 3 ]] || die "usage: $0 --ko-for KDIR OUTDIR"
	kdir=$2 outdir=$3
	[[ -f $kdir/Makefile ]] || die "$kdir is not a kernel build directory (no Makefile)"
	if ! build "$kdir" "$work/ko" "$work/ko.log"; then
		cat "$work/ko.log" >&2
		die "the build against $kdir failed"
	fi
	mkdir -p "$outdir"
	cp "$work/ko/viridian_glue.ko" "$work/ko/viridian_vmbus.ko" "$outdir/"
	echo "kernelglue: $outdir/viridian_glue.ko and viridian_vmbus.ko built against $kdir"
	exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--ko-for KDIR OUTDIR]"

start=$SECONDS
apt_updated=
apt_update() {
	[[ -n $apt_updated ]] && return 0
	apt-get update -qq >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log" >&2; die "apt-get update failed"; }
	apt_updated=1
}

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "kernelglue: installing ${missing[*]}"
	apt_update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
		>"$work/apt-install.log" 2>&1 || { cat "$work/apt-install.log" >&2; die "apt-get install failed"; }
fi

if [[ ! -f $cache/checkpatch.pl || ! -f $cache/spelling.txt || ! -f $cache/const_structs.checkpatch ]]; then
	echo "kernelglue: fetching checkpatch.pl from linux-source-6.1 into $cache"
	mkdir -p "$work/dl"
	# apt-get download writes into the current directory.
	if ! (cd "$work/dl" && apt-get download linux-source-6.1) >"$work/dl.log" 2>&1; then
		apt_update
		(cd "$work/dl" && apt-get download linux-source-6.1) >"$work/dl.log" 2>&1 ||
			{ cat "$work/dl.log" >&2; die "apt-get download linux-source-6.1 failed"; }
	fi
	deb=("$work"/dl/linux-source-6.1_*.deb)
	members=(checkpatch.pl spelling.txt const_structs.checkpatch)
	dpkg-deb --fsys-tarfile "${deb[0]}" | tar -xO ./usr/src/linux-source-6.1.tar.xz |
		tar -xJ -C "$work/dl" "${members[@]/#/linux-source-6.1/scripts/}"
	mkdir -p "$cache"
	for m in "${members[@]}"; do
		cp "$work/dl/linux-source-6.1/scripts/$m" "$cache/$m"
	done
	dpkg-deb -f "${deb[0]}" Version >"$cache/VERSION"
	rm -rf "$work/dl"
fi

passed=0
failed=0
report() { # report OK|FAIL TEXT [LOG]: one summary line; a failure also shows what it found
	if [[ $1 == OK ]]; then
		passed=$((passed + 1))
		echo "kernelglue: ok   $2"
	else
		failed=$((failed + 1))
		echo "kernelglue: FAIL $2"
		[[ -n ${3:-} ]] && sed 's/^/    /' "$3"
	fi
	return 0
}

flavours=0
for kdir in /usr/src/linux-headers-*-amd64; do
	[[ -f $kdir/Makefile ]] || continue
	flavours=$((flavours + 1))
	flavour=${kdir#/usr/src/linux-headers-}
	copy="$work/$flavour"
	log="$work/$flavour.build.log"

	if ! build "$kdir" "$copy" "$log" W=1; then
		report FAIL "W=1 build against $flavour: make failed" "$log"
		continue
	fi
	n=$(grep -c 'warning:' "$log" || true)
	if ((n)); then
		report FAIL "W=1 build against $flavour: $n warnings" "$log"
	elif ! grep -aq 'alias=pci:v00001AF4d00001110' "$copy/viridian_glue.ko"; then
		report FAIL "W=1 build against $flavour: no PCI alias for 1af4:1110 in viridian_glue.ko"
	else
		report OK "W=1 build against $flavour: 0 warnings"
	fi

	# Every symbol viridian_vmbus exports, with hv_vmbus's CRC for it.
	log="$work/$flavour.crc.log"
	awk '$3 ~ /viridian_vmbus$/ { print $2, $1 }' "$copy/Module.symvers" | sort >"$work/ours"
	awk '$3 == "drivers/hv/hv_vmbus" { print $2, $1 }' "$kdir/Module.symvers" | sort >"$work/theirs"
	join -a 1 -e missing -o 0,1.2,2.2 "$work/ours" "$work/theirs" | awk '$2 != $3' >"$log"
	n=$(wc -l <"$work/ours")
	if ((!n)) || [[ -s $log ]]; then
		report FAIL "symbol versions against $flavour: $(wc -l <"$log") of $n exports differ from hv_vmbus's (symbol, ours, theirs)" "$log"
	else
		report OK "symbol versions against $flavour: $n exports, each with hv_vmbus's CRC"
	fi

	# C=2 runs sparse on every source file; the same W=1 keeps make from rebuilding.
	log="$work/$flavour.sparse.log"
	if ! make -C "$copy" KDIR="$kdir" W=1 C=2 >"$log" 2>&1; then
		report FAIL "sparse against $flavour: make failed" "$log"
		continue
	fi
	n=$(grep -c 'CHECK ' "$log" || true)
	w=$(grep -cE 'warning:|error:' "$log" || true)
	if ((w || !n)); then
		report FAIL "sparse against $flavour: $w warnings in $n files" "$log"
	else
		report OK "sparse against $flavour: 0 warnings in $n files"
	fi
done
((flavours)) || report FAIL "no kernel headers under /usr/src/linux-headers-*-amd64"

log="$work/checkpatch.log"
files=()
while IFS= read -r f; do files+=("$f"); done < <(cd "$src" && find . -name '*.[ch]' -printf '%P\n' | sort)
: >"$log"
for f in "${files[@]}"; do
	(cd "$src" && perl "$cache/checkpatch.pl" --no-tree -f --terse --no-summary "$f") >>"$log" 2>&1 || true
done
e=$(grep -c ': ERROR:' "$log" || true)
w=$(grep -c ': WARNING:' "$log" || true)
if ((e || w || !${#files[@]})); then
	report FAIL "checkpatch --no-tree -f ($(cat "$cache/VERSION")), ${#files[@]} files: $e errors, $w warnings" "$log"
else
	report OK "checkpatch --no-tree -f ($(cat "$cache/VERSION")), ${#files[@]} files: 0 errors, 0 warnings"
fi

echo "kernelglue: checks took $((SECONDS - start)) s"
echo "kernelglue: $passed passed, $failed failed"
((failed == 0))
