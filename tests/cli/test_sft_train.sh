#!/bin/sh
# sft-train: learns a small task, resumes exactly after kill -9, refuses bad input.
. "$(dirname "$0")/lib.sh"
ST="$BIN/sft-train"
TK="$BIN/tokenize"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"

expect help 0 "" "$ST" --help
[ "$(wc -l <"$TMP/stdout")" -le 24 ] && ok help-fits-a-screen || not_ok help-fits-a-screen
expect version 0 "" "$ST" --version
expect no-model 2 "give one of -m MODEL, --init CONFIG.json or --resume DIR" "$ST" -d x -o y
expect no-data 2 "-d DATA is required" "$ST" --init "$CFG" -o y

sh "$ROOT/samples/addition/make.sh" 700 1 >"$TMP/add.jsonl"
head -n 600 "$TMP/add.jsonl" >"$TMP/train.jsonl"
tail -n 100 "$TMP/add.jsonl" >"$TMP/eval.jsonl"
"$TK" -q -t "$TINY" --template chatml "$TMP/train.jsonl" -o "$TMP/train.stream"
"$TK" -q -t "$TINY" --template chatml "$TMP/eval.jsonl" -o "$TMP/eval.stream"

# Learns: from random weights, held-out loss on the worked additions falls from ~6 (uniform
# over 400 tokens) below 1.0 nats per answer token, in a few seconds on 2 cores. Under the
# sanitizers (~100x slower) one epoch, and only the fall is checked.
EPOCHS=3 BAR=1.0 LIMIT=60
[ "${SAN:-0}" = 1 ] && EPOCHS=1 BAR=100 LIMIT=100000
start=$(date +%s)
expect learns-runs 0 "" "$ST" --init "$CFG" --tokenizer "$TINY" -d "$TMP/train.stream" --eval "$TMP/eval.stream" \
    --eval-every 25 -o "$TMP/learn" --lr 3e-3 --schedule cosine --warmup 10 --micro-batch 8 --epochs "$EPOCHS" --seed 7
cp "$TMP/stdout" "$TMP/learn.jsonl"
secs=$(($(date +%s) - start))
first=$(jq -s '[.[] | select(.eval_loss)][0].eval_loss' "$TMP/learn.jsonl")
last=$(jq -s '[.[] | select(.eval_loss)][-1].eval_loss' "$TMP/learn.jsonl")
echo "# learns: held-out loss $first (step 25) -> $last (end), $secs s" >&2
if awk -v f="$first" -v l="$last" -v s="$secs" -v bar="$BAR" -v limit="$LIMIT" \
    'BEGIN { exit !(l < bar && l < f && s < limit) }'; then ok learns-held-out-loss
else not_ok learns-held-out-loss; echo "  held-out loss $first -> $last in $secs s (bar: < 1.0 in < 60 s)" >&2; fi
[ -f "$TMP/learn/model.safetensors" ] && [ -f "$TMP/learn/tokenizer.json" ] && [ -f "$TMP/learn/config.json" ] &&
    ok final-model-files || not_ok final-model-files
jq -e 'has("step") and has("epoch") and has("loss") and has("lr") and has("grad_norm") and has("tokens")
       and has("tokens_per_s") and has("elapsed")' "$TMP/learn.jsonl" >/dev/null && ok metrics-fields || not_ok metrics-fields

# Resume is exact: an uninterrupted run of 40 updates, and one killed with -9 while running,
# after its checkpoint at step 6, and resumed from its newest checkpoint, print the same
# loss, lr and grad norm, and end with the same weights.
OPTS="-d $TMP/train.stream --lr 3e-3 --schedule cosine --warmup 2 --micro-batch 4 --grad-accum 2 --steps 40
      --save-every 3 --weight-decay 0.1 --seed 3 -j 2 --device cpu"
# shellcheck disable=SC2086
"$ST" -q --init "$CFG" --tokenizer "$TINY" $OPTS -o "$TMP/whole" >"$TMP/whole.jsonl"
# shellcheck disable=SC2086
"$ST" -q --init "$CFG" --tokenizer "$TINY" $OPTS -o "$TMP/killed" >"$TMP/killed.jsonl" &
pid=$!
i=0
while [ ! -f "$TMP/killed/checkpoint-6/trainer_state.json" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i + 1)); done
if kill -9 $pid 2>/dev/null; then ok killed-while-running; else not_ok killed-while-running; fi
wait $pid 2>/dev/null
ls -d "$TMP"/killed/checkpoint-*.tmp-* >/dev/null 2>&1 && not_ok no-half-checkpoint-visible || ok no-half-checkpoint-visible
last_ckpt=$(ls -d "$TMP"/killed/checkpoint-[0-9]* | sed 's/.*checkpoint-//' | grep -v '\.' | sort -n | tail -n 1)
# shellcheck disable=SC2086
expect resume-runs 0 "" "$ST" -q --resume "$TMP/killed/checkpoint-$last_ckpt" $OPTS -o "$TMP/killed"
jq -c "select(.step > $last_ckpt) | [.step, .loss, .lr, .grad_norm, .tokens, .epoch]" "$TMP/whole.jsonl" >"$TMP/a"
jq -c '[.step, .loss, .lr, .grad_norm, .tokens, .epoch]' "$TMP/stdout" >"$TMP/b"
[ -s "$TMP/a" ] && same resume-bit-identical "$TMP/a" "$TMP/b"
same resume-same-weights "$TMP/whole/model.safetensors" "$TMP/killed/model.safetensors"

# --batch-tokens: micro-batches filled up to N padded tokens. N = 1 puts each record alone,
# which is exactly --micro-batch 1; a budget above the whole set makes one micro-batch an
# epoch, so --epochs 2 is 2 updates.
BT="--init $CFG --tokenizer $TINY -d $TMP/eval.stream --lr 3e-3 --grad-accum 4 --seed 5 -q --device cpu"
# shellcheck disable=SC2086
"$ST" $BT --batch-tokens 1 -o "$TMP/bt1" >"$TMP/bt1.jsonl"
# shellcheck disable=SC2086
"$ST" $BT --micro-batch 1 -o "$TMP/mb1" >"$TMP/mb1.jsonl"
jq -c '[.step, .loss, .grad_norm, .tokens]' "$TMP/bt1.jsonl" >"$TMP/a"
jq -c '[.step, .loss, .grad_norm, .tokens]' "$TMP/mb1.jsonl" >"$TMP/b"
[ "$(wc -l <"$TMP/a")" -eq 25 ] && same batch-tokens-1-is-micro-batch-1 "$TMP/a" "$TMP/b" || not_ok batch-tokens-1-is-micro-batch-1
# shellcheck disable=SC2086
"$ST" $BT --grad-accum 1 --batch-tokens 10000000 --epochs 2 -o "$TMP/btall" >"$TMP/btall.jsonl"
[ "$(wc -l <"$TMP/btall.jsonl")" -eq 2 ] && [ "$(jq -s '.[0].tokens' "$TMP/btall.jsonl")" -gt 10000 ] &&
    ok batch-tokens-whole-epoch || not_ok batch-tokens-whole-epoch
# A budget of 2,000 tokens: each update's tokens fit in 4 micro-batches of <= 2000 padded tokens,
# and they are many records each (--micro-batch 1 would give ~650 tokens an update).
# shellcheck disable=SC2086
"$ST" $BT --batch-tokens 2000 -o "$TMP/bt2k" >"$TMP/bt2k.jsonl"
jq -s -e 'length >= 3 and .[0].tokens > 4000 and ([.[0].tokens] + [range(1; length) as $i | .[$i].tokens - .[$i - 1].tokens] | all(. <= 8000))' \
    "$TMP/bt2k.jsonl" >/dev/null && ok batch-tokens-budget || not_ok batch-tokens-budget
expect batch-tokens-or-micro-batch 2 "not both" "$ST" $BT --batch-tokens 10 --micro-batch 2 -o "$TMP/e"

# A progress line on stderr when it is a terminal (script(1) gives the run a pseudo-terminal),
# none when it is not.
if command -v script >/dev/null 2>&1; then
    script -qc "$ST --init $CFG --tokenizer $TINY -d $TMP/eval.stream -o $TMP/tty --steps 5 --device cpu --metrics $TMP/tty.jsonl" \
        "$TMP/typescript" >/dev/null 2>&1
    grep -q '5/5 steps' "$TMP/typescript" && ok progress-on-a-terminal || not_ok progress-on-a-terminal
    "$ST" --init "$CFG" --tokenizer "$TINY" -d "$TMP/eval.stream" -o "$TMP/notty" --steps 5 --device cpu \
        --metrics "$TMP/notty.jsonl" 2>"$TMP/notty.err"
    grep -q 'steps' "$TMP/notty.err" && not_ok no-progress-when-not-a-terminal || ok no-progress-when-not-a-terminal
fi

# Bad input: clear messages, nothing written over.
expect empty-stream 1 "no records" "$ST" --init "$CFG" -d /dev/null -o "$TMP/e"
sed 's/"vocab_size": 400/"vocab_size": 300/' "$CFG" >"$TMP/small.json"
expect vocab-too-small 1 "outside the model's vocabulary (300)" "$ST" --init "$TMP/small.json" -d "$TMP/train.stream" -o "$TMP/e"
expect other-tokenizer 1 "tokenize the data with the model's tokenizer" \
    "$ST" --init "$CFG" --tokenizer "$ROOT/tests/fixtures/tokenizer/llama3" -d "$TMP/train.stream" -o "$TMP/e" --steps 1
cp -r "$TMP/whole/checkpoint-9" "$TMP/corrupt"
truncate -s 1000 "$TMP/corrupt/optimizer.safetensors"
before=$(md5sum "$TMP/whole/model.safetensors")
# shellcheck disable=SC2086
expect corrupt-checkpoint 1 "cannot resume" "$ST" --resume "$TMP/corrupt" $OPTS -o "$TMP/whole"
[ "$(md5sum "$TMP/whole/model.safetensors")" = "$before" ] && ok corrupt-resume-writes-nothing || not_ok corrupt-resume-writes-nothing
finish
