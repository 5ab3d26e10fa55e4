#!/bin/sh
# serve: an OpenAI-compatible server driven with curl — health, models, chat and text
# completions (greedy answers equal rollout's; streamed deltas add up to the answer),
# n, seeds, reasoning_content, OpenAI-style errors, API keys, concurrent requests, a
# client that goes away mid-stream freeing its slots, and a clean stop.
. "$(dirname "$0")/lib.sh"
SV="$BIN/serve"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
CFG="$ROOT/samples/configs/tiny-qwen3.json"
command -v curl >/dev/null 2>&1 || { echo "skip - serve: curl not installed"; finish; exit; }

expect help 0 "" "$SV" --help
expect no-model 2 "-m MODEL is required" "$SV"
expect no-key 1 "THINKPIPE_TEST_UNSET: the variable is not set" "$SV" -m x --api-key-env THINKPIPE_TEST_UNSET

# A tiny model that thinks before it answers: worked additions as <think> traces.
sh "$ROOT/samples/addition/make.sh" 500 3 |
    jq -c '{problem: .messages[0].content, reasoning: (.messages[1].content | sub(", so [0-9]+$"; "")),
            content: (.messages[1].content | capture("so (?<a>[0-9]+)$").a)}' >"$TMP/traces.jsonl"
"$BIN/tokenize" -q -t "$TINY" --template chatml --prompt "{problem}" "$TMP/traces.jsonl" -o "$TMP/t.stream"
"$BIN/sft-train" -q --init "$CFG" --tokenizer "$TINY" -d "$TMP/t.stream" -o "$TMP/model" --lr 3e-3 \
    --schedule cosine --warmup 10 --micro-batch 8 --epochs 3 --seed 7 --device cpu >/dev/null

start() {  # start NAME ARGS...: a server on a free port; sets URL and PID
    name=$1
    shift
    "$SV" -m "$TMP/model" --template chatml --allow-template-mismatch --port 0 "$@" 2>"$TMP/$name.err" &
    PID=$!
    i=0
    while ! grep -q 'http://' "$TMP/$name.err" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    URL=$(sed -n 's/.* on \(http:[^,]*\).*/\1/p' "$TMP/$name.err" | head -n 1)
}
post() { curl -s -m 60 "$URL$1" -H 'Content-Type: application/json' -d "$2"; }
code() { curl -s -m 60 -o "$TMP/body" -w '%{http_code}' "$@"; }

expect template-not-the-tokenizers 1 "template chatml is not this model's" "$SV" -m "$TMP/model" --template chatml --port 0
start main --reasoning-parser think --max-batch 4 --max-len 4096
[ -n "$URL" ] && ok listening || { not_ok listening; cat "$TMP/main.err" >&2; finish; exit; }
[ "$(curl -s "$URL/health" | jq -r .status)" = ok ] && ok health || not_ok health
[ "$(curl -s "$URL/v1/models" | jq -r '.data[0].id')" = model ] && ok models || not_ok models

Q='{"messages":[{"role":"user","content":"What is 123+456?"}],"temperature":0,"max_tokens":80}'
post /v1/chat/completions "$Q" >"$TMP/chat.json"
jq -e '.object == "chat.completion" and .choices[0].message.role == "assistant" and
       (.choices[0].message.reasoning_content | test("\\+")) and (.choices[0].message.content | test("^[0-9]+$")) and
       .choices[0].finish_reason == "stop" and .usage.prompt_tokens > 0 and .usage.completion_tokens > 0' \
    "$TMP/chat.json" >/dev/null && ok chat-with-reasoning || { not_ok chat-with-reasoning; cat "$TMP/chat.json" >&2; }
# The same prompt through rollout, greedy: the same text.
echo '{"id":"q","messages":[{"role":"user","content":"What is 123+456?"}]}' |
    "$BIN/rollout" -q -m "$TMP/model" --template chatml --allow-template-mismatch --greedy --max-new-tokens 80 --max-len 4096 >"$TMP/ro.jsonl"
want=$(jq -r '.text' "$TMP/ro.jsonl")
got=$(jq -r '"<think>\n" + .choices[0].message.reasoning_content + "\n</think>\n\n" + .choices[0].message.content' "$TMP/chat.json")
[ "$want" = "$got" ] && ok greedy-equals-rollout || { not_ok greedy-equals-rollout; echo "  rollout: $want / serve: $got" >&2; }

# Streaming: data: lines of JSON chunks, then [DONE]; the deltas add up to the answer.
curl -sN -m 60 "$URL/v1/chat/completions" -d "$(echo "$Q" | jq -c '. + {stream: true}')" >"$TMP/sse.txt"
tail -n 2 "$TMP/sse.txt" | grep -qx 'data: \[DONE\]' && ok stream-done || not_ok stream-done
grep '^data: {' "$TMP/sse.txt" | sed 's/^data: //' >"$TMP/chunks.jsonl"
jq -s -r '[.[].choices[0].delta.content // empty] | add' "$TMP/chunks.jsonl" >"$TMP/content.txt"
jq -s -r '[.[].choices[0].delta.reasoning_content // empty] | add' "$TMP/chunks.jsonl" >"$TMP/reason.txt"
[ "$(cat "$TMP/content.txt")" = "$(jq -r '.choices[0].message.content' "$TMP/chat.json")" ] &&
    [ "$(cat "$TMP/reason.txt")" = "$(jq -r '.choices[0].message.reasoning_content' "$TMP/chat.json")" ] &&
    jq -s -e 'all(.[]; .object == "chat.completion.chunk") and (.[-1].choices[0].finish_reason == "stop")' \
        "$TMP/chunks.jsonl" >/dev/null && ok stream-adds-up || {
    not_ok stream-adds-up
    echo "  streamed: $(cat "$TMP/reason.txt") | $(cat "$TMP/content.txt")" >&2
    echo "  whole:    $(jq -c '.choices[0].message' "$TMP/chat.json")" >&2
}

# A stop string met mid-answer: the stream (its text decoded a piece at a time) ends where
# the whole answer does, without the stop string, and so do long streams of 4 samples.
stopper=$(jq -r '.choices[0].message.reasoning_content[4:7]' "$TMP/chat.json")
QS=$(echo "$Q" | jq -c --arg s "$stopper" '. + {stop: [$s], n: 4, temperature: 0.7, seed: 3}')
post /v1/chat/completions "$QS" >"$TMP/stop.json"
curl -sN -m 60 "$URL/v1/chat/completions" -d "$(echo "$QS" | jq -c '. + {stream: true}')" | grep '^data: {' |
    sed 's/^data: //' >"$TMP/stop_chunks.jsonl"
jq -s -e --slurpfile whole "$TMP/stop.json" --arg s "$stopper" '
    group_by(.choices[0].index) | map({i: .[0].choices[0].index,
        r: (map(.choices[0].delta.reasoning_content // "") | add), c: (map(.choices[0].delta.content // "") | add),
        f: (map(.choices[0].finish_reason // empty) | last)}) as $streamed |
    ($streamed | length) == 4 and all($streamed[]; . as $x | $whole[0].choices[$x.i] as $w |
        $x.r == ($w.message.reasoning_content // "") and $x.c == $w.message.content and $x.f == $w.finish_reason and
        (($x.r + $x.c) | contains($s) | not)) and any($streamed[]; .f == "stop" and (.r | length) < 8)' \
    "$TMP/stop_chunks.jsonl" >/dev/null &&
    ok stream-stop-string-equals-whole || { not_ok stream-stop-string-equals-whole; jq -c . "$TMP/stop.json" >&2; }

# Log-probs: the sampled tokens' (the training forward's, as rollout --score gives them at
# temperature 1) and the top 3 at each step; the completions API's shape; usage at the end
# of a stream on request; streamed log-probs (the engine's, as tokens are drawn) cover
# every token once, in order, within 1e-4 of the whole answer's.
post /v1/chat/completions "$(echo "$Q" | jq -c '. + {logprobs: true, top_logprobs: 3}')" >"$TMP/lp.json"
"$BIN/rollout" -q --score -m "$TMP/model" --temperature 1 --field s "$TMP/ro.jsonl" >"$TMP/scored.jsonl"
jq -e --slurpfile r "$TMP/scored.jsonl" '.choices[0].logprobs.content as $c | ($c | length) == .usage.completion_tokens and
    ([$c[].logprob] == $r[0].s) and all($c[]; (.top_logprobs | length) == 3 and .top_logprobs[0].token == .token and
    (.top_logprobs[0].logprob - .logprob | fabs) < 1e-6 and .top_logprobs[0].logprob >= .top_logprobs[1].logprob and
    (.bytes | length) > 0)' "$TMP/lp.json" >/dev/null && ok chat-logprobs-equal-score || { not_ok chat-logprobs-equal-score; head -c 600 "$TMP/lp.json" >&2; }
post /v1/completions '{"prompt":"What is 12+30?","max_tokens":8,"temperature":0,"logprobs":2}' | tee "$TMP/clp.json" |
    jq -e '.choices[0].logprobs as $l | ($l.tokens | length) == .usage.completion_tokens and
        ($l.token_logprobs | all(. <= 0)) and ($l.top_logprobs | all(length >= 1 and length <= 2)) and
        ($l.text_offset | . == sort)' >/dev/null && ok completions-logprobs || { not_ok completions-logprobs; head -c 600 "$TMP/clp.json" >&2; }
curl -sN -m 60 "$URL/v1/chat/completions" -d "$(echo "$Q" | jq -c '. + {logprobs: true, top_logprobs: 3, stream: true}')" |
    grep '^data: {' | sed 's/^data: //' >"$TMP/lp_chunks.jsonl"
jq -s -e --slurpfile w "$TMP/lp.json" '[.[].choices[0].logprobs.content // empty | .[]] as $s | $w[0].choices[0].logprobs.content as $c |
    ($s | length) == ($c | length) and ([$s[].token] == [$c[].token]) and
    all(range(0; $s | length); ($s[.].logprob - $c[.].logprob | fabs) < 1e-4 and ($s[.].top_logprobs | length) == 3 and
        $s[.].top_logprobs[0].token == $c[.].top_logprobs[0].token) and
    ([.[].choices[0].delta.content // empty] | add) == $w[0].choices[0].message.content' "$TMP/lp_chunks.jsonl" >/dev/null &&
    ok stream-logprobs-cover-the-answer || { not_ok stream-logprobs-cover-the-answer; head -c 800 "$TMP/lp_chunks.jsonl" >&2; }
curl -sN -m 60 "$URL/v1/completions" -d '{"prompt":"What is 12+30?","max_tokens":8,"temperature":0,"logprobs":2,"stream":true}' |
    grep '^data: {' | sed 's/^data: //' >"$TMP/clp_chunks.jsonl"
jq -s -e --slurpfile w "$TMP/clp.json" '[.[].choices[0].logprobs // empty] as $l |
        ([$l[].tokens[]] == $w[0].choices[0].logprobs.tokens) and ([$l[].text_offset[]] == $w[0].choices[0].logprobs.text_offset) and
        ([$l[].tokens[]] | add) as $t | ([.[].choices[0].text] | add) | startswith($t[0:1])' "$TMP/clp_chunks.jsonl" >/dev/null &&
    ok stream-completions-logprobs || { not_ok stream-completions-logprobs; cat "$TMP/clp.json" "$TMP/clp_chunks.jsonl" >&2; }
curl -sN -m 60 "$URL/v1/chat/completions" -d "$(echo "$Q" | jq -c '. + {stream: true, stream_options: {include_usage: true}}')" |
    grep '^data: {' | tail -n 1 | sed 's/^data: //' |
    jq -e --slurpfile w "$TMP/chat.json" '.choices == [] and .usage == $w[0].usage' >/dev/null &&
    ok stream-include-usage || not_ok stream-include-usage

# n samples, seeds, text completions.
S='{"messages":[{"role":"user","content":"What is 55+66?"}],"temperature":1.0,"n":3,"seed":11,"max_tokens":40}'
post /v1/chat/completions "$S" | jq -c '[.choices[].message | .reasoning_content + .content]' >"$TMP/s1"
post /v1/chat/completions "$S" | jq -c '[.choices[].message | .reasoning_content + .content]' >"$TMP/s2"
[ "$(jq length "$TMP/s1")" = 3 ] && same same-seed-same-samples "$TMP/s1" "$TMP/s2" || not_ok same-seed-same-samples
post /v1/completions '{"prompt":"What is","max_tokens":5,"temperature":0}' |
    jq -e '.object == "text_completion" and .choices[0].finish_reason == "length" and .usage.completion_tokens == 5' \
        >/dev/null && ok text-completion || not_ok text-completion

# OpenAI-style errors.
[ "$(code "$URL/v1/chat/completions" -d '{bad')" = 400 ] && jq -e '.error.type == "invalid_request_error"' "$TMP/body" >/dev/null &&
    ok bad-json-400 || not_ok bad-json-400
[ "$(code "$URL/v1/chat/completions" -d '{"model":"m"}')" = 400 ] && jq -e '.error.message | test("messages")' "$TMP/body" >/dev/null &&
    ok missing-messages-400 || not_ok missing-messages-400
[ "$(code "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}],"n":9}')" = 400 ] && ok n-too-large-400 || not_ok n-too-large-400
long=$(awk 'BEGIN { for (i = 0; i < 2000; i++) printf "What is 1+1? " }')
[ "$(code "$URL/v1/chat/completions" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}]}")" = 400 ] &&
    jq -e '.error.message | test("maximum context length")' "$TMP/body" >/dev/null && ok prompt-too-long-400 || not_ok prompt-too-long-400
[ "$(code "$URL/v1/nothing")" = 404 ] && ok unknown-endpoint-404 || not_ok unknown-endpoint-404

# Concurrent requests share the decode loop: 4 at once all answer.
pids=""
for i in 1 2 3 4; do
    post /v1/chat/completions "$Q" >"$TMP/par$i.json" &
    pids="$pids $!"
done
# shellcheck disable=SC2086
wait $pids  # not a bare wait: the server is a child too
n=0
for i in 1 2 3 4; do cmp -s "$TMP/par$i.json" /dev/null || jq -e '.choices[0].message.content' "$TMP/par$i.json" >/dev/null && n=$((n + 1)); done
[ $n = 4 ] && ok concurrent-requests || not_ok concurrent-requests

# A client that leaves mid-stream frees its slots: with 4 slots, a 4-sample request of
# ~1900 tokens each is dropped after 0.3 s (the server says so), then another 4-sample
# request is answered.
curl -sN -m 0.3 "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"What is 1+2?"}],"n":4,"max_tokens":100000,"stream":true,"temperature":1,"ignore_eos":true}' >/dev/null 2>&1
post /v1/chat/completions '{"messages":[{"role":"user","content":"What is 3+4?"}],"n":4,"max_tokens":20}' |
    jq -e '(.choices | length) == 4' >/dev/null && grep -q "the client went away" "$TMP/main.err" &&
    ok disconnect-frees-slots || { not_ok disconnect-frees-slots; cat "$TMP/main.err" >&2; }

kill -TERM "$PID"
wait "$PID"
[ $? = 0 ] && ok sigterm-stops-cleanly || not_ok sigterm-stops-cleanly

# Stopped with a stream in flight and a request queued behind it (one slot): both jobs are
# freed (under SAN=1 LeakSanitizer fails the exit status otherwise) and the exit is clean.
start busy --max-batch 1 --max-len 4096
LONG='{"messages":[{"role":"user","content":"What is 1+2?"}],"max_tokens":100000,"stream":true,"temperature":1,"ignore_eos":true}'
curl -sN -m 30 "$URL/v1/chat/completions" -d "$LONG" >/dev/null 2>&1 &
C1=$!
sleep 0.5
curl -sN -m 30 "$URL/v1/chat/completions" -d "$LONG" >/dev/null 2>&1 &
C2=$!
sleep 0.5
kill -TERM "$PID"
wait "$PID"
rc=$?
wait "$C1" "$C2"
[ $rc = 0 ] && ! grep -q "LeakSanitizer" "$TMP/busy.err" && ok sigterm-with-streams-in-flight ||
    { not_ok sigterm-with-streams-in-flight; grep -A8 "ERROR" "$TMP/busy.err" >&2; }

# A bf16 KV cache and bf16 weights (cpu): answers like the main server's, with n samples.
start kv16 --matmul bf16 --kv-cache bf16 --max-batch 4
post /v1/chat/completions "$(echo "$Q" | jq -c '. + {n: 3, temperature: 0.8, seed: 1}')" >"$TMP/kv16.json"
jq -e '(.choices | length) == 3 and all(.choices[]; .finish_reason == "stop" or .finish_reason == "length")' \
    "$TMP/kv16.json" >/dev/null && ok kv-cache-bf16 || { not_ok kv-cache-bf16; cat "$TMP/kv16.json" "$TMP/kv16.err" >&2; }
# Greedy there keeps only each step's argmax (the head's int8 screen, where the CPU has
# AVX-512 VNNI): the text of rollout's with every logit computed.
post /v1/chat/completions "$Q" >"$TMP/kv16g.json"
echo '{"id":"q","messages":[{"role":"user","content":"What is 123+456?"}]}' | TP_HEAD_SCREEN=0 "$BIN/rollout" -q \
    -m "$TMP/model" --template chatml --allow-template-mismatch --greedy --max-new-tokens 80 --matmul bf16 \
    --kv-cache bf16 >"$TMP/kv16g.jsonl"
[ "$(jq -r '.choices[0].message.content' "$TMP/kv16g.json")" = "$(jq -r .text "$TMP/kv16g.jsonl")" ] &&
    [ "$(jq -r .text "$TMP/kv16g.jsonl")" != "" ] && ok greedy-bf16-equals-unscreened-rollout ||
    { not_ok greedy-bf16-equals-unscreened-rollout; cat "$TMP/kv16g.json" "$TMP/kv16g.jsonl" >&2; }
kill -TERM "$PID"
wait "$PID"

# IPv6 loopback, where the machine has it.
start v6 --host ::1
if [ -n "$URL" ]; then
    [ "$(curl -s -g "$URL/health" | jq -r .status)" = ok ] && ok ipv6-loopback || not_ok ipv6-loopback
    kill -TERM "$PID"
    wait "$PID"
else
    kill -TERM "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    echo "skip - ipv6-loopback: $(tail -n 1 "$TMP/v6.err")"
fi

# An API key from the environment: 401 without it, 200 with it, never printed.
export THINKPIPE_TEST_KEY=sk-test-4f2a9
start keyed --api-key-env THINKPIPE_TEST_KEY
[ "$(code "$URL/v1/models")" = 401 ] && jq -e '.error.type == "authentication_error"' "$TMP/body" >/dev/null && ok no-key-401 || not_ok no-key-401
[ "$(code -H "Authorization: Bearer $THINKPIPE_TEST_KEY" "$URL/v1/models")" = 200 ] && ok key-200 || not_ok key-200
grep -q "$THINKPIPE_TEST_KEY" "$TMP/keyed.err" && not_ok key-never-printed || ok key-never-printed
kill -TERM "$PID"
wait "$PID"
finish
