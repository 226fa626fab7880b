#!/usr/bin/env bash
# Builds viridian-fuzz with libFuzzer and AddressSanitizer and runs its targets, several at once.
#   scripts/fuzz.sh [--seconds N] [--jobs J] [TARGET...]     (default: every target, 600 s, 2 at once)
# Corpora grow in .cache/fuzz/corpus/TARGET (git-ignored); a crashing input lands in
# .cache/fuzz/crashes/TARGET/ and fails the run. Inputs that once crashed are kept in
# Fuzz/regressions/TARGET/ (committed): each run replays them first, and `make test` replays them
# with the plain build. Prints one line per target: executions, coverage, corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=600
JOBS=2
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        -h|--help) sed -n 2,8p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
BUILD=.build/fuzz
echo "fuzz: building viridian-fuzz with -sanitize=fuzzer,address (release)" >&2
swift build -c release --product viridian-fuzz --build-path "$BUILD" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING >&2
BIN="$BUILD/release/viridian-fuzz"
if [ ${#TARGETS[@]} = 0 ]; then
    mapfile -t TARGETS < <(VIRIDIAN_FUZZ_TARGET= "$BIN" -runs=0 2>&1 | awk '/^[a-z][a-z0-9-]+  /{print $1}')
fi
[ ${#TARGETS[@]} -gt 0 ] || { echo "fuzz: no targets found" >&2; exit 2; }
mkdir -p .cache/fuzz/logs
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
run_one() {
    local t=$1 corpus=.cache/fuzz/corpus/$1 crashes=.cache/fuzz/crashes/$1 log=.cache/fuzz/logs/$1.log
    mkdir -p "$corpus" "$crashes"
    local seeds=()
    [ -d "Fuzz/regressions/$t" ] && seeds=("Fuzz/regressions/$t")
    VIRIDIAN_FUZZ_TARGET=$t "$BIN" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$crashes/" "$corpus" "${seeds[@]}" > "$log" 2>&1
    local rc=$?
    local execs cov corp
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corp=$(ls "$corpus" | wc -l)
    printf '%-22s %s s  %12s execs  cov %6s  corpus %6s  %s\n' "$t" "$SECONDS_EACH" "${execs:-?}" "${cov:-?}" "$corp" \
        "$([ $rc = 0 ] && echo "no crash" || echo "CRASH (exit $rc): $(ls "$crashes" | head -1) — see $log")"
    return $rc
}
export -f run_one
export BIN SECONDS_EACH
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
