#!/bin/sh
# rollout: samples completions with a KV cache from a tiny model trained here on worked
# additions; same command, same output; log-probs equal --score's (the on-policy ratio is
# exactly 1); stops, lengths and groups; clear errors.
. "$(dirname "$0")/lib.sh"
RO="$BIN/rollout"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"

expect help 0 "" "$RO" --help
[ "$(wc -l <"$TMP/stdout")" -le 24 ] && ok help-fits-a-screen || not_ok help-fits-a-screen
expect version 0 "" "$RO" --version
expect no-model 2 "-m MODEL is required" "$RO"

sh "$ROOT/samples/addition/make.sh" 400 1 >"$TMP/add.jsonl"
"$BIN/tokenize" -q -t "$TINY" --template chatml "$TMP/add.jsonl" -o "$TMP/add.stream"
"$BIN/sft-train" -q --init "$CFG" --tokenizer "$TINY" -d "$TMP/add.stream" -o "$TMP/model" --lr 3e-3 \
    --schedule cosine --warmup 10 --micro-batch 8 --epochs 2 --seed 7 --device cpu >/dev/null
printf '%s\n' '{"id":"a","messages":[{"role":"user","content":"What is 123+456?"}],"answer":"579"}' \
    '{"id":"b","messages":[{"role":"user","content":"What is 905+88?"}],"answer":"993"}' \
    '{"messages":[{"role":"user","content":"What is 31+12?"}]}' >"$TMP/probs.jsonl"
# The tiny test tokenizer spells <|im_end|> in pieces: the mismatch is allowed on purpose.
RUN="-m $TMP/model --template chatml --allow-template-mismatch --max-new-tokens 40"

# shellcheck disable=SC2086
expect samples 0 "3 problems, 12 samples" "$RO" $RUN -n 4 --temperature 0.9 --top-p 0.95 --seed 5 "$TMP/probs.jsonl"
cp "$TMP/stdout" "$TMP/a.jsonl"
# shellcheck disable=SC2086
"$RO" -q $RUN -n 4 --temperature 0.9 --top-p 0.95 --seed 5 "$TMP/probs.jsonl" >"$TMP/b.jsonl"
same same-command-same-output "$TMP/a.jsonl" "$TMP/b.jsonl"
# Samples are drawn in parallel, each from its own generator: the thread count changes nothing.
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 "$RO" -q $RUN -n 4 --temperature 0.9 --top-p 0.95 --seed 5 "$TMP/probs.jsonl" >"$TMP/t1.jsonl"
# shellcheck disable=SC2086
OMP_NUM_THREADS=3 "$RO" -q $RUN -n 4 --temperature 0.9 --top-p 0.95 --seed 5 "$TMP/probs.jsonl" >"$TMP/t3.jsonl"
cmp -s "$TMP/a.jsonl" "$TMP/t1.jsonl" && cmp -s "$TMP/a.jsonl" "$TMP/t3.jsonl" && ok same-output-any-thread-count ||
    not_ok same-output-any-thread-count
# shellcheck disable=SC2086
"$RO" -q $RUN -n 4 --temperature 0.9 --top-p 0.95 --seed 6 "$TMP/probs.jsonl" >"$TMP/c.jsonl"
cmp -s "$TMP/a.jsonl" "$TMP/c.jsonl" && not_ok another-seed-other-samples || ok another-seed-other-samples
jq -s -e '[.[].group] == ["a","a","a","a","b","b","b","b","line-3","line-3","line-3","line-3"] and
          [.[].sample] == [0,1,2,3,0,1,2,3,0,1,2,3] and ([.[].id] | unique | length) == 12 and
          (group_by(.group) | all(map(.prompt_tokens) | unique | length == 1)) and
          all(.[]; (.tokens | length) == (.logprobs | length) and (.logprobs | all(. <= 0)) and
              (.finish_reason == "stop" or .finish_reason == "length")) and .[0].answer == "579"' \
    "$TMP/a.jsonl" >/dev/null && ok record-fields || not_ok record-fields

# --score with the same model and temperature gives the same bits: GRPO's ratio is exactly 1.
"$RO" -q --score -m "$TMP/model" --temperature 0.9 --field again "$TMP/a.jsonl" >"$TMP/scored.jsonl"
jq -s -e 'length == 12 and all(.[]; .logprobs == .again)' "$TMP/scored.jsonl" >/dev/null &&
    ok score-equals-rollout-logprobs || not_ok score-equals-rollout-logprobs
"$RO" -q --score -m "$TMP/model" "$TMP/a.jsonl" | jq -s -e 'all(.[]; .ref_logprobs | length > 0)' >/dev/null &&
    ok score-default-field || not_ok score-default-field

# A bf16 KV cache (its accuracy: test_generate): half the bytes a token, every sample
# back, log-probs still --score's (the training forward computes them).
# shellcheck disable=SC2086
expect kv-cache-bf16 0 "of bf16 KV cache (0.2 KiB a token" "$RO" $RUN -n 2 --matmul bf16 --kv-cache bf16 \
    "$TMP/probs.jsonl"
cp "$TMP/stdout" "$TMP/kv16.jsonl"
jq -s -e 'length == 6 and all(.[]; (.tokens | length > 3) and (.tokens | length) == (.logprobs | length))' \
    "$TMP/kv16.jsonl" >/dev/null && ok kv-cache-bf16-records || not_ok kv-cache-bf16-records
"$RO" -q --score -m "$TMP/model" --field again "$TMP/kv16.jsonl" | jq -s -e 'all(.[]; .logprobs == .again)' \
    >/dev/null && ok kv-cache-bf16-logprobs-are-scores || not_ok kv-cache-bf16-logprobs-are-scores
expect kv-cache-bad 2 "--kv-cache" "$RO" -m "$TMP/model" --kv-cache fp16 "$TMP/probs.jsonl"

# Continuous batching by sample: 6 samples a problem through 4 slots (samples wait for
# slots as others end, copying the prompt's cache): greedy, the tokens of 16 slots (bits of
# sampled tokens may differ: the CPU's products depend on the batch's row count); sampled,
# every sample of every problem comes back.
# shellcheck disable=SC2086
"$RO" -q $RUN -n 6 --max-batch 4 --greedy "$TMP/probs.jsonl" | jq -c '[.group, .sample, .tokens]' >"$TMP/w4"
# shellcheck disable=SC2086
"$RO" -q $RUN -n 6 --max-batch 16 --greedy "$TMP/probs.jsonl" | jq -c '[.group, .sample, .tokens]' >"$TMP/w16"
# shellcheck disable=SC2086
"$RO" -q $RUN -n 6 --max-batch 4 --temperature 0.9 --seed 5 "$TMP/probs.jsonl" >"$TMP/w4s"
[ "$(wc -l <"$TMP/w4")" -eq 18 ] && cmp -s "$TMP/w4" "$TMP/w16" &&
    jq -s -e '[.[] | [.group, .sample]] == ([["a", "b", "line-3"][] as $g | range(6) as $k | [$g, $k]]) and
        all(.[]; (.tokens | length) > 0)' "$TMP/w4s" >/dev/null && ok samples-wait-for-slots || not_ok samples-wait-for-slots

# Greedy: the same tokens whatever the batch size or sample count.
# shellcheck disable=SC2086
"$RO" -q $RUN --greedy -n 2 "$TMP/probs.jsonl" | jq -c '.tokens' >"$TMP/g1"
# shellcheck disable=SC2086
"$RO" -q $RUN --greedy -n 1 --max-batch 1 "$TMP/probs.jsonl" | jq -c '.tokens' >"$TMP/g2"
[ "$(sed -n '1p' "$TMP/g1")" = "$(sed -n '1p' "$TMP/g2")" ] && [ "$(sed -n '3p' "$TMP/g1")" = "$(sed -n '2p' "$TMP/g2")" ] &&
    ok greedy-batch-independent || not_ok greedy-batch-independent

# Greedy keeps only each step's argmax, through the head's int8 screen where the CPU has
# AVX-512 VNNI: the same records as with the screen off, fp32 and bf16 weights.
for mm in fp32 bf16; do
    # shellcheck disable=SC2086
    "$RO" -q $RUN --greedy -n 2 --matmul $mm "$TMP/probs.jsonl" >"$TMP/screen.jsonl"
    # shellcheck disable=SC2086
    TP_HEAD_SCREEN=0 "$RO" -q $RUN --greedy -n 2 --matmul $mm "$TMP/probs.jsonl" >"$TMP/noscreen.jsonl"
    [ "$(wc -l <"$TMP/screen.jsonl")" -eq 6 ] && cmp -s "$TMP/screen.jsonl" "$TMP/noscreen.jsonl" &&
        ok greedy-head-screen-same-records-$mm || not_ok greedy-head-screen-same-records-$mm
done

# Stops and lengths.
# shellcheck disable=SC2086
"$RO" -q $RUN --greedy --stop "+0" "$TMP/probs.jsonl" >"$TMP/stop.jsonl"
jq -s -e 'all(.[]; .finish_reason == "stop" and (.text | contains("+0") | not))' "$TMP/stop.jsonl" >/dev/null &&
    ok stop-string || not_ok stop-string
# shellcheck disable=SC2086
"$RO" -q $RUN --max-new-tokens 5 "$TMP/probs.jsonl" |
    jq -s -e 'all(.[]; .finish_reason == "length" and (.tokens | length) == 5)' >/dev/null &&
    ok max-new-tokens || not_ok max-new-tokens

# Bad input.
echo '{"id":"x","question":"?"}' >"$TMP/bad.jsonl"
expect no-problem-field 1 "bad.jsonl:1:" "$RO" $RUN "$TMP/bad.jsonl"
expect prompt-too-long 1 "does not fit --max-len 8" "$RO" $RUN --max-len 8 "$TMP/probs.jsonl"
mkdir -p "$TMP/notok" && cp "$TMP/model/config.json" "$TMP/model/model.safetensors" "$TMP/notok/"
expect no-tokenizer 1 "the model's tokenizer" "$RO" -m "$TMP/notok" "$TMP/probs.jsonl"
expect no-chat-template 1 "--template NAME" "$RO" -m "$TMP/model" "$TMP/probs.jsonl"
expect template-not-the-tokenizers 1 "the tokenizer has no <|im_end|> token: template chatml is not this model's" \
    "$RO" -m "$TMP/model" --template chatml "$TMP/probs.jsonl"
echo '{"prompt_tokens":[1,2],"tokens":[5,99999]}' >"$TMP/badscore.jsonl"
expect score-bad-token 1 "badscore.jsonl:1: \"tokens\"[1] is not a token id" "$RO" --score -m "$TMP/model" "$TMP/badscore.jsonl"
finish
