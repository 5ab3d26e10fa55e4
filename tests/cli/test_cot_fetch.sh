#!/bin/sh
# cot-fetch against the test teacher (tests/server/teacher-server.c): every fault the
# teacher can inject (408, 409, 429 with Retry-After, 500, 503, hangs, slow streams, dropped and
# malformed streams, keep-alive lines) still ends with every (id, sample) exactly once and
# the same traces as a clean run; resume after kill -9; --failed; --cache; --budget; the
# API key stays secret; inline <think> reasoning is normalised; streamed = not streamed.
. "$(dirname "$0")/lib.sh"
CF="$BIN/cot-fetch"
TS="$(dirname "$BIN")/tests/teacher-server"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
[ -x "$TS" ] || { echo "skip - cot-fetch: no teacher-server built"; finish; exit; }

expect help 0 "" "$CF" --help
expect version 0 "" "$CF" --version
expect no-base-url 2 "--base-url URL is required" "$CF" --model m -o x
expect no-output 2 "-o OUT.jsonl is required" "$CF" --base-url http://127.0.0.1:1 --model m
expect bad-param 2 "--param" "$CF" --base-url http://x --model m -o x --param 'k=not json'

sh "$ROOT/samples/addition/make.sh" 40 5 | jq -c -s 'to_entries[] |
    {id: "q\(.key)", problem: .value.messages[0].content, answer: (.value.messages[1].content | capture("so (?<a>[0-9]+)$").a)}' \
    >"$TMP/probs.jsonl"

start() {  # start NAME ARGS...: a teacher on a free port; sets URL and PID
    name=$1
    shift
    "$TS" --port 0 --seed 3 --log "$TMP/$name.log" "$@" 2>"$TMP/$name.err" &
    PID=$!
    i=0
    while ! grep -qs 'listening on' "$TMP/$name.err" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    URL=$(sed -n 's/.*listening on \(https*:[^ ]*\).*/\1/p' "$TMP/$name.err" | head -n 1)
}
stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
fetch() {  # fetch OUT ARGS...
    out=$1
    shift
    "$CF" -q --base-url "$URL/v1" --model teacher-r1 -n 2 -c 16 --seed 7 --retry-base 0.05 -o "$out" "$@"
}
# what must not depend on faults: the pairs and their texts, sorted
canon() { jq -c '{id, sample, reasoning, content, finish_reason, usage}' "$1" | sort; }

start clean
fetch "$TMP/clean.jsonl" "$TMP/probs.jsonl"
[ $? = 0 ] && [ "$(wc -l <"$TMP/clean.jsonl")" = 80 ] && ok clean-run || not_ok clean-run
jq -s -e 'all(.[]; (.reasoning | length) > 0 and .model == "teacher-r1" and (.request.hash | length) == 64 and
    .request.params.temperature == 0.6 and .request.params.top_p == 0.95 and .latency_ms >= 0) and
    (map(select(.finish_reason == "stop")) | all(.content | test("boxed"))) and
    ([.[] | "\(.id)/\(.sample)"] | unique | length) == 80' "$TMP/clean.jsonl" >/dev/null &&
    ok trace-fields || not_ok trace-fields
canon "$TMP/clean.jsonl" >"$TMP/clean.canon"
# connections are reused: 80 requests, 16 in flight, at most 16 connections
"$CF" --base-url "$URL/v1" --model teacher-r1 -n 2 -c 16 -o "$TMP/conn.jsonl" "$TMP/probs.jsonl" 2>"$TMP/conn.err"
conns=$(sed -n 's/.* retries, \([0-9]*\) connections.*/\1/p' "$TMP/conn.err")
[ -n "$conns" ] && [ "$conns" -le 16 ] && ok connections-reused || { not_ok connections-reused; cat "$TMP/conn.err" >&2; }
fetch "$TMP/ns.jsonl" --no-stream "$TMP/probs.jsonl"
canon "$TMP/ns.jsonl" | cmp -s - "$TMP/clean.canon" && ok no-stream-same-traces || not_ok no-stream-same-traces
stop

# Every fault: the same traces in the end, with retries.
for fault in 408:0.3 409:0.3 429:0.3 500:0.3 503:0.3 drop:0.3 malformed:0.3 hang:0.2 slow:0.2 keepalive:0.5; do
    kind=${fault%%:*}
    start "f-$kind" --faults "$fault" --max-faults 2 --hang-ms 4000
    fetch "$TMP/f-$kind.jsonl" --stall-timeout 1 --max-retries 5 "$TMP/probs.jsonl" 2>"$TMP/f-$kind.cf"
    rc=$?
    stop
    faults=$(jq -s '[.[] | select(.fault != null and .fault != "none")] | length' "$TMP/f-$kind.log")
    if [ $rc = 0 ] && [ "$faults" -gt 0 ] && canon "$TMP/f-$kind.jsonl" | cmp -s - "$TMP/clean.canon"; then
        ok "fault-$kind-complete-and-exact"
    else
        not_ok "fault-$kind-complete-and-exact"
        echo "  $kind: rc $rc, $faults faults injected, $(wc -l <"$TMP/f-$kind.jsonl") traces; $(tail -n 2 "$TMP/f-$kind.cf")" >&2
    fi
done

# Resume: kill -9 in the middle of a slow run, rerun: every pair exactly once, same traces.
start slow --token-delay-ms 4
# (cot-fetch itself in the background, not a subshell: kill -9 must reach it)
"$CF" -q --base-url "$URL/v1" --model teacher-r1 -n 2 -c 4 --seed 7 -o "$TMP/resume.jsonl" "$TMP/probs.jsonl" &
cfpid=$!
sleep 1.5
kill -9 $cfpid 2>/dev/null
wait $cfpid 2>/dev/null
part=$(wc -l <"$TMP/resume.jsonl")
fetch "$TMP/resume.jsonl" -c 16 "$TMP/probs.jsonl"
stop
if [ "$part" -gt 0 ] && [ "$part" -lt 80 ] && canon "$TMP/resume.jsonl" | cmp -s - "$TMP/clean.canon"; then
    ok resume-after-kill-9
else
    not_ok resume-after-kill-9
    echo "  $part lines before the kill, $(wc -l <"$TMP/resume.jsonl") after" >&2
fi

# Failures for good go to --failed (nothing dropped), exit 1; a rerun completes.
start broken --faults 500:1 --max-faults 1000
fetch "$TMP/b.jsonl" --max-retries 1 --failed "$TMP/failed.jsonl" "$TMP/probs.jsonl" 2>/dev/null
rc=$?
stop
[ $rc = 1 ] && [ "$(wc -l <"$TMP/failed.jsonl")" = 80 ] && [ ! -s "$TMP/b.jsonl" ] &&
    jq -s -e 'all(.[]; .error == "HTTP 500: injected fault (after 2 attempts)" or (.error | test("^HTTP 500"))) and
        all(.[]; .attempts == 2 and .status == 500)' "$TMP/failed.jsonl" >/dev/null &&
    ok failed-file || not_ok failed-file
start clean2
fetch "$TMP/b.jsonl" "$TMP/probs.jsonl"
canon "$TMP/b.jsonl" | cmp -s - "$TMP/clean.canon" && ok rerun-after-failures || not_ok rerun-after-failures

# --cache: a second run into another file sends no request.
fetch "$TMP/c1.jsonl" --cache "$TMP/cache" "$TMP/probs.jsonl"
before=$(wc -l <"$TMP/clean2.log")
fetch "$TMP/c2.jsonl" --cache "$TMP/cache" "$TMP/probs.jsonl"
after=$(wc -l <"$TMP/clean2.log")
[ "$before" = "$after" ] && canon "$TMP/c2.jsonl" | cmp -s - "$TMP/clean.canon" && ok cache-never-pays-twice ||
    { not_ok cache-never-pays-twice; echo "  $before requests before, $after after" >&2; }

# --budget: stops cleanly with exit 3; a rerun with more money completes.
fetch "$TMP/money.jsonl" -c 2 --price-in 1000 --price-out 1000 --budget 5 "$TMP/probs.jsonl" 2>"$TMP/money.err"
rc=$?
n=$(wc -l <"$TMP/money.jsonl")
fetch "$TMP/money.jsonl" "$TMP/probs.jsonl"
[ $rc = 3 ] && [ "$n" -gt 0 ] && [ "$n" -lt 80 ] && canon "$TMP/money.jsonl" | cmp -s - "$TMP/clean.canon" &&
    ok budget-stops-cleanly || { not_ok budget-stops-cleanly; echo "  rc $rc, $n traces" >&2; }
stop

# The API key: required by the server, sent from the environment, never written anywhere.
export TP_TEST_TEACHER_KEY=sk-teacher-5e1f0c
start keyed --api-key-env TP_TEST_TEACHER_KEY
fetch "$TMP/k0.jsonl" --api-key-env TP_TEST_UNSET_KEY --max-retries 0 --failed "$TMP/kf.jsonl" "$TMP/probs.jsonl" 2>"$TMP/k0.err"
[ $? = 1 ] && jq -s -e 'all(.[]; .status == 401)' "$TMP/kf.jsonl" >/dev/null && ok no-key-401-final || not_ok no-key-401-final
TP_KEY_COPY=$TP_TEST_TEACHER_KEY fetch "$TMP/k1.jsonl" --api-key-env TP_KEY_COPY --cache "$TMP/kc" "$TMP/probs.jsonl" 2>"$TMP/k1.err"
rc=$?
stop
if [ $rc = 0 ] && ! grep -rq "$TP_TEST_TEACHER_KEY" "$TMP/k1.jsonl" "$TMP/kf.jsonl" "$TMP/kc" "$TMP/k0.err" "$TMP/k1.err"; then
    ok key-used-never-written
else
    not_ok key-used-never-written
fi

# --rpm: 20 requests at 300 a minute (5 a second after a first second's worth) take over 2 s;
# --progress draws the progress line; a {"messages"} record is answered.
start limits
head -n 10 "$TMP/probs.jsonl" >"$TMP/ten.jsonl"
t0=$(date +%s.%N)
fetch "$TMP/rpm.jsonl" --rpm 300 "$TMP/ten.jsonl"
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a >= 2.0) }' && [ "$(wc -l <"$TMP/rpm.jsonl")" = 20 ] &&
    ok rpm-limits-the-rate || { not_ok rpm-limits-the-rate; echo "  $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s" >&2; }
# --tpm 6000 (100 tokens a second) with answers of ~250 tokens one at a time: 4 requests wait
# for the tokens of the ones before; without it they take well under a second.
head -n 2 "$TMP/probs.jsonl" >"$TMP/two.jsonl"
t0=$(date +%s.%N)
fetch "$TMP/tpm.jsonl" -c 1 --tpm 6000 "$TMP/two.jsonl"
t1=$(date +%s.%N)
tokens=$(jq -s '[.[0:3][].usage.total_tokens] | add' "$TMP/tpm.jsonl")
awk -v a="$t0" -v b="$t1" -v t="$tokens" 'BEGIN { exit !(b - a >= (t - 100) / 100 * 0.9) }' &&
    [ "$(wc -l <"$TMP/tpm.jsonl")" = 4 ] && ok tpm-limits-tokens ||
    { not_ok tpm-limits-tokens; echo "  $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s for $tokens tokens" >&2; }
fetch "$TMP/param.jsonl" --param 'reasoning_effort="high"' --param 'max_tokens=9000' "$TMP/two.jsonl"
jq -s -e 'length == 4 and all(.[]; .request.params.reasoning_effort == "high" and .request.params.max_tokens == 9000)' \
    "$TMP/param.jsonl" >/dev/null && ok param-sent || not_ok param-sent
"$CF" --progress --base-url "$URL/v1" --model teacher-r1 -o "$TMP/prog.jsonl" "$TMP/ten.jsonl" 2>"$TMP/prog.err"
grep -q "10/10 done, 0 in flight, 0 retries, .* tok/s, \$0.0000" "$TMP/prog.err" && ok progress-line || { not_ok progress-line; cat "$TMP/prog.err" >&2; }
printf '%s\n' '{"id":"m1","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is 2+2?"}]}' |
    "$CF" -q --base-url "$URL/v1" --model teacher-r1 -o "$TMP/msg.jsonl" --cache "$TMP/mc"
stop
jq -e '.id == "m1" and (.content | test("boxed\\{4\\}")) and (.messages | length) == 2' "$TMP/msg.jsonl" >/dev/null &&
    ok messages-records || { not_ok messages-records; cat "$TMP/msg.jsonl" >&2; }

# TLS: certificates are verified (a self-signed one is refused, for good: no retries), and
# --cacert trusts a private CA.
if openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1; then
    start tls --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"
    case "$URL" in https://*) ;; *) not_ok tls-server-starts ;; esac
    fetch "$TMP/tls0.jsonl" --failed "$TMP/tlsf.jsonl" "$TMP/two.jsonl" 2>/dev/null
    rc=$?
    [ $rc = 1 ] && [ ! -s "$TMP/tls0.jsonl" ] && jq -s -e 'length == 4 and all(.[]; .attempts == 1 and
        (.error | test("certificate|SSL"; "i")))' "$TMP/tlsf.jsonl" >/dev/null && ok tls-verified || not_ok tls-verified
    fetch "$TMP/tls1.jsonl" --cacert "$TMP/cert.pem" "$TMP/two.jsonl"
    [ $? = 0 ] && [ "$(wc -l <"$TMP/tls1.jsonl")" = 4 ] && ok tls-cacert || not_ok tls-cacert
    stop
else
    echo "skip - tls-verified: no openssl to make a certificate"
fi

# Inline <think> reasoning (a server without a reasoning parser) is normalised.
start inline --reasoning inline
fetch "$TMP/in.jsonl" "$TMP/probs.jsonl"
stop
jq -s -e 'all(.[]; (.reasoning | length) > 0 and (.content | test("think") | not))' "$TMP/in.jsonl" >/dev/null &&
    ok inline-think-normalised || not_ok inline-think-normalised
finish
