#!/bin/sh
# sft-train --device cuda: 20 updates follow the CPU's loss curve (fp32 products within
# 1e-4, bf16 within 2e-2), a resumed GPU run repeats the uninterrupted one bit for bit, a
# checkpoint written from the GPU continues on the CPU, and without a GPU --device cuda is
# a clear error. The GPU checks are reported as skipped on machines without one.
. "$(dirname "$0")/lib.sh"
ST="$BIN/sft-train"
TK="$BIN/tokenize"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"

sh "$ROOT/samples/addition/make.sh" 300 4 >"$TMP/train.jsonl"
"$TK" -q -t "$TINY" --template chatml "$TMP/train.jsonl" -o "$TMP/train.stream"
INIT="--init $CFG --tokenizer $TINY"
OPTS="-d $TMP/train.stream --lr 3e-3 --schedule cosine --warmup 2 --micro-batch 8
      --grad-accum 2 --steps 20 --weight-decay 0.1 --seed 5 -q"

# shellcheck disable=SC2086
if ! "$ST" $INIT $OPTS --steps 1 --device cuda -o "$TMP/probe" >/dev/null 2>"$TMP/probe.err"; then
    gpu_probe_failed "$TMP/probe.err" loss-curve-fp32 loss-curve-bf16 resume-on-gpu-exact \
        gpu-checkpoint-continues-on-cpu nccl-world-of-one-same-updates
    finish
    exit
fi

# close NAME A.jsonl B.jsonl TOL: every step's loss within TOL relative.
close() {
    if jq -s -e --slurpfile b "$3" --argjson tol "$4" '
        [., $b] | transpose | map(select(.[0].step != null)) | length > 0 and
        all(((.[0].loss - .[1].loss) | fabs) <= $tol * (.[1].loss | fabs))' "$2" >/dev/null; then
        ok "$1"
    else
        not_ok "$1"
        paste "$2" "$3" | head -n 20 >&2
    fi
}

# shellcheck disable=SC2086
"$ST" $INIT $OPTS --device cpu -o "$TMP/cpu" >"$TMP/cpu.jsonl"
# shellcheck disable=SC2086
"$ST" $INIT $OPTS --device cuda --matmul fp32 --save-every 10 -o "$TMP/fp32" >"$TMP/fp32.jsonl"
# shellcheck disable=SC2086
"$ST" $INIT $OPTS --device cuda --matmul bf16 -o "$TMP/bf16" >"$TMP/bf16.jsonl"
close loss-curve-fp32 "$TMP/fp32.jsonl" "$TMP/cpu.jsonl" 1e-4
close loss-curve-bf16 "$TMP/bf16.jsonl" "$TMP/cpu.jsonl" 2e-2
echo "# cpu / cuda fp32 / cuda bf16 loss at step 20: $(jq -s -r '.[-1].loss' "$TMP/cpu.jsonl") /" \
     "$(jq -s -r '.[-1].loss' "$TMP/fp32.jsonl") / $(jq -s -r '.[-1].loss' "$TMP/bf16.jsonl")" >&2

# Resume on the GPU from checkpoint-10: steps 11..20 print what the uninterrupted run printed.
# shellcheck disable=SC2086
"$ST" $OPTS --device cuda --matmul fp32 --resume "$TMP/fp32/checkpoint-10" -o "$TMP/resumed" 2>"$TMP/err" |
    jq -c '{step, loss, lr, grad_norm}' >"$TMP/resumed.jsonl"
jq -c 'select(.step > 10) | {step, loss, lr, grad_norm}' "$TMP/fp32.jsonl" >"$TMP/tail.jsonl"
[ -s "$TMP/tail.jsonl" ] && same resume-on-gpu-exact "$TMP/resumed.jsonl" "$TMP/tail.jsonl" || not_ok resume-on-gpu-exact
# The same checkpoint continues on the CPU, within the fp32 tolerance.
# shellcheck disable=SC2086
"$ST" $OPTS --device cpu --resume "$TMP/fp32/checkpoint-10" -o "$TMP/oncpu" >"$TMP/oncpu.jsonl" 2>"$TMP/err"
jq -c 'select(.step > 10)' "$TMP/fp32.jsonl" >"$TMP/tail_full.jsonl"
close gpu-checkpoint-continues-on-cpu "$TMP/oncpu.jsonl" "$TMP/tail_full.jsonl" 1e-4

# TP_NCCL=1: the gradients of a one-GPU run go through NCCL's all-reduce (a world of one):
# the same updates, bit for bit, and the log names NCCL.
LOUD=$(echo "$OPTS" | sed 's/ -q//')
# shellcheck disable=SC2086
TP_NCCL=1 "$ST" $INIT $LOUD --device cuda --matmul bf16 -o "$TMP/nccl" 2>"$TMP/nccl.err" |
    jq -c '{step, loss, grad_norm}' >"$TMP/nccl.jsonl"
echo "# $(grep -o 'NCCL [0-9.]*' "$TMP/nccl.err")" >&2
jq -c '{step, loss, grad_norm}' "$TMP/bf16.jsonl" >"$TMP/bf16.short"
if [ -s "$TMP/nccl.jsonl" ] && cmp -s "$TMP/nccl.jsonl" "$TMP/bf16.short" && grep -q "with NCCL" "$TMP/nccl.err"; then ok nccl-world-of-one-same-updates; else
    not_ok nccl-world-of-one-same-updates
    head -n 5 "$TMP/nccl.err" >&2
fi
finish
