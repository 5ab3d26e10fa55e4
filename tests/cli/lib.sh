# Helpers for CLI tests: each check prints "ok - NAME" or "not ok - NAME".
# $BIN is the directory of the built programs (set by tests/run.sh).
set -u
: "${BIN:=$(cd "$(dirname "$0")/../.." && pwd)/build/release/bin}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0

ok() { echo "ok - $1"; }
not_ok() { echo "not ok - $1"; failures=$((failures + 1)); }

# expect NAME STATUS FRAGMENT CMD...: runs CMD, checks its exit status and that
# stderr contains FRAGMENT (empty FRAGMENT: anything).
expect() {
    name=$1 status=$2 fragment=$3
    shift 3
    "$@" >"$TMP/stdout" 2>"$TMP/stderr"
    rc=$?
    if [ "$rc" -ne "$status" ]; then
        not_ok "$name"
        echo "  $name: exit status $rc, expected $status; stderr: $(cat "$TMP/stderr")" >&2
    elif [ -n "$fragment" ] && ! grep -qF -- "$fragment" "$TMP/stderr"; then
        not_ok "$name"
        echo "  $name: stderr '$(cat "$TMP/stderr")' lacks '$fragment'" >&2
    else
        ok "$name"
    fi
}

# same NAME FILE_A FILE_B: the two files are byte-identical.
same() {
    if cmp -s "$2" "$3"; then ok "$1"; else
        not_ok "$1"
        echo "  $1: $2 and $3 differ" >&2
    fi
}

finish() { [ "$failures" -eq 0 ]; }

# gpu_probe_failed ERRFILE CHECK...: after a --device cuda probe run failed with stderr in
# ERRFILE. Without a GPU (a clear error) the CHECKs are reported as skipped; any other
# failure is one. Either way the caller then finishes: `gpu_probe_failed ...; finish; exit`.
gpu_probe_failed() {
    errfile=$1
    shift
    if grep -qE "no CUDA GPU is visible|no CUDA support" "$errfile"; then
        ok no-gpu-is-a-clear-error
        for t in "$@"; do echo "skip - $t: no GPU on this machine"; done
    else
        not_ok cuda-probe-run
        cat "$errfile" >&2
    fi
}
