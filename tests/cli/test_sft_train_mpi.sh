#!/bin/sh
# sft-train under mpirun: 2 ranks, each taking half of every update's records, print the
# same losses and gradient norms (within 1e-5 relative) as one process with the same
# global batch; only rank 0 writes metrics and the model; the runs end with the same
# weights. Skipped when OpenMPI's mpirun is not installed.
. "$(dirname "$0")/lib.sh"
ST="$BIN/sft-train"
TK="$BIN/tokenize"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"

if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$ST" | grep -q libmpi; then
    echo "skip - two-ranks-match-one-process: no mpirun, or sft-train built without MPI"
    finish
    exit
fi
# CI runs as root in a container: OpenMPI wants to be told that is fine, and has no
# single-copy shared-memory mechanism there.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1
# Under the sanitizers, OpenMPI's own allocations (its plugins, unloaded at exit) read as
# leaks; ours are checked by every single-process run.
[ "${SAN:-0}" = 1 ] && export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

sh "$ROOT/samples/addition/make.sh" 203 6 >"$TMP/train.jsonl"  # 203: the last update of an epoch is short
"$TK" -q -t "$TINY" --template chatml "$TMP/train.jsonl" -o "$TMP/train.stream"
OPTS="--init $CFG --tokenizer $TINY -d $TMP/train.stream --lr 3e-3 --schedule cosine --warmup 2 --steps 30
      --weight-decay 0.1 --seed 11 -j 1 --device cpu --eval $TMP/train.stream --eval-every 10"
# shellcheck disable=SC2086
"$ST" -q $OPTS --micro-batch 4 --grad-accum 2 -o "$TMP/one" >"$TMP/one.jsonl" 2>"$TMP/one.err"
# shellcheck disable=SC2086
expect two-ranks-run 0 "2 ranks" mpirun -np 2 "$ST" $OPTS --micro-batch 2 --grad-accum 2 -o "$TMP/two"
cp "$TMP/stdout" "$TMP/two.jsonl"
[ "$(wc -l <"$TMP/two.jsonl")" -eq 30 ] && ok one-metrics-line-per-update || not_ok one-metrics-line-per-update
if jq -s -e --slurpfile b "$TMP/one.jsonl" '
    [., $b] | transpose | length == 30 and
    all(.[0].step == .[1].step and .[0].tokens == .[1].tokens and .[0].epoch == .[1].epoch and
        ((.[0].loss - .[1].loss) | fabs) <= 1e-5 * .[1].loss and
        ((.[0].grad_norm - .[1].grad_norm) | fabs) <= 1e-5 * .[1].grad_norm and
        ((.[0].eval_loss // 0) - (.[1].eval_loss // 0) | fabs) <= 1e-5 * (.[1].eval_loss // 1))' \
    "$TMP/two.jsonl" >/dev/null; then
    ok two-ranks-match-one-process
else
    not_ok two-ranks-match-one-process
    paste "$TMP/two.jsonl" "$TMP/one.jsonl" | head -n 5 >&2
fi
echo "# step 30 loss / eval loss: 1 process $(jq -s -c '.[-1] | [.loss, .eval_loss]' "$TMP/one.jsonl")," \
     "2 ranks $(jq -s -c '.[-1] | [.loss, .eval_loss]' "$TMP/two.jsonl")" >&2
# eval_loss (every 10 updates, the ranks evaluating halves of the set) checks the weights:
# the same, up to float summation order.
[ "$(jq -s '[.[] | select(.eval_loss)] | length' "$TMP/two.jsonl")" -eq 3 ] && ok eval-sharded || not_ok eval-sharded
[ -f "$TMP/two/model.safetensors" ] && ok rank0-saved-model || not_ok rank0-saved-model
finish
