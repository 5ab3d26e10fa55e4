#!/bin/sh
# make bench: every benchmark, one after another (they print their own tables).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
echo "machine: $(nproc) cores, $(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -n 1)"
for b in "$BUILD"/bench/bench_* tests/bench/bench_*.sh; do
    [ -x "$b" ] && "$b" "$@"
done
