#!/bin/sh
# teacher-server: the stand-in teacher API (tests/server/teacher-server.c) driven with curl —
# health and models, R1-style answers (deterministic with a seed, streamed deltas adding up to
# the whole answer, inline <think>, mixed placements), the share of wrong and truncated
# answers, max_tokens, OpenAI-style errors, every fault kind and that retries get through,
# fault rates, API keys, the request log, and a clean stop.
. "$(dirname "$0")/lib.sh"
TS="$(dirname "$BIN")/tests/teacher-server"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
command -v curl >/dev/null 2>&1 || { echo "skip - teacher-server: curl not installed"; finish; exit; }
[ -x "$TS" ] || { not_ok "teacher-server-built"; echo "  $TS is missing" >&2; finish; exit; }

expect help 0 "" "$TS" --help
grep -q 'keepalive' "$TMP/stdout" && grep -q -- '--max-faults' "$TMP/stdout" && ok help-tells-faults || not_ok help-tells-faults
expect version 0 "" "$TS" --version
grep -q '^teacher-server (thinkpipe) ' "$TMP/stdout" && ok version-line || not_ok version-line
expect unknown-fault 2 "unknown kind 'nope'" "$TS" --faults nope:0.5
expect fault-rates-over-1 2 "over 1" "$TS" --faults 429:0.7,500:0.5
expect bad-reasoning 2 "field, inline or mixed" "$TS" --reasoning think
expect no-key 1 "THINKPIPE_TEST_UNSET: the variable is not set" "$TS" --api-key-env THINKPIPE_TEST_UNSET

start() {  # start NAME ARGS...: a server on a free port; sets URL and PID
    name=$1
    shift
    "$TS" --port 0 --seed 3 "$@" 2>"$TMP/$name.err" &
    PID=$!
    i=0
    while ! grep -qs 'listening on http://' "$TMP/$name.err" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    URL=$(sed -n 's/.*listening on \(http:.*\)/\1/p' "$TMP/$name.err" | head -n 1)
}
stop() {  # stop NAME: SIGTERM, exit status 0
    kill -TERM "$PID"
    wait "$PID"
    [ $? = 0 ] && ok "$1-stops-cleanly" || not_ok "$1-stops-cleanly"
}
chat() { curl -s -m 10 "$URL/v1/chat/completions" -d "$1"; }
code() { curl -s -m 10 -o "$TMP/body" -w '%{http_code}' "$@"; }
# The answer's bytes less "id" and "created", which differ between requests.
strip() { sed 's/"id":"[^"]*","object":"\([a-z.]*\)","created":[0-9]*/"object":"\1"/g' "$@"; }

Q='{"model":"teacher-r1","messages":[{"role":"user","content":"What is 123+456?\nPlease reason step by step, and put your final answer within \\boxed{}."}],"seed":2}'
QS=$(printf "%s\n" "$Q" | jq -c '. + {stream: true, stream_options: {include_usage: true}}')

start main --log "$TMP/main.log"
[ -n "$URL" ] && ok listening || { not_ok listening; cat "$TMP/main.err" >&2; finish; exit; }
[ "$(curl -s "$URL/health")" = '{"status":"ok"}' ] && ok health || not_ok health
[ "$(curl -s "$URL/v1/models")" = '{"object":"list","data":[{"id":"teacher-r1","object":"model"}]}' ] && ok models || not_ok models

# A worked answer: reasoning in reasoning_content, \boxed{579} in the content; the same
# request and seed give the same bytes.
chat "$Q" >"$TMP/a1.json"
jq -e '.object == "chat.completion" and .model == "teacher-r1" and (.id | startswith("chatcmpl-")) and
       .choices[0].message.role == "assistant" and .choices[0].finish_reason == "stop" and
       (.choices[0].message.content | contains("\\boxed{579}")) and
       (.choices[0].message.reasoning_content | length >= 150 and length <= 700 and contains("ones: 3+6=9")) and
       .usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens and .usage.prompt_tokens > 20 and
       .usage.completion_tokens == (((.choices[0].message | (.reasoning_content + .content) | length) + 3) / 4 | floor) and
       .usage.completion_tokens_details.reasoning_tokens <= .usage.completion_tokens' \
    "$TMP/a1.json" >/dev/null && ok answer-boxed || { not_ok answer-boxed; cat "$TMP/a1.json" >&2; }
chat "$Q" >"$TMP/a2.json"
strip "$TMP/a1.json" >"$TMP/a1.s" && strip "$TMP/a2.json" >"$TMP/a2.s"
! cmp -s "$TMP/a1.json" "$TMP/a2.json" && same same-seed-same-bytes "$TMP/a1.s" "$TMP/a2.s" || not_ok same-seed-same-bytes
# Without a seed each request is a new sample: six answers are not all alike.
for i in 1 2 3 4 5 6; do chat "$(printf "%s\n" "$Q" | jq -c 'del(.seed)')" | jq -c '.choices[0].message'; done | sort -u | wc -l >"$TMP/n"
[ "$(cat "$TMP/n")" -ge 2 ] && ok no-seed-new-samples || not_ok no-seed-new-samples

# Streaming: the deltas add up to the same request's whole answer, then finish, usage, [DONE].
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" >"$TMP/sse.txt"
[ "$(tail -n 2 "$TMP/sse.txt")" = 'data: [DONE]' ] && ok stream-done || not_ok stream-done
grep '^data: {' "$TMP/sse.txt" | sed 's/^data: //' >"$TMP/chunks.jsonl"
jq -s -e --slurpfile w "$TMP/a1.json" '$w[0] as $w | (map(select(.choices != [])) | [.[].choices[0].delta]) as $d |
    all(.[]; .object == "chat.completion.chunk" and .model == "teacher-r1") and (map(.id) | unique | length) == 1 and
    $d[0] == {role: "assistant", content: ""} and ($d | length) > 20 and
    ([$d[].reasoning_content // empty] | add) == $w.choices[0].message.reasoning_content and
    ([$d[].content // empty] | add) == $w.choices[0].message.content and
    .[-2].choices[0] == {index: 0, delta: {}, finish_reason: "stop"} and
    .[-1].choices == [] and .[-1].usage == $w.usage' "$TMP/chunks.jsonl" >/dev/null &&
    ok stream-adds-up || { not_ok stream-adds-up; head -c 2000 "$TMP/sse.txt" >&2; }
curl -sN -m 10 "$URL/v1/chat/completions" -d "$(printf "%s\n" "$Q" | jq -c '. + {stream: true}')" | grep '^data: {' |
    tail -n 1 | sed 's/^data: //' | jq -e '.choices[0].finish_reason == "stop" and (has("usage") | not)' >/dev/null &&
    ok stream-no-usage-unasked || not_ok stream-no-usage-unasked

# max_tokens below the trace's tokens truncates it.
chat "$(printf "%s\n" "$Q" | jq -c '. + {max_tokens: 10}')" | jq -e '.choices[0].finish_reason == "length" and
    .usage.completion_tokens <= 10 and (.choices[0].message.content | contains("boxed") | not) and
    (.choices[0].message.reasoning_content | length) == 40' >/dev/null && ok max-tokens-truncates || not_ok max-tokens-truncates
# No problem to work: no \boxed.
chat '{"messages":[{"role":"user","content":"Tell me about the sea."}]}' |
    jq -e '.choices[0].message.content == "I cannot tell." and (.choices[0].message.reasoning_content | length) > 50' \
        >/dev/null && ok no-problem || not_ok no-problem
# Numbers past 18 digits, or a result of 10^18 or more, are no problem either.
n=0
for q in "What is 1234567890123456789+1?" "What is 999999999999999999*1000?"; do
    chat "{\"messages\":[{\"role\":\"user\",\"content\":\"$q\"}]}" | jq -e '.choices[0].message.content == "I cannot tell."' >/dev/null && n=$((n + 1))
done
[ $n = 2 ] && ok too-large-no-problem || not_ok too-large-no-problem
chat '{"messages":[{"role":"user","content":[{"type":"text","text":"What is 12 * (-3)?"}]}],"seed":1}' |
    jq -e '.choices[0].message.content | test("boxed\\{-3[56]\\}")' >/dev/null && ok content-parts-and-negatives ||
    not_ok content-parts-and-negatives

# OpenAI-style errors.
[ "$(code "$URL/v1/chat/completions" -d '{bad')" = 400 ] && jq -e '.error.type == "invalid_request_error"' "$TMP/body" >/dev/null &&
    ok bad-json-400 || not_ok bad-json-400
[ "$(code "$URL/v1/chat/completions" -d '{"model":"m"}')" = 400 ] &&
    jq -e '.error.message | test("messages")' "$TMP/body" >/dev/null && ok no-messages-400 || not_ok no-messages-400
[ "$(code "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}],"n":2}')" = 400 ] &&
    ok n-2-400 || not_ok n-2-400
[ "$(code "$URL/v1/nothing")" = 404 ] && ok unknown-endpoint-404 || not_ok unknown-endpoint-404

# 200 problems: about 8% wrong (a \boxed number that is not the sum), 4% truncated.
sh "$ROOT/samples/addition/make.sh" 200 5 >"$TMP/problems.jsonl"
while read -r line; do
    chat "$(echo "$line" | jq -c '{messages: [.messages[0]], seed: 1}')"
    echo
done <"$TMP/problems.jsonl" >"$TMP/answers.jsonl"
jq -s -c --slurpfile p "$TMP/problems.jsonl" '[range(length) as $i | .[$i].choices[0] as $c |
    ($p[$i].messages[1].content | capture("so (?<n>[0-9]+)$").n) as $want |
    ($c.message.content | capture("boxed\\{(?<n>-?[0-9]+)\\}").n // null) as $got |
    if $c.finish_reason == "length" then (if $got == null and $c.message.content == "" then "truncated" else "bad" end)
    elif $got == $want then "correct" elif $got != null then "wrong" else "bad" end] |
    {correct: map(select(. == "correct")) | length, wrong: map(select(. == "wrong")) | length,
     truncated: map(select(. == "truncated")) | length, bad: map(select(. == "bad")) | length}' \
    "$TMP/answers.jsonl" >"$TMP/quality.json"
jq -e '.correct + .wrong + .truncated == 200 and .bad == 0 and .wrong >= 6 and .wrong <= 32 and
       .truncated >= 2 and .truncated <= 18' "$TMP/quality.json" >/dev/null &&
    ok "quality-shares: $(jq -r '"\(.wrong) wrong, \(.truncated) truncated of 200"' "$TMP/quality.json")" ||
    { not_ok quality-shares; cat "$TMP/quality.json" >&2; }

# The log: a whole JSON object per request, all 221 requests made above (health, models, 15
# answers, 4 errors, 200 problems).
n_req=$(wc -l <"$TMP/main.log")
jq -e -s 'all(.[]; (keys_unsorted | . == ["time","path","key","attempt","status","fault","stream","bytes"]) and
    (.time | type) == "number" and .bytes > 0)' "$TMP/main.log" >/dev/null && [ "$n_req" -eq 221 ] &&
    [ "$(grep -c '"path":"/v1/chat/completions".*"status":200' "$TMP/main.log")" -eq "$(grep -c '"key":"' "$TMP/main.log")" ] &&
    ok log-lines || { not_ok log-lines; head -n 3 "$TMP/main.log" >&2; }
stop main

# Inline reasoning: <think> in the content, streamed the same way; mixed: all three placements.
start inline --reasoning inline
chat "$Q" >"$TMP/in.json"
jq -e --slurpfile w "$TMP/a1.json" '.choices[0].message | (has("reasoning_content") | not) and
    .content == "<think>\n" + $w[0].choices[0].message.reasoning_content + "\n</think>\n\n" + $w[0].choices[0].message.content' \
    "$TMP/in.json" >/dev/null && ok inline-think || { not_ok inline-think; cat "$TMP/in.json" >&2; }
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" | grep '^data: {' | sed 's/^data: //' |
    jq -s -e --slurpfile w "$TMP/in.json" '[.[].choices[0].delta.content // empty] | add == $w[0].choices[0].message.content' \
        >/dev/null && ok inline-stream-adds-up || not_ok inline-stream-adds-up
stop inline
start mixed --reasoning mixed
for i in $(seq 30); do chat "{\"messages\":[{\"role\":\"user\",\"content\":\"What is $i+$i?\"}],\"seed\":1}"; echo; done |
    jq -s -e 'map(.choices[0].message | if has("reasoning_content") then 0 elif has("reasoning") then 1
        elif (.content | startswith("<think>\n")) then 2 else 3 end) | unique == [0, 1, 2]' >/dev/null &&
    ok mixed-placements || not_ok mixed-placements
stop mixed

# Failing statuses: the first attempt of a request fails, the next one is the normal answer.
for kind in 429 500 503; do
    start "f$kind" --faults "$kind:1" --max-faults 1
    c1=$(curl -s -m 10 -D "$TMP/h$kind" -o "$TMP/b$kind" -w '%{http_code}' "$URL/v1/chat/completions" -d "$Q")
    chat "$Q" | strip >"$TMP/r$kind"
    [ "$c1" = "$kind" ] && jq -e '.error.message and .error.type' "$TMP/b$kind" >/dev/null &&
        { [ "$kind" != 429 ] || grep -qi '^Retry-After: 1' "$TMP/h$kind"; } &&
        same "fault-$kind-then-answer" "$TMP/a1.s" "$TMP/r$kind" || { not_ok "fault-$kind-then-answer"; cat "$TMP/b$kind" >&2; }
    stop "f$kind"
done
# --max-faults 2 (the default): two failures, then the answer.
start f2 --faults 503:1 --log "$TMP/f2.log"
codes="$(code "$URL/v1/chat/completions" -d "$Q") $(code "$URL/v1/chat/completions" -d "$Q") $(code "$URL/v1/chat/completions" -d "$Q")"
[ "$codes" = "503 503 200" ] && jq -s -e 'map(.attempt) == [0, 1, 2] and map(.fault) == ["503", "503", null]' "$TMP/f2.log" \
    >/dev/null && ok max-faults-2-converges || { not_ok max-faults-2-converges; echo "  $codes" >&2; }
stop f2

# hang: nothing for --hang-ms, so the client's timeout fires; the retry answers at once.
start hang --faults hang:1 --hang-ms 500 --max-faults 1 --log "$TMP/hang.log"
curl -s -m 0.2 "$URL/v1/chat/completions" -d "$Q" >"$TMP/hang1"
rc=$?
chat "$Q" | strip >"$TMP/hang2"
[ $rc = 28 ] && [ ! -s "$TMP/hang1" ] && same hang-then-answer "$TMP/a1.s" "$TMP/hang2" || { not_ok hang-then-answer; echo "  curl $rc" >&2; }
curl -s -m 5 "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"What is 1+1?"}]}' >/dev/null
rc=$?
[ $rc = 52 ] && jq -s -e '.[-1] | .fault == "hang" and .status == 0' "$TMP/hang.log" >/dev/null &&
    ok hang-closes-after-hang-ms || { not_ok hang-closes-after-hang-ms; echo "  curl $rc" >&2; }
stop hang

# drop: a stream stops without [DONE] (and without the body's end); unstreamed, no reply at all.
start drop --faults drop:1 --max-faults 1
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" >"$TMP/drop.txt"
rc=$?
[ $rc = 18 ] && grep -q '^data: {' "$TMP/drop.txt" && ! grep -q '\[DONE\]' "$TMP/drop.txt" &&
    ok drop-stream || { not_ok drop-stream; echo "  curl $rc" >&2; }
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" | tail -n 2 | grep -qx 'data: \[DONE\]' && ok drop-then-answer || not_ok drop-then-answer
curl -s -m 10 "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"What is 2+2?"}]}' >/dev/null
[ $? = 52 ] && ok drop-unstreamed || not_ok drop-unstreamed
stop drop

# malformed: a data: line that is not JSON, then the stream ends without [DONE].
start malformed --faults malformed:1 --max-faults 1
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" >"$TMP/mal.txt"
bad=0
grep '^data: ' "$TMP/mal.txt" | sed 's/^data: //' >"$TMP/mal.lines"
while read -r l; do echo "$l" | jq -e . >/dev/null 2>&1 || bad=$((bad + 1)); done <"$TMP/mal.lines"
[ $bad = 1 ] && ! grep -q '\[DONE\]' "$TMP/mal.txt" && ok malformed-stream || { not_ok malformed-stream; tail -c 400 "$TMP/mal.txt" >&2; }
[ "$(code "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"What is 3+3?"}]}')" = 200 ] &&
    ! jq -e . "$TMP/body" >/dev/null 2>&1 && ok malformed-unstreamed || not_ok malformed-unstreamed
stop malformed

# keepalive: comment and blank lines between the chunks, and the whole answer.
start keepalive --faults keepalive:1
curl -sN -m 10 "$URL/v1/chat/completions" -d "$QS" >"$TMP/ka.txt"
grep '^data: {' "$TMP/ka.txt" | sed 's/^data: //' >"$TMP/ka.jsonl"
grep -q '^: keep-alive$' "$TMP/ka.txt" && awk 'prev == "" && $0 == "" { n++ } { prev = $0 } END { exit !(n > 0) }' "$TMP/ka.txt" &&
    [ "$(tail -n 2 "$TMP/ka.txt")" = 'data: [DONE]' ] &&
    jq -s -e --slurpfile w "$TMP/a1.json" '([.[].choices[0].delta.reasoning_content // empty] | add) == $w[0].choices[0].message.reasoning_content and
        ([.[].choices[0].delta.content // empty] | add) == $w[0].choices[0].message.content' "$TMP/ka.jsonl" >/dev/null &&
    ok keepalive-stream || { not_ok keepalive-stream; head -c 800 "$TMP/ka.txt" >&2; }
stop keepalive

# slow: 300 ms between chunks, so a second brings only a few; --token-delay-ms paces likewise.
start slow --faults slow:1
n=$(curl -sN -m 1 "$URL/v1/chat/completions" -d "$QS" | grep -c '^data: ')
[ "$n" -ge 2 ] && [ "$n" -le 5 ] && ok "slow-stream: $n chunks in 1 s" || { not_ok slow-stream; echo "  $n chunks" >&2; }
stop slow
start delay --token-delay-ms 100
n=$(curl -sN -m 1 "$URL/v1/chat/completions" -d "$QS" | grep -c '^data: ')
[ "$n" -ge 6 ] && [ "$n" -le 12 ] && ok "token-delay: $n chunks in 1 s" || { not_ok token-delay; echo "  $n chunks" >&2; }
stop delay

# Rates: over 200 first attempts about 30% get 429 and 10% are dropped; the faults in the log.
start rates --faults 429:0.3,drop:0.1 --log "$TMP/rates.log"
seq 200 | xargs -P 8 -I{} curl -s -m 5 -o /dev/null "$URL/v1/chat/completions" \
    -d '{"messages":[{"role":"user","content":"What is {}+1?"}]}'
jq -s -e 'length == 200 and (map(select(.fault == "429" and .status == 429)) | length) as $r |
    (map(select(.fault == "drop" and .status == 0)) | length) as $d | $r >= 40 and $r <= 80 and $d >= 8 and $d <= 35 and
    (map(select(.fault == null and .status == 200)) | length) == 200 - $r - $d' "$TMP/rates.log" >/dev/null &&
    ok fault-rates || { not_ok fault-rates; jq -s -c 'group_by(.fault) | map({(.[0].fault // "none"): length}) | add' "$TMP/rates.log" >&2; }
stop rates

# An API key from the environment: 401 without it, 200 with it; /health needs none.
export THINKPIPE_TEST_KEY=sk-test-7c31
start keyed --api-key-env THINKPIPE_TEST_KEY
[ "$(code "$URL/v1/chat/completions" -d "$Q")" = 401 ] && jq -e '.error.code == "invalid_api_key"' "$TMP/body" >/dev/null &&
    ok no-key-401 || not_ok no-key-401
[ "$(code -H "Authorization: Bearer wrong" "$URL/v1/models")" = 401 ] && ok wrong-key-401 || not_ok wrong-key-401
[ "$(code -H "Authorization: Bearer $THINKPIPE_TEST_KEY" "$URL/v1/chat/completions" -d "$Q")" = 200 ] &&
    strip "$TMP/body" >"$TMP/keyed" && same key-200 "$TMP/a1.s" "$TMP/keyed" || not_ok key-200
[ "$(code "$URL/health")" = 200 ] && ok health-needs-no-key || not_ok health-needs-no-key
grep -q "$THINKPIPE_TEST_KEY" "$TMP/keyed.err" && not_ok key-never-printed || ok key-never-printed
stop keyed

# A stop while a request hangs is prompt.
start busy --faults hang:1 --hang-ms 30000
curl -s -m 10 "$URL/v1/chat/completions" -d "$Q" >/dev/null 2>&1 &
CURL=$!
sleep 0.2
t0=$(date +%s%N)
stop busy-hanging
t1=$(date +%s%N)
wait "$CURL"
[ $(((t1 - t0) / 1000000)) -lt 2000 ] && ok stop-is-prompt || not_ok stop-is-prompt
finish
