#!/bin/sh
# Runs every unit test binary and CLI test script; each prints "ok - NAME",
# "not ok - NAME" or "skip - NAME: why" per test. Ends with one line
# "tests: N passed, N failed, N skipped" and a non-zero status if anything failed.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
SAN=${SAN:-0}
export BUILD SAN BIN="$PWD/$BUILD/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0 skip=0

if [ -n "${NVCC:-}" ]; then
    echo "cuda: built kernels/cuda with $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/nvcc \1/p') for$(for a in ${CUDA_ARCHS:-}; do printf ' sm_%s' "$a"; done)"
else
    echo "cuda: nvcc not found; CPU-only build (CUDA tests are reported as skipped)"
fi

count() {  # count OUTPUT_FILE STATUS NAME
    p=$(grep -c '^ok - ' "$1")
    f=$(grep -c '^not ok - ' "$1")
    s=$(grep -c '^skip - ' "$1")
    grep -E '^(not ok|skip) - ' "$1"
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "not ok - $3: exited with status $2"
        f=1
    fi
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
}

# After one run, its output in $tmp/out and stderr in $tmp/err: prints "NAME: summary" (the
# output's last line, or with "oks" the number of ok lines), counts its results (a name
# "sim:..." marks each test "sim:" too) and shows the stderr of a failed run.
finish() {  # finish NAME STATUS last|oks
    case $1 in sim:*) sed -i "s/^\(ok\|not ok\|skip\) - /\1 - sim:/" "$tmp/out" ;; esac
    if [ "$3" = last ]; then echo "$1: $(tail -n 1 "$tmp/out" | sed 's/^# //')"
    else echo "$1: $(grep -c '^ok - ' "$tmp/out") ok"; fi
    count "$tmp/out" "$2" "$1"
    if [ "$2" -ne 0 ]; then sed 's/^/    /' "$tmp/err" | head -n 40; fi
}

# SIM_ONLY=1 (make sim-check): only the simulator's runs below.
[ "${SIM_ONLY:-0}" = 1 ] || for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    "$t" >"$tmp/out" 2>"$tmp/err"
    rc=$?  # (before any command substitution: bash sets $? from those)
    finish "$(basename "$t")" $rc last
done

[ "${SIM_ONLY:-0}" = 1 ] || for s in tests/cli/test_*.sh; do
    sh "$s" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    finish "$(basename "$s" .sh)" $rc oks
done

# The CUDA tests again on tests/sim's simulator (kernels/cuda compiled for the CPU, no GPU
# needed): the kernels' indexing, layouts, barriers and plumbing checked on every machine
# with the CUDA headers. The default run takes the three quickest; make sim-check takes all
# (SIM_TESTS) and the CUDA CLI tests with the programs built on it (SIM_CLI_TESTS). Not under
# SAN=1: the simulator's hand-switched stacks confuse AddressSanitizer.
sim_tests=${SIM_TESTS:-test_sim_self test_cuda_ops test_cuda_decode test_cuda_attention}
if [ -n "${NVCC:-}" ] && [ "$SAN" != 1 ]; then
    if BUILD=$BUILD sh tests/sim/build.sh >"$tmp/simbuild" 2>&1; then
        for name in $sim_tests; do
            "build/sim/tests/$name" >"$tmp/out" 2>"$tmp/err"
            finish "sim:$name" $? last
        done
        # the programs built on the simulator, through the CUDA CLI tests (SIM_CLI_TESTS)
        for name in ${SIM_CLI_TESTS:-}; do
            BIN="$PWD/build/sim/bin" sh "tests/cli/$name.sh" >"$tmp/out" 2>"$tmp/err"
            finish "sim:$name" $? oks
        done
    else
        echo "not ok - sim: tests/sim/build.sh failed"
        sed 's/^/    /' "$tmp/simbuild" | tail -n 30
        fail=$((fail + 1))
    fi
fi

echo "tests: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
