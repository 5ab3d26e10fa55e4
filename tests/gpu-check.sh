#!/bin/sh
# make gpu-check: the one prepared run for a lent GPU machine. Runs every CUDA test
# against its CPU twin, sft-train on the GPU against the CPU, then the GPU benchmarks
# against PyTorch + transformers on the same card, and prints a short table — also
# written to $OUT/gpu-check.txt when $OUT is set. Uses the binaries of tests/gpu-bundle.sh
# in .gpu/ when they are there (the lent machines lack our build dependencies), else builds.
# Each step has its own time limit so the whole run stays under about 6 minutes.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTDIR=${OUT:-build}
mkdir -p "$OUTDIR"
out=$OUTDIR/gpu-check.txt
log=$OUTDIR/gpu-check.log
: >"$log"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
if [ -x .gpu/bin/sft-train ]; then
    B=$ROOT/.gpu
    [ -d .gpu/lib ] || tar -C .gpu -xJf .gpu/lib.tar.xz
else
    make -j"$(nproc)" BUILD=build/gpu CUDA_ARCHS="${arch:-90}" all >>"$log" 2>&1 || { echo "build failed"; tail -n 30 "$log"; exit 1; }
    B=$ROOT/build/gpu
fi
# cuBLAS from the toolkit or from PyTorch's wheels; carried libraries only fill gaps.
cublas=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 2>/dev/null | while read -r d; do
    [ -e "$d/libcublas.so.13" ] && echo "$d"; done | head -n 1)
[ -n "$cublas" ] || cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="${cublas:-}:${LD_LIBRARY_PATH:-}:$B/lib"
export PATH="$B/bin:$PATH"  # our jq with our libjq
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$out"; }
{
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    echo "binaries: $B; cublas: ${cublas:-not found}"
} | tee "$out"

echo "== CUDA tests against the CPU twins" | tee -a "$out"
for t in "$B"/tests/test_cuda_*; do
    name=$(basename "$t")
    timeout 90 "$t" >"$OUTDIR/$name.txt" 2>&1
    rc=$?
    cat "$OUTDIR/$name.txt" >>"$log"
    row "$name" "rc=$rc $(tail -n 1 "$OUTDIR/$name.txt" | sed 's/^# //')"
    grep -E '^(not ok|skip)|^# ' "$OUTDIR/$name.txt" | grep -v ' passed, ' | sed 's/^/    /' | tee -a "$out"
done
BIN=$B/bin timeout 120 sh tests/cli/test_sft_train_cuda.sh >"$OUTDIR/cli.txt" 2>&1
rc=$?
cat "$OUTDIR/cli.txt" >>"$log"
row "test_sft_train_cuda" "rc=$rc $(grep -c '^ok' "$OUTDIR/cli.txt") ok, $(grep -c '^not ok' "$OUTDIR/cli.txt") failed"
grep -E '^(not ok|skip|#)|^  ' "$OUTDIR/cli.txt" | head -n 30 | sed 's/^/    /' | tee -a "$out"

echo "== SFT step, seq 2048, thinkpipe (fp32 master, bf16 products) vs transformers + torch AdamW (bf16 autocast, SDPA)" |
    tee -a "$out"
cfgdir=tests/bench/configs  # Qwen2.5 shapes, random weights
field() { echo "$1" | tr ' ' '\n' | awk -v k="$2" 'prev == k { print; exit } { prev = $0 }'; }
for shape in "qwen2.5-0.5b 4" "qwen2.5-1.5b 2"; do
    set -- $shape
    cfg=$cfgdir/$1.json
    tp=$(timeout 90 "$B/bench/model_step" "$cfg" "$2" 2048 3 --device cuda --matmul bf16 2>>"$log" | tail -n 1)
    pt=$(PYTHONUNBUFFERED=1 timeout 90 python3 tests/bench/torch_gpu_step.py "$cfg" "$2" 2048 3 2>>"$log" | tail -n 1)
    echo "$1 B=$2: thinkpipe: ${tp:-failed}" >>"$log"
    echo "$1 B=$2: torch: ${pt:-failed}" >>"$log"
    row "$1 B=$2 T=2048 thinkpipe" "$(field "$tp" tokens/s) tok/s, $(field "$tp" devmem_mb) MB, MFU $(field "$tp" mfu)"
    row "$1 B=$2 T=2048 torch" "$(field "$pt" tokens/s) tok/s, $(field "$pt" devmem_mb) MB, MFU $(field "$pt" mfu)"
    a=$(field "$tp" tokens/s) b=$(field "$pt" tokens/s) ma=$(field "$tp" devmem_mb) mb=$(field "$pt" devmem_mb)
    if [ -n "$a" ] && [ -n "$b" ]; then
        row "$1 ratio thinkpipe/torch" "$(awk -v a="$a" -v b="$b" -v ma="$ma" -v mb="$mb" \
            'BEGIN { printf "tokens/s %.2fx, memory %.2fx", a / b, ma / mb }')"
    fi
done
echo "== where the device time goes (TP_PROFILE=1, qwen2.5-0.5b B=4 T=2048, 2 steps + warm-up)" | tee -a "$out"
TP_PROFILE=1 timeout 60 "$B/bench/model_step" "$cfgdir/qwen2.5-0.5b.json" 4 2048 2 --device cuda --matmul bf16 2>&1 |
    grep -E 'TP_PROFILE|calls|thinkpipe' | tee -a "$out"
echo "== done; full log in $log" | tee -a "$out"
