#!/bin/sh
# make gpu-check: the one prepared run for a lent GPU machine. Builds for the
# card, runs every test (the CUDA ones compare against their CPU twins), runs the
# benchmarks, and prints a short table — also written to $OUT/gpu-check.txt when
# $OUT is set. Keep it well under the device time a session is lent.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-build}/gpu-check.txt
mkdir -p "$(dirname "$out")"
{
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
    make -j"$(nproc)" CUDA_ARCHS="${arch:-90}" all >/dev/null 2>build/gpu-build.log || { echo "build failed:"; tail -n 30 build/gpu-build.log; }
    echo "== tests (CUDA vs CPU twins included)"
    BUILD=build/release NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" CUDA_ARCHS="${arch:-90}" \
        sh tests/run.sh 2>&1 | grep -E '^(cuda|test_|tests:|not ok|skip|#)' 
    for t in build/release/tests/test_*; do "$t" 2>/dev/null | grep '^# cuda'; done
    echo "== benchmarks"
    make bench 2>&1 | tail -n 20
} 2>&1 | tee "$out"
