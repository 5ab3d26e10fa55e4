#!/bin/sh
# make gpu-check: the one prepared run for a lent GPU machine. Runs every CUDA test
# against its CPU twin, sft-train on the GPU against the CPU, then the GPU benchmarks
# against PyTorch + transformers on the same card, and prints a short table — also
# written to $OUT/gpu-check.txt when $OUT is set. Uses the binaries of tests/gpu-bundle.sh
# in .gpu/ when they are there (the lent machines lack our build dependencies), else builds.
# Each step has its own time limit; each section's heading says how long the run has taken.
# A failed test is run again under each knob that turns an unrun path off (triage, below).
# CUDA_TESTS="test_cuda_x ..." and CLI_TESTS="test_y ..." run only those (PDL_TESTS, run again
# under TP_CUDA_PDL=late and =0: test_cuda_ops unless given); SKIP_SFT_BENCH=1 leaves out the SFT step benchmarks and the profile (when device time is short); SKIP_PROFILE=1 the ncu kernel profile.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTDIR=${OUT:-build}
mkdir -p "$OUTDIR"
out=$OUTDIR/gpu-check.txt
log=$OUTDIR/gpu-check.log
: >"$log"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.')
if [ -f .gpu/bundle.tar.xz ]; then
    B=$ROOT/.gpu
    [ -x .gpu/bin/sft-train ] || tar -C .gpu -xJf .gpu/bundle.tar.xz
else
    make -j"$(nproc)" BUILD=build/gpu CUDA_ARCHS="${arch:-90}" all >>"$log" 2>&1 || { echo "build failed"; tail -n 30 "$log"; exit 1; }
    B=$ROOT/build/gpu
fi
# cuBLAS from the toolkit or from PyTorch's wheels; carried libraries only fill gaps.
cublas=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 2>/dev/null | while read -r d; do
    [ -e "$d/libcublas.so.13" ] && echo "$d"; done | head -n 1)
[ -n "$cublas" ] || cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
# NCCL (loaded at run time by sft-train): the toolkit's, else PyTorch's wheel's.
nccl=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/lib/x86_64-linux-gnu 2>/dev/null | while read -r d; do
    [ -e "$d/libnccl.so.2" ] && echo "$d"; done | head -n 1)
[ -n "$nccl" ] || nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="${cublas:-}:${nccl:-}:${LD_LIBRARY_PATH:-}:$B/lib"
export PATH="$B/bin:$PATH"  # our jq with our libjq
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$out"; }
# A section's heading, with the seconds the run has taken so far (the whole should stay
# under 8 minutes; these say where to trim).
T0=$(date +%s)
section() { echo "== $1 [$(($(date +%s) - T0)) s in]" | tee -a "$out"; }
# A failed test again under each knob that turns one of the unrun paths off (GPU_NOTES.md,
# "Not yet run"): the knob it passes under names the code to read first, without another
# device call. A test that timed out is not rerun (a hang would cost its limit a knob), nor
# is a test whose limit would take the run past TRIAGE_UNTIL seconds (default 360).
KNOBS="TP_CUDA_ATTENTION=wmma TP_CUDA_ACT16=0 TP_CUDA_QKV_JOIN=0 TP_CUDA_LT=0 TP_CUDA_PDL=0 TP_CUDA_GRAPHS=0"
triage() {  # name rc limit command...
    name=$1 rc=$2 limit=$3
    shift 3
    [ "$rc" = 0 ] && return
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        row "  $name timed out" "not rerun under the knobs"
        return
    fi
    for knob in $KNOBS; do
        if [ $(($(date +%s) - T0 + limit)) -gt "${TRIAGE_UNTIL:-360}" ]; then
            row "  $name again" "not rerun under $knob and after: could take the run past ${TRIAGE_UNTIL:-360} s"
            return
        fi
        env "$knob" timeout "$limit" "$@" >"$OUTDIR/$name.$knob.txt" 2>&1
        krc=$?
        cat "$OUTDIR/$name.$knob.txt" >>"$log"
        row "  $name again with $knob" "rc=$krc $(grep -c '^not ok' "$OUTDIR/$name.$knob.txt") failed"
        [ "$krc" = 0 ] || grep -E '^not ok' "$OUTDIR/$name.$knob.txt" | head -n 5 | sed 's/^/      /' | tee -a "$out"
    done
}
{
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    echo "binaries: $B; cublas: ${cublas:-not found}; nccl: ${nccl:-not found}"
} | tee "$out"

section "CUDA tests against the CPU twins"
for t in ${CUDA_TESTS:-"$B"/tests/test_cuda_*}; do
    [ -x "$t" ] || t=$B/tests/$t
    name=$(basename "$t")
    t1=$(date +%s)
    timeout 90 "$t" >"$OUTDIR/$name.txt" 2>&1
    rc=$?
    cat "$OUTDIR/$name.txt" >>"$log"
    row "$name" "rc=$rc $(tail -n 1 "$OUTDIR/$name.txt" | sed 's/^# //') ($(($(date +%s) - t1)) s)"
    [ "$name" = test_cuda_attention ] && attention_rc=$rc
    grep -E '^(not ok|skip)|^# ' "$OUTDIR/$name.txt" | grep -v ' passed, ' | sed 's/^/    /' | tee -a "$out"
    triage "$name" "$rc" 60 "$t"
done
# The kernels' other launch orders: the same tests with TP_CUDA_PDL=late and =0 (the flag
# is read once a process, so each is a run of its own). A test that fails in one mode only
# points at launch ordering rather than arithmetic. PDL_TESTS="" skips them.
for mode in late 0; do
    for t in ${PDL_TESTS-test_cuda_ops}; do
        TP_CUDA_PDL=$mode timeout 90 "$B/tests/$t" >"$OUTDIR/$t.pdl-$mode.txt" 2>&1
        rc=$?
        cat "$OUTDIR/$t.pdl-$mode.txt" >>"$log"
        row "$t TP_CUDA_PDL=$mode" "rc=$rc $(tail -n 1 "$OUTDIR/$t.pdl-$mode.txt" | sed 's/^# //')"
        grep -E '^not ok' "$OUTDIR/$t.pdl-$mode.txt" | sed 's/^/    /' | tee -a "$out"
    done
done
# The bf16 products through cublasGemmEx (TP_CUDA_LT=0: no cuBLASLt, bias and residual by
# kernels of their own, bf16 outputs by GemmEx), the path taken where cuBLASLt has no
# algorithm for a shape.
for t in ${PDL_TESTS-test_cuda_ops}; do
    TP_CUDA_LT=0 timeout 90 "$B/tests/$t" >"$OUTDIR/$t.lt-0.txt" 2>&1
    rc=$?
    cat "$OUTDIR/$t.lt-0.txt" >>"$log"
    row "$t TP_CUDA_LT=0" "rc=$rc $(tail -n 1 "$OUTDIR/$t.lt-0.txt" | sed 's/^# //')"
    grep -E '^not ok' "$OUTDIR/$t.lt-0.txt" | sed 's/^/    /' | tee -a "$out"
done
for t in ${CLI_TESTS:-test_sft_train_cuda test_rollout_cuda}; do
    t1=$(date +%s)
    BIN=$B/bin timeout 150 sh tests/cli/$t.sh >"$OUTDIR/$t.txt" 2>&1
    rc=$?
    cat "$OUTDIR/$t.txt" >>"$log"
    row "$t" "rc=$rc $(grep -c '^ok' "$OUTDIR/$t.txt") ok, $(grep -c '^not ok' "$OUTDIR/$t.txt") failed ($(($(date +%s) - t1)) s)"
    grep -E '^(not ok|skip|#)|^  ' "$OUTDIR/$t.txt" | head -n 30 | sed 's/^/    /' | tee -a "$out"
    triage "$t" "$rc" 150 env "BIN=$B/bin" sh "tests/cli/$t.sh"
done

cfgdir=tests/bench/configs  # Qwen2.5 shapes, random weights
field() { echo "$1" | tr ' ' '\n' | awk -v k="$2" 'prev == k { print; exit } { prev = $0 }'; }
# An SFT row: speed, memory, MFU, and the last step's loss (random weights and tokens: about
# ln(vocabulary) = 11.9; far from it, or nan, and the speed means nothing).
sft_row() {
    [ -n "$1" ] || { echo failed; return; }
    echo "$(field "$1" tokens/s) tok/s, $(field "$1" devmem_mb) MB, MFU $(field "$1" mfu), loss $(field "$1" loss)"
}
sft_ratio() {  # name thinkpipe-line torch-line
    a=$(field "$2" tokens/s) b=$(field "$3" tokens/s) ma=$(field "$2" devmem_mb) mb=$(field "$3" devmem_mb)
    [ -n "$a" ] && [ -n "$b" ] && row "$1 ratio thinkpipe/torch" "$(awk -v a="$a" -v b="$b" -v ma="$ma" -v mb="$mb" \
        'BEGIN { printf "tokens/s %.2fx, memory %.2fx", a / b, ma / mb }')"
}
if [ "${SKIP_SFT_BENCH:-0}" != 1 ]; then
section "SFT step, seq 2048, thinkpipe (fp32 master, bf16 products) vs transformers + torch AdamW (bf16 autocast, SDPA)"
for shape in "qwen2.5-0.5b 4" "qwen2.5-1.5b 2"; do
    set -- $shape
    cfg=$cfgdir/$1.json
    tp=$(timeout 90 "$B/bench/model_step" "$cfg" "$2" 2048 3 --device cuda --matmul bf16 2>>"$log" | tail -n 1)
    pt=$(PYTHONUNBUFFERED=1 timeout 90 python3 tests/bench/torch_gpu_step.py "$cfg" "$2" 2048 3 2>>"$log" | tail -n 1)
    echo "$1 B=$2: thinkpipe: ${tp:-failed}" >>"$log"
    echo "$1 B=$2: torch: ${pt:-failed}" >>"$log"
    row "$1 B=$2 T=2048 thinkpipe" "$(sft_row "$tp")"
    row "$1 B=$2 T=2048 torch" "$(sft_row "$pt")"
    # the same step with the WMMA attention kernels (attention_tc.cu) instead of mma.sync (the
    # default), when their test passed (a kernel that hangs would cost 90 s a shape)
    if [ "${attention_rc:-1}" = 0 ]; then
        tm=$(TP_CUDA_ATTENTION=wmma timeout 90 "$B/bench/model_step" "$cfg" "$2" 2048 3 --device cuda \
            --matmul bf16 2>>"$log" | tail -n 1)
        echo "$1 B=$2: thinkpipe, TP_CUDA_ATTENTION=wmma: ${tm:-failed}" >>"$log"
        row "$1 B=$2 T=2048 thinkpipe, wmma attention" "$(sft_row "$tm")"
    fi
    # the same with the activations in fp32 (the attention block's and the MLP's; as before mlp.cu and
    # attn.cu): what their bf16 storage gains
    if [ "$1" = qwen2.5-0.5b ]; then
        tf=$(TP_CUDA_ACT16=0 timeout 90 "$B/bench/model_step" "$cfg" "$2" 2048 3 --device cuda --matmul bf16 \
            2>>"$log" | tail -n 1)
        echo "$1 B=$2: thinkpipe, TP_CUDA_ACT16=0: ${tf:-failed}" >>"$log"
        row "$1 B=$2 T=2048 thinkpipe, activations fp32" "$(sft_row "$tf")"
    fi
    sft_ratio "$1" "$tp" "$pt"
done
# 1.5B again with 8 micro-batches a step (16 sequences, 32K tokens: an SFT run's global batch,
# not one micro-batch): clipping and AdamW (about 46 GB of fp32 state read and written at 1.5B)
# once per 8 forward and backward passes, on both sides. The MFU target is read here too.
cfg=$cfgdir/qwen2.5-1.5b.json
tp=$(timeout 90 "$B/bench/model_step" "$cfg" 2 2048 3 --device cuda --matmul bf16 --accum 8 2>>"$log" | tail -n 1)
pt=$(PYTHONUNBUFFERED=1 timeout 120 python3 tests/bench/torch_gpu_step.py "$cfg" 2 2048 3 989 8 2>>"$log" | tail -n 1)
echo "qwen2.5-1.5b B=2 accum 8: thinkpipe: ${tp:-failed}; torch: ${pt:-failed}" >>"$log"
row "qwen2.5-1.5b B=2 x 8 micro-batches thinkpipe" "$(sft_row "$tp")"
row "qwen2.5-1.5b B=2 x 8 micro-batches torch" "$(sft_row "$pt")"
sft_ratio "qwen2.5-1.5b x 8" "$tp" "$pt"
fi
section "decode, qwen2.5-0.5b shape: thinkpipe engine (bf16 products) vs transformers generate (bf16, SDPA)"
for b in "$B"/bench/bench_cuda_decode "$B"/bench/bench_cuda_sample; do
    [ -x "$b" ] && timeout 60 "$b" 2>>"$log" | sed 's/^/    /' | tee -a "$out"
done
cfg=$cfgdir/qwen2.5-0.5b.json
for spec in "1 1 --greedy" "64 8" "256 8"; do
    set -- $spec
    tp=$(timeout 120 "$B/bench/engine_bench" "$cfg" "$1" "$2" 128 128 --device cuda ${3:-} 2>>"$log" | tail -n 1)
    echo "engine $spec: ${tp:-failed}" >>"$log"
    row "decode batch $1 (groups of $2) thinkpipe" "$(field "$tp" tok/s) tok/s (steps alone $(field "$tp" decode_tok/s))"
    [ "$1" = 1 ] && row "  batch 1 vs bandwidth roofline" "$(awk -v a="$(field "$tp" decode_tok/s)" \
        -v r="$(field "$tp" roofline_tok/s)" -v w="$(field "$tp" weights_gb)" -v c="$(field "$tp" copy_gb/s)" \
        'BEGIN { if (r > 0) printf "%.1f%% of %.0f tok/s (%.2f GB of weights, copy %.0f GB/s)", 100 * a / r, r, w, c }')"
    eval "tp_$1=\$(field \"\$tp\" tok/s)"
    # the same without CUDA graphs (every op launched from the host each step)
    [ "$1" = 256 ] || {
        ng=$(TP_CUDA_GRAPHS=0 timeout 120 "$B/bench/engine_bench" "$cfg" "$1" "$2" 128 128 --device cuda ${3:-} \
            2>>"$log" | tail -n 1)
        row "  same without CUDA graphs" "$(field "$ng" tok/s) tok/s (steps alone $(field "$ng" decode_tok/s))"
    }
    # the same without programmatic dependent launch (each kernel waits for the last to end)
    [ "$1" = 1 ] && {
        np=$(TP_CUDA_PDL=0 timeout 120 "$B/bench/engine_bench" "$cfg" "$1" "$2" 128 128 --device cuda ${3:-} \
            2>>"$log" | tail -n 1)
        row "  same without dependent launch" "$(field "$np" tok/s) tok/s (steps alone $(field "$np" decode_tok/s))"
        nl=$(TP_CUDA_PDL=late timeout 120 "$B/bench/engine_bench" "$cfg" "$1" "$2" 128 128 --device cuda ${3:-} \
            2>>"$log" | tail -n 1)
        row "  same, each kernel triggering after its wait" \
            "$(field "$nl" tok/s) tok/s (steps alone $(field "$nl" decode_tok/s))"
    }
done
# one after the other on the card: the same GPU, never both at once
PYTHONUNBUFFERED=1 timeout 240 python3 tests/bench/torch_gpu_generate.py "$cfg" 1:1:128:128:greedy 64:8:128:128 \
    256:8:128:128 >"$OUTDIR/torch_generate.txt" 2>>"$log"
cat "$OUTDIR/torch_generate.txt" >>"$log"
for n in 1 64 256; do
    pt=$(grep "batch $n " "$OUTDIR/torch_generate.txt" | tail -n 1)
    a=$(eval echo "\${tp_$n:-}") b=$(field "$pt" tok/s)
    row "decode batch $n transformers" "${b:-failed} tok/s"
    [ -n "$a" ] && [ -n "$b" ] && row "decode batch $n ratio thinkpipe/transformers" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2fx", a / b }')"
done
section "where a batch-1 decode step's device time goes (TP_PROFILE=1: op by op, no graphs, 32 tokens)"
TP_PROFILE=1 timeout 60 "$B/bench/engine_bench" "$cfg" 1 1 128 32 --device cuda --greedy 2>&1 |
    grep -E 'TP_PROFILE|calls' | tee -a "$out"
[ "${SKIP_SFT_BENCH:-0}" = 1 ] || {
section "where the device time goes (TP_PROFILE=1, qwen2.5-0.5b B=4 T=2048, 2 steps + warm-up)"
TP_PROFILE=1 timeout 60 "$B/bench/model_step" "$cfgdir/qwen2.5-0.5b.json" 4 2048 2 --device cuda --matmul bf16 2>&1 |
    grep -E 'TP_PROFILE|calls|thinkpipe' | tee -a "$out"
# torch's step of the same shape under torch.profiler, its kernels' time by kind: which kind of
# work our step loses (or wins) on, beside the table above
section "where torch's device time goes (torch.profiler, the same shape, one step)"
TORCH_PROFILE=1 PYTHONUNBUFFERED=1 timeout 90 python3 tests/bench/torch_gpu_step.py "$cfgdir/qwen2.5-0.5b.json" 4 2048 \
    1 2>&1 | tee -a "$log" | grep -E '^torch profile' | tee -a "$out"
}
if [ "${SKIP_PROFILE:-0}" != 1 ]; then
    section "a batch-1 decode step kernel by kernel (ncu, tests/gpu-profile.sh)"
    OUT=$OUTDIR B=$B COUNT=${COUNT:-240} timeout 150 sh tests/gpu-profile.sh >/dev/null 2>&1
    sed -n '1,24p' "$OUTDIR/gpu-profile.txt" 2>/dev/null | tee -a "$out"
fi
section "done; full log in $log"
