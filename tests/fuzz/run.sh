#!/bin/sh
# make fuzz: runs each libFuzzer target for FUZZ_SECONDS, starting from the
# committed seed corpus (copied, so the repository's corpus does not grow).
# A crash leaves its input in build/fuzz/ and makes this exit non-zero.
set -u
cd "$(dirname "$0")/../.."
FUZZ_BUILD=${FUZZ_BUILD:-build/fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
status=0
# Full unwinding on malloc, so the suppression can see frames inside libjq (built without frame pointers).
export ASAN_OPTIONS="fast_unwind_on_malloc=0:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0"
for f in "$FUZZ_BUILD"/fuzz_*; do
    [ -x "$f" ] || continue
    name=$(basename "$f" | sed 's/^fuzz_//')
    work="$FUZZ_BUILD/corpus/$name"
    mkdir -p "$work"
    cp -n tests/fuzz/corpus/"$name"/* "$work"/ 2>/dev/null
    echo "fuzz: $name for ${FUZZ_SECONDS}s"
    if "$f" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$FUZZ_BUILD/$name-" "$work" >"$FUZZ_BUILD/$name.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$FUZZ_BUILD/$name.log")
        cov=$(grep -o 'cov: [0-9]*' "$FUZZ_BUILD/$name.log" | tail -n 1)
        echo "fuzz: $name: ok, $runs runs, $cov, corpus $(ls "$work" | wc -l) inputs"
    else
        echo "fuzz: $name: FAILED, see $FUZZ_BUILD/$name.log"
        grep -E 'ERROR|SUMMARY|==[0-9]+==' "$FUZZ_BUILD/$name.log" | head -n 20
        status=1
    fi
done
exit $status
