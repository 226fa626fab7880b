#!/usr/bin/env bash
# Builds the Debian packages viridian-agent, viridian-glue-dkms and viridian-host into dist/
# (or --out DIR) with dpkg-buildpackage and debhelper, then runs lintian on them.
#
# Usage: Packaging/build-debs.sh [options]        (make debs)
#   --revision N      Debian revision: the packages are VERSION-N (default 1). A higher revision
#                     of the same release is an upgrade (the packaging tests install one over another).
#   --out DIR         where the .debs go (default: <repo>/dist)
#   --no-lintian      skip lintian
#   --only PACKAGE    build just this package (e.g. viridian-agent; a quicker upgrade build)
#   --swift PATH      swift executable (default: swift on PATH)
#
# The version comes from the repository's VERSION file. The binaries are release builds with the
# Swift runtime linked statically (--static-swift-stdlib, scratch path .build-guest, shared with
# `make guest-agent`), so the packages depend only on what dpkg-shlibdeps finds.
# Needs: dpkg-dev, debhelper, dh-dkms, help2man, lintian (make debs installs them).
set -euo pipefail
umask 022
export LC_ALL=C.UTF-8

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
revision=1 out="$root/dist" lint=1 swift=${SWIFT:-swift} only=

die() { printf 'build-debs: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$self"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --revision) revision=${2:?--revision needs a number}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --no-lintian) lint=0; shift ;;
        --only) only=${2:?--only needs a package}; shift 2 ;;
        --swift) swift=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) printf 'build-debs: unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
done
[[ $revision =~ ^[1-9][0-9]*$ ]] || die "--revision takes a positive number, not '$revision'"
packages="viridian-agent viridian-glue-dkms viridian-host"
if [ -n "$only" ]; then
    [[ " $packages " == *" $only "* ]] || die "--only takes one of: $packages"
    packages=$only
fi

version=$(tr -d ' \n' < "$root/VERSION")
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VERSION holds '$version', not MAJOR.MINOR.PATCH"
missing=()
tools="dpkg-buildpackage:dpkg-dev dh:debhelper dh_dkms:dh-dkms help2man:help2man"
[ "$lint" = 0 ] || tools="$tools lintian:lintian"
for tool in $tools; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} = 0 ] || die "missing tools; install with: apt-get install ${missing[*]}"

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
t0=$(now)
say() { printf '[build-debs] %s\n' "$*"; }

# 1. The binaries.
products=$(printf '%s\n' $packages | grep -v dkms || true)
for product in $products; do
    t=$(now)
    # (The linker's note on mktemp in the static Foundation is the toolchain's, not ours.)
    # -z now: all symbols bound at start, so the GOT can be read-only (lintian's hardening-no-bindnow).
    "$swift" build -c release --product "$product" --static-swift-stdlib --scratch-path "$root/.build-guest" \
        -Xlinker -z -Xlinker now --package-path "$root" 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]|^Building|^Build of product|the use of .mktemp. is dangerous' || true
    [ -x "$root/.build-guest/release/$product" ] || die "swift build did not produce $product"
    say "$product: release build, static Swift runtime ($(since "$t") s)"
done

# 2. A source tree for dpkg-buildpackage: debian/ from Packaging/debian, the staged binaries,
# KernelGlue's sources and the configuration files.
work="$root/.build-deb"
src="$work/viridian-$version"
rm -rf "$work"
mkdir -p "$src/bin" "$src/Packaging" "$out"
cp -a "$here/debian" "$src/debian"
for product in $products; do cp "$root/.build-guest/release/$product" "$src/bin/"; done
cp "$here"/{agent.toml,host.toml,timesync-clock.conf,children.toml,10-viridian-tap.link} "$src/Packaging/"
# KernelGlue: the sources only (a developer's built .o/.ko files stay out).
(cd "$root" && find KernelGlue \( -name '*.c' -o -name '*.h' -o -name Kbuild -o -name Makefile -o -name README.md \) \
    -print0 | cpio --null -pdm --quiet "$src")
[ -f "$src/KernelGlue/include/uapi/viridian_glue.h" ] || die "KernelGlue/include/uapi/viridian_glue.h is missing"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
stamp=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
{
    printf 'viridian (%s-%s) unstable; urgency=medium\n\n' "$version" "$revision"
    printf '  * Release %s, packaging revision %s, from commit %s.\n\n' "$version" "$revision" "$commit"
    printf ' -- Viridian developers <viridian@example.org>  %s\n' "$(date -R -u -d "@$stamp")"
} > "$src/debian/changelog"

# 3. dpkg-buildpackage (binary packages only; Rules-Requires-Root: no, so no fakeroot).
t=$(now)
log="$work/dpkg-buildpackage.log"
# --only: debhelper acts on that package alone (DH_OPTIONS reaches every dh_* command).
if ! (cd "$src" && if [ -n "$only" ]; then export DH_OPTIONS="-p$only"; fi && dpkg-buildpackage -b -us -uc) > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "dpkg-buildpackage failed (whole log: $log)"
fi
debs=()
for p in $packages; do
    f=$(ls "$work/${p}_${version}-${revision}_"*.deb 2>/dev/null | head -n1)
    [ -n "$f" ] || die "dpkg-buildpackage made no $p package (log: $log)"
    rm -f "$out/${p}_${version}-${revision}_"*.deb
    mv "$f" "$out/"
    debs+=("$out/$(basename "$f")")
done
say "dpkg-buildpackage: ${#debs[@]} packages ($(since "$t") s)"
for f in "${debs[@]}"; do
    printf '  %-48s %7s KiB, installed %7s KiB, depends: %s\n' "$(basename "$f")" "$(( $(stat -c %s "$f") / 1024 ))" \
        "$(dpkg-deb -f "$f" Installed-Size)" "$(dpkg-deb -f "$f" Depends)"
done

# 4. lintian: errors and warnings fail the build (overrides in debian/*.lintian-overrides say why).
if [ "$lint" = 1 ]; then
    t=$(now)
    lintian_args=(--fail-on error,warning --display-level '>=warning')
    [ "$(id -u)" != 0 ] || lintian_args+=(--allow-root)
    if ! lintian "${lintian_args[@]}" "${debs[@]}"; then
        die "lintian reports errors or warnings (above)"
    fi
    say "lintian: no errors or warnings ($(since "$t") s)"
fi
say "done in $(since "$t0") s: ${debs[*]}"
