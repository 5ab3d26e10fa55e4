#!/bin/sh
# rollout --device cuda: greedy tokens equal the CPU's (first 32, fp32 products; bf16
# agreement printed), sampled log-probs equal --score's on the same GPU (the on-policy
# ratio is exactly 1), the same seed gives the same output, and without a GPU
# --device cuda is a clear error. The GPU checks are reported as skipped without one.
. "$(dirname "$0")/lib.sh"
RO="$BIN/rollout"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"

sh "$ROOT/samples/addition/make.sh" 400 1 >"$TMP/add.jsonl"
"$BIN/tokenize" -q -t "$TINY" --template chatml "$TMP/add.jsonl" -o "$TMP/add.stream"
"$BIN/sft-train" -q --init "$CFG" --tokenizer "$TINY" -d "$TMP/add.stream" -o "$TMP/model" --lr 3e-3 \
    --schedule cosine --warmup 10 --micro-batch 8 --epochs 2 --seed 7 --device cpu >/dev/null
sh "$ROOT/samples/addition/make.sh" 24 1 | jq -c -s 'to_entries[] | {id: "p\(.key)", messages: [.value.messages[0]]}' \
    >"$TMP/probs.jsonl"
RUN="-m $TMP/model --template chatml --allow-template-mismatch --max-new-tokens 48 --max-batch 32"

# shellcheck disable=SC2086
if ! "$RO" $RUN --greedy --device cuda "$TMP/probs.jsonl" >"$TMP/g-cuda-bf16.jsonl" 2>"$TMP/probe.err"; then
    gpu_probe_failed "$TMP/probe.err" greedy-equals-cpu-fp32 logprobs-equal-score-on-gpu \
        same-seed-same-output-on-gpu sampled-records
    finish
    exit
fi

# shellcheck disable=SC2086
"$RO" -q $RUN --greedy --device cpu "$TMP/probs.jsonl" >"$TMP/g-cpu.jsonl"
# shellcheck disable=SC2086
"$RO" -q $RUN --greedy --device cuda --matmul fp32 "$TMP/probs.jsonl" >"$TMP/g-cuda.jsonl"
# agree A B: per record, how many leading tokens are equal (a list)
agree() {
    jq -s -c --slurpfile b "$2" '[., $b] | transpose | map(. as [$x, $y] |
        [range(0; [($x.tokens | length), ($y.tokens | length)] | min)] |
        (map(select($x.tokens[.] != $y.tokens[.])) | first) // ([($x.tokens | length), ($y.tokens | length)] | min))' "$1"
}
fp32=$(agree "$TMP/g-cuda.jsonl" "$TMP/g-cpu.jsonl")
bf16=$(agree "$TMP/g-cuda-bf16.jsonl" "$TMP/g-cpu.jsonl")
echo "# greedy tokens equal to the cpu's, per problem: fp32 $fp32; bf16 $bf16"
echo "$fp32" | jq -e --slurpfile c "$TMP/g-cpu.jsonl" 'length == 24 and
    ([., $c] | transpose | all(.[0] >= ([32, (.[1].tokens | length)] | min)))' >/dev/null &&
    ok greedy-equals-cpu-fp32 || not_ok greedy-equals-cpu-fp32

SAMPLE="$RUN --device cuda -n 4 --temperature 0.9 --top-p 0.95 --top-k 40 --min-p 0.01"
# shellcheck disable=SC2086
"$RO" -q $SAMPLE --seed 5 "$TMP/probs.jsonl" >"$TMP/a.jsonl"
# shellcheck disable=SC2086
"$RO" -q $SAMPLE --seed 5 "$TMP/probs.jsonl" >"$TMP/b.jsonl"
same same-seed-same-output-on-gpu "$TMP/a.jsonl" "$TMP/b.jsonl"
"$RO" -q --score -m "$TMP/model" --device cuda --temperature 0.9 --field again "$TMP/a.jsonl" >"$TMP/scored.jsonl"
jq -s -e 'length == 96 and all(.[]; .logprobs == .again)' "$TMP/scored.jsonl" >/dev/null &&
    ok logprobs-equal-score-on-gpu || not_ok logprobs-equal-score-on-gpu
jq -s -e 'length == 96 and all(.[]; (.tokens | length) == (.logprobs | length) and (.tokens | length) > 0 and
          (.logprobs | all(. <= 0)) and (.finish_reason == "stop" or .finish_reason == "length")) and
          (group_by(.group) | map(map(.tokens) | unique | length) | add) > 24' "$TMP/a.jsonl" >/dev/null &&
    ok sampled-records || not_ok sampled-records
finish
