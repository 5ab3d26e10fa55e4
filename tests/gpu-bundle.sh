#!/bin/sh
# Builds what tests/gpu-check.sh runs, for sm_80 and sm_90, into .gpu/ (ignored by git):
# the CUDA tests, sft-train, tokenize, rollout, the benchmarks, jq, and the shared libraries
# they need beyond glibc and CUDA. The lent GPU machines run a different image without
# our Debian build dependencies (jq, oniguruma, utf8proc, libarchive headers), so the
# binaries are built here and carried there: run this, then call the device with
# carry [".gpu"] and `sh tests/gpu-check.sh`.
set -eu
cd "$(dirname "$0")/.."
make -j"$(nproc)" BUILD=build/gpu CUDA_ARCHS="80 90" all >/dev/null
rm -rf .gpu
mkdir -p .gpu/bin .gpu/tests .gpu/bench .gpu/lib
cp build/gpu/bin/sft-train build/gpu/bin/tokenize build/gpu/bin/rollout .gpu/bin/
cp "$(command -v jq)" .gpu/bin/
cp build/gpu/tests/test_cuda_* .gpu/tests/
cp build/gpu/bench/model_step build/gpu/bench/engine_bench build/gpu/bench/bench_cuda_decode \
    build/gpu/bench/bench_cuda_sample .gpu/bench/
strip .gpu/bin/* .gpu/tests/* .gpu/bench/*
for f in .gpu/bin/* .gpu/tests/* .gpu/bench/*; do ldd "$f"; done | awk '$3 ~ /^\// { print $3 }' | sort -u |
    grep -vE '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcublas|libcublasLt)\.so' |
    while read -r lib; do cp -L "$lib" .gpu/lib/; done
# Everything in one xz archive: ICU's data alone is 31 MB, each CUDA binary ~7 MB, and what
# travels to the device (with the working tree) is limited to 64 MiB. gpu-check unpacks it.
tar -C .gpu -cJf .gpu/bundle.tar.xz bin tests bench lib && rm -rf .gpu/bin .gpu/tests .gpu/bench .gpu/lib
du -sh .gpu
