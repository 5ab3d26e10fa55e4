#!/bin/sh
# cot-filter on real-looking traces from the test teacher (through cot-fetch, with the
# reasoning in its own field and inline in <think> tags) and on hand-written edge cases
# (tests/fixtures/cot_filter/edge.jsonl: each record says which rule must reject it):
# every record ends up kept or rejected exactly once, with its rule and a reason; the
# funnel and --stats add up; groups, tokens, bad input and the options' errors.
. "$(dirname "$0")/lib.sh"
CF="$BIN/cot-filter"
TS="$(dirname "$BIN")/tests/teacher-server"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
FIX="$ROOT/tests/fixtures/cot_filter"
[ -x "$CF" ] || { echo "skip - cot-filter: not built"; finish; exit; }

expect help 0 "" "$CF" --help
expect version 0 "" "$CF" --version
expect bad-dedup 2 "--dedup" "$CF" --dedup fuzzy
expect bad-bands 2 "B*R = 128" "$CF" --dedup near --bands 10x10
expect bad-where 2 "--where" "$CF" --where 'select(' "$FIX/edge.jsonl"
expect bad-lengths 2 "--min-len is above --max-len" "$CF" --min-len 10 --max-len 5
expect max-len-zero 2 "--max-len" "$CF" --max-len 0  # not "no limit"
expect bad-extract 2 "unknown extraction mode" "$CF" --verify --extract boxed,bar
"$CF" --help | grep -q -- '--progress' && grep -q 'progress' "$ROOT/man/man1/cot-filter.1" && ok progress-documented ||
    not_ok progress-documented

# ---- outputs: never an input, never two in one file ----
cp "$FIX/edge.jsonl" "$TMP/same.jsonl"
ln -s same.jsonl "$TMP/link.jsonl"
expect output-is-input 2 "-o $TMP/same.jsonl is also an input" "$CF" -q --verify -o "$TMP/same.jsonl" "$TMP/same.jsonl"
expect rejects-is-input-by-link 2 "--rejects $TMP/link.jsonl is also an input" \
    "$CF" -q --verify --rejects "$TMP/link.jsonl" "$FIX/math500_excerpt.jsonl" "$TMP/same.jsonl"
expect stats-is-benchmark 2 "--stats $TMP/same.jsonl is also an input" \
    "$CF" -q --decontaminate "$TMP/same.jsonl" --stats "$TMP/same.jsonl" "$FIX/edge.jsonl"
cmp -s "$FIX/edge.jsonl" "$TMP/same.jsonl" && ok inputs-untouched || not_ok inputs-untouched
expect rejects-on-stdout 2 "-o and --rejects are the same file (standard output)" "$CF" --verify --rejects - "$FIX/edge.jsonl"
expect stats-on-stdout 2 "-o and --stats are the same file" "$CF" --verify -o - --stats - "$FIX/edge.jsonl"
expect rejects-is-output 2 "-o and --rejects are the same file" "$CF" --verify -o "$TMP/o1" --rejects "$TMP/./o1" "$FIX/edge.jsonl"
expect rejects-is-stats 2 "--rejects and --stats are the same file" \
    "$CF" --verify -o "$TMP/o2" --rejects "$TMP/o3" --stats "$TMP/o3" "$FIX/edge.jsonl"
# what stays allowed: the rejects on stdout when the kept go to a file; stdin in, stdout out
"$CF" -q --verify -o "$TMP/o4" --rejects - "$FIX/edge.jsonl" >"$TMP/o4.rej" &&
    [ "$(cat "$TMP/o4" "$TMP/o4.rej" | wc -l)" = "$(wc -l <"$FIX/edge.jsonl")" ] && [ -s "$TMP/o4" ] && [ -s "$TMP/o4.rej" ] &&
    jq -e -s 'all(.[]; has("rule"))' "$TMP/o4.rej" >/dev/null && ok rejects-to-stdout || not_ok rejects-to-stdout
"$CF" -q --verify -o - - <"$FIX/edge.jsonl" | cmp -s - "$TMP/o4" && ok stdin-to-stdout || not_ok stdin-to-stdout
expect missing-file 1 "nope.jsonl" "$CF" --verify "$TMP/nope.jsonl"

# ---- hand-written edge cases: the rule each record names rejects it; the rest are kept ----
EDGE="--finish stop --require-think --max-repeat 0.3 --max-mix 0.1 --decontaminate $FIX/math500_excerpt.jsonl --verify --dedup near"
"$CF" $EDGE --rejects "$TMP/e.rej" --stats "$TMP/e.stats" "$FIX/edge.jsonl" >"$TMP/e.out" 2>"$TMP/e.err"
[ $? = 0 ] && ok edge-runs || { not_ok edge-runs; cat "$TMP/e.err" >&2; }
jq -e -s 'length > 0 and all(.[]; .expect == "kept")' "$TMP/e.out" >/dev/null && ok edge-kept-are-expected ||
    { not_ok edge-kept-are-expected; jq -c '{id, expect}' "$TMP/e.out" >&2; }
jq -e -s 'length > 0 and all(.[]; .rule == .expect and (.detail | length) > 0)' "$TMP/e.rej" >/dev/null &&
    ok edge-rejected-by-their-rule || { not_ok edge-rejected-by-their-rule; jq -c '{id, expect, rule, detail}' "$TMP/e.rej" >&2; }
# nothing lost, nothing twice
[ "$(cat "$TMP/e.out" "$TMP/e.rej" | jq -r .id | sort | uniq | wc -l)" = "$(wc -l <"$FIX/edge.jsonl")" ] &&
    [ "$(cat "$TMP/e.out" "$TMP/e.rej" | wc -l)" = "$(wc -l <"$FIX/edge.jsonl")" ] && ok edge-every-record-once ||
    not_ok edge-every-record-once
# kept records pass through byte for byte, in input order
grep -F '"expect":"kept"' "$FIX/edge.jsonl" >"$TMP/e.want"
same edge-kept-verbatim-in-order "$TMP/e.want" "$TMP/e.out"
# rejects keep every field of the record
jq -c 'del(.rule, .detail)' "$TMP/e.rej" | sort >"$TMP/e.rej.fields"
jq -c . "$FIX/edge.jsonl" | grep -v -F -f "$TMP/e.want" | sort >"$TMP/e.rej.want"
same rejects-keep-fields "$TMP/e.rej.want" "$TMP/e.rej.fields"
# the details say why
grep -q '"detail":"no final answer in content after </think>"' "$TMP/e.rej" && ok detail-boxed-inside-think ||
    not_ok detail-boxed-inside-think
jq -e -s 'map(select(.id == "math500-contaminated"))[0].detail | test("8-gram .* of .*math500_excerpt.jsonl:1$")' \
    "$TMP/e.rej" >/dev/null && ok detail-decontaminate-names-benchmark-line || not_ok detail-decontaminate-names-benchmark-line
jq -e -s 'map(select(.id == "exact-duplicate"))[0].detail | test("edge.jsonl:1 ")' "$TMP/e.rej" >/dev/null &&
    ok detail-dedup-names-first || not_ok detail-dedup-names-first
jq -e -s 'map(select(.id == "zh-en-mixing"))[0].detail | test("not cjk .*latin")' "$TMP/e.rej" >/dev/null &&
    ok detail-mix-names-scripts || not_ok detail-mix-names-scripts
# the funnel: in, then what is left after each rule in order, then out; --stats says the same
counts=$(for r in finish require-think repeat mix decontaminate verify dedup; do
    jq -r --arg r "$r" 'select(.rule == $r) | .id' "$TMP/e.rej" | wc -l
done | tr '\n' ' ')
stats=$(jq -r '[.rules[].rejected] | map(tostring) | join(" ")' "$TMP/e.stats")
[ "$counts" = "$stats " ] && ok stats-rejections-add-up || { not_ok stats-rejections-add-up; echo "  '$counts' vs '$stats'" >&2; }
jq -e --argjson n "$(wc -l <"$FIX/edge.jsonl")" --argjson k "$(wc -l <"$TMP/e.out")" \
    '.in == $n and .out == $k and .bad == 0 and ([.rules[].rule] == ["finish","require-think","repeat","mix","decontaminate","verify","dedup"]) and
     (.rules[-1].kept == $k) and ($n - ([.rules[].rejected] | add) == $k)' "$TMP/e.stats" >/dev/null &&
    ok stats-json || { not_ok stats-json; cat "$TMP/e.stats" >&2; }
awk '/^  in /{ i = $NF } /^  --verify /{ v = $(NF - 1) } /^  out /{ o = $2 } END { exit !(i == 21 && v > 0 && o > 0) }' "$TMP/e.err" &&
    grep -q '^  --finish stop  *19  *-2$' "$TMP/e.err" && ok funnel-on-stderr || { not_ok funnel-on-stderr; cat "$TMP/e.err" >&2; }
"$CF" -q --verify "$FIX/edge.jsonl" >/dev/null 2>"$TMP/q.err"
[ ! -s "$TMP/q.err" ] && ok quiet-no-funnel || not_ok quiet-no-funnel

# exact dedup: byte-identical traces only; --dedup-on problem: one trace per problem text
"$CF" -q --dedup exact --rejects "$TMP/x.rej" "$FIX/edge.jsonl" >/dev/null
[ "$(jq -r .id "$TMP/x.rej")" = "exact-duplicate" ] && ok dedup-exact || not_ok dedup-exact
"$CF" -q --dedup exact --dedup-on problem "$FIX/edge.jsonl" >"$TMP/dp.exact" && "$CF" -q --dedup near --dedup-on problem \
    "$FIX/edge.jsonl" >"$TMP/dp.near" && n_exact=$(wc -l <"$TMP/dp.exact") && n_near=$(wc -l <"$TMP/dp.near") &&
    [ "$n_exact" -gt 0 ] && jq -r .problem "$TMP/dp.exact" | sort | uniq -d | wc -l | grep -qx 0 &&
    [ "$n_near" -gt 0 ] && [ "$n_near" -lt 21 ] && ok dedup-on-problem || not_ok dedup-on-problem
# --where is jq; --min-len/--max-len count characters (code points) of reasoning + content
"$CF" -q --where '.sample == 0 and (.id | startswith("good"))' "$FIX/edge.jsonl" | jq -r .id | tr '\n' ' ' |
    grep -qx 'good-field good-inline ' && ok where-predicate || not_ok where-predicate
"$CF" -q --min-len 100 --max-len 700 --rejects "$TMP/l.rej" "$FIX/edge.jsonl" >"$TMP/l.out"
jq -e -s 'all(.[]; ((.reasoning // "") + (.content // "") | length) as $n | $n >= 100 and $n <= 700)' "$TMP/l.out" >/dev/null &&
    jq -e -s 'length > 0 and all(.[]; ((.reasoning // "") + (.content // "") | length) as $n | $n < 100 or $n > 700)' \
        "$TMP/l.rej" >/dev/null && ok length-characters || not_ok length-characters

# -t: lengths in tokens of the tokenizer (reasoning and content encoded apart, as sft sees them)
TOK="$ROOT/tests/fixtures/tokenizer/tiny/bpe.json"
if [ -x "$BIN/tokenize" ] && [ -f "$TOK" ]; then
    jq -c '{text: (.reasoning // "")}, {text: (.content // "")}' "$FIX/edge.jsonl" |
        "$BIN/tokenize" -q -t "$TOK" --encode | jq -s -c '[range(0; length; 2) as $i | (.[$i].ids | length) + (.[$i + 1].ids | length)]' >"$TMP/tok.n"
    limit=$(jq '(sort | .[length / 2 | floor])' "$TMP/tok.n")
    "$CF" -q -t "$TOK" --max-len "$limit" "$FIX/edge.jsonl" | jq -r .id >"$TMP/tok.kept"
    jq -r -s --slurpfile n "$TMP/tok.n" --argjson m "$limit" 'to_entries[] | select($n[0][.key] <= $m) | .value.id' \
        "$FIX/edge.jsonl" >"$TMP/tok.want"
    chars_kept=$("$CF" -q --max-len "$limit" "$FIX/edge.jsonl" | wc -l)
    same length-tokens "$TMP/tok.want" "$TMP/tok.kept"
    [ "$chars_kept" -lt "$(wc -l <"$TMP/tok.kept")" ] && ok tokens-are-not-characters || not_ok tokens-are-not-characters
else
    echo "skip - length-tokens: tokenize or the tiny tokenizer missing"
fi

# ---- traces from the test teacher, through cot-fetch ----
if [ -x "$TS" ] && [ -x "$BIN/cot-fetch" ]; then
    sh "$ROOT/samples/addition/make.sh" 60 5 | jq -c -s 'to_entries[] |
        {id: "q\(.key)", problem: .value.messages[0].content, answer: (.value.messages[1].content | capture("so (?<a>[0-9]+)$").a)}' \
        >"$TMP/probs.jsonl"
    "$TS" --port 0 --seed 5 2>"$TMP/ts.err" &
    PID=$!
    i=0
    while ! grep -qs 'listening on' "$TMP/ts.err" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    URL=$(sed -n 's/.*listening on \(https*:[^ ]*\).*/\1/p' "$TMP/ts.err" | head -n 1)
    "$BIN/cot-fetch" -q --base-url "$URL/v1" --model teacher-r1 -n 4 --seed 3 -o "$TMP/tr.jsonl" "$TMP/probs.jsonl"
    kill -TERM $PID 2>/dev/null
    wait $PID 2>/dev/null
    n=$(wc -l <"$TMP/tr.jsonl")
    [ "$n" = 240 ] && ok teacher-traces || not_ok teacher-traces
    # what a judge can see without cot-filter: the boxed number against the answer
    boxed='(.content | capture("boxed\\{(?<b>[0-9]+)\\}").b? // "")'
    jq -c "{id, sample, fin: .finish_reason, good: ($boxed == .answer)}" "$TMP/tr.jsonl" >"$TMP/tr.truth"
    "$CF" --finish stop --require-think --verify --rejects "$TMP/tr.rej" "$TMP/tr.jsonl" >"$TMP/tr.out" 2>"$TMP/tr.err"
    jq -e -s "length > 150 and all(.[]; .finish_reason == \"stop\" and $boxed == .answer)" "$TMP/tr.out" >/dev/null &&
        ok teacher-kept-are-correct || not_ok teacher-kept-are-correct
    jq -e -s 'map(select(.fin == "stop" and .good)) | length' "$TMP/tr.truth" | grep -qx "$(wc -l <"$TMP/tr.out")" &&
        ok teacher-all-correct-kept || not_ok teacher-all-correct-kept
    jq -e -s 'any(.[]; .rule == "verify") and any(.[]; .rule == "finish") and
        all(.[]; (.rule == "finish" and .finish_reason != "stop") or (.rule == "verify"))' "$TMP/tr.rej" >/dev/null &&
        ok teacher-rejects-wrong-and-truncated || not_ok teacher-rejects-wrong-and-truncated
    # the same traces with the reasoning inline (a server without a reasoning parser; cut traces unclosed)
    jq -c '.content = (if .finish_reason == "length" then "<think>\n" + .reasoning
        else "<think>\n" + .reasoning + "\n</think>\n\n" + .content end) | .reasoning = ""' "$TMP/tr.jsonl" >"$TMP/in.jsonl"
    "$CF" -q --require-think --verify --rejects "$TMP/in.rej" "$TMP/in.jsonl" | jq -c '{id, sample}' >"$TMP/in.kept"
    jq -c '{id, sample}' "$TMP/tr.out" >"$TMP/tr.kept"
    same inline-think-same-verdicts "$TMP/tr.kept" "$TMP/in.kept"
    jq -e -s 'all(.[]; if .finish_reason == "length" then .rule == "require-think" and (.detail | test("unterminated"))
        else .rule == "verify" end)' "$TMP/in.rej" >/dev/null && ok inline-unterminated-rejected || not_ok inline-unterminated-rejected

    # --keep-per-problem: at most K of each problem, the shortest / longest / first of those left
    for p in shortest longest first; do
        "$CF" -q --finish stop --verify --keep-per-problem 2 --prefer $p "$TMP/tr.jsonl" >"$TMP/k.$p"
        "$CF" -q --finish stop --verify "$TMP/tr.jsonl" >"$TMP/k.all"
        case $p in
        shortest) key='((.reasoning + .content) | length), input_line_number' ;;
        longest) key='(-((.reasoning + .content) | length)), input_line_number' ;;
        first) key='input_line_number' ;;  # (the order cot-fetch wrote them in)
        esac
        jq -c "{id, sample, k: [$key]}" "$TMP/k.all" | jq -s -c 'group_by(.id) | map(sort_by(.k) | .[0:2][] | {id, sample}) | sort' >"$TMP/k.want"
        jq -c '{id, sample}' "$TMP/k.$p" | jq -s -c 'sort' >"$TMP/k.got"
        same "keep-per-problem-$p" "$TMP/k.want" "$TMP/k.got"
    done
    # output order is input order even when records wait for their group
    jq -c '{id, sample}' "$TMP/k.shortest" >"$TMP/k.order"
    jq -c '{id, sample}' "$TMP/k.all" | grep -x -F -f "$TMP/k.order" | cmp -s - "$TMP/k.order" && ok groups-keep-input-order ||
        not_ok groups-keep-input-order

    # --drop-uniform-groups: problems whose samples are all right or all wrong go (every sample counts)
    "$CF" -q --drop-uniform-groups --rejects "$TMP/u.rej" "$TMP/tr.jsonl" | jq -r .id | sort -u >"$TMP/u.ids"
    jq -s -r 'group_by(.id)[] | select((map(.good) | unique | length) == 2) | .[0].id' "$TMP/tr.truth" | sort >"$TMP/u.want"
    [ -s "$TMP/u.want" ] && ok drop-uniform-groups-has-mixed-problems || not_ok drop-uniform-groups-has-mixed-problems
    same drop-uniform-groups "$TMP/u.want" "$TMP/u.ids"
    jq -e -s 'length > 0 and all(.[]; .rule == "uniform-group" and (.detail | test("all 4 samples of .* are correct")))' \
        "$TMP/u.rej" >/dev/null && ok uniform-detail || not_ok uniform-detail
    # --grouped: same result on input sorted by problem, decided group by group; an id that comes back is an error
    jq -s -c 'sort_by(.id, .sample)[]' "$TMP/tr.jsonl" >"$TMP/sorted.jsonl"
    "$CF" -q --drop-uniform-groups --keep-per-problem 1 --prefer shortest "$TMP/sorted.jsonl" >"$TMP/g1"
    "$CF" -q --grouped --drop-uniform-groups --keep-per-problem 1 --prefer shortest "$TMP/sorted.jsonl" >"$TMP/g2"
    [ -s "$TMP/g1" ] && ok grouped-keeps-some || not_ok grouped-keeps-some
    same grouped-same-result "$TMP/g1" "$TMP/g2"
    { jq -c 'select(.id == "q0")' "$TMP/sorted.jsonl"; jq -c 'select(.id == "q1")' "$TMP/sorted.jsonl"
      jq -c 'select(.id == "q0")' "$TMP/sorted.jsonl" | head -n 1; } >"$TMP/again.jsonl"
    expect grouped-id-again 1 "again.jsonl:9: problem \"q0\" again after other problems" \
        "$CF" --grouped --keep-per-problem 1 "$TMP/again.jsonl"
else
    echo "skip - teacher-traces: no teacher-server or cot-fetch built"
fi

# rewards instead of answers (dynamic sampling on rewarded rollouts); a rollout completion's
# problem is its "group"; --field text reads its text
cat >"$TMP/rw.jsonl" <<'EOF'
{"id":"c1","group":"p1","sample":0,"text":"<think>a</think>\\boxed{1}","finish_reason":"stop","answer":"1","reward":1}
{"id":"c2","group":"p1","sample":1,"text":"<think>b</think>\\boxed{2}","finish_reason":"stop","answer":"1","reward":0}
{"id":"c3","group":"p2","sample":0,"text":"<think>c</think>\\boxed{5}","finish_reason":"stop","answer":"5","reward":0.5}
{"id":"c4","group":"p2","sample":1,"text":"<think>d</think>\\boxed{5}","finish_reason":"stop","answer":"5","reward":0.5}
{"id":"c5","group":"p3","sample":0,"text":"<think>e</think>\\boxed{7}","finish_reason":"stop","answer":"7","reward":0}
EOF
"$CF" -q --drop-uniform-groups --rejects "$TMP/rw.rej" "$TMP/rw.jsonl" | jq -r .id | tr '\n' ' ' | grep -qx 'c1 c2 ' &&
    jq -e -s 'map(.detail) == ["all 2 samples of \"p2\" have reward 0.5", "all 2 samples of \"p2\" have reward 0.5", "all 1 samples of \"p3\" are wrong"]' \
        "$TMP/rw.rej" >/dev/null && ok uniform-by-reward-and-group || { not_ok uniform-by-reward-and-group; cat "$TMP/rw.rej" >&2; }
# a numeric group is a group too (not a fallback to the ids, which differ)
jq -c '.group |= (ltrimstr("p") | tonumber)' "$TMP/rw.jsonl" >"$TMP/ng.jsonl"
"$CF" -q --drop-uniform-groups --rejects "$TMP/ng.rej" "$TMP/ng.jsonl" | jq -r .id | tr '\n' ' ' | grep -qx 'c1 c2 ' &&
    jq -e -s 'map(.detail) == ["all 2 samples of \"2\" have reward 0.5", "all 2 samples of \"2\" have reward 0.5", "all 1 samples of \"3\" are wrong"]' \
        "$TMP/ng.rej" >/dev/null && ok uniform-by-numeric-group || { not_ok uniform-by-numeric-group; cat "$TMP/ng.rej" >&2; }
"$CF" -q --require-think --verify --field text "$TMP/rw.jsonl" | jq -r .id | tr '\n' ' ' | grep -qx 'c1 c3 c4 c5 ' &&
    ok field-text || not_ok field-text
expect field-hint 1 "rw.jsonl:1: no \"content\" field (a rollout completion? use --field text)" "$CF" --verify "$TMP/rw.jsonl"

# ---- bad input: named by file and line; --skip-bad rejects it as "bad-input" and goes on ----
head -n 2 "$FIX/edge.jsonl" >"$TMP/bad.jsonl"
printf '%s\n' '{"id":"n","problem":"1+1?","answer":true,"reasoning":"one and one","content":"\\boxed{2}","finish_reason":"stop"}' \
    '{"id":"t","problem":"1+2?","answer":"3","reasoning":"x","content":17,"finish_reason":"stop"}' \
    '{"id":"m","problem":"1+3?","reasoning":"x","content":"\\boxed{4}","finish_reason":"stop"}' '{"id":"j", "broken' >>"$TMP/bad.jsonl"
tail -n 1 "$FIX/edge.jsonl" >>"$TMP/bad.jsonl"
expect bad-answer-type 1 "bad.jsonl:3: \"answer\" is a boolean, not a string or a number" "$CF" --verify "$TMP/bad.jsonl"
expect bad-content-type 1 "bad.jsonl:4: \"content\" is a number, not a string" "$CF" --require-think "$TMP/bad.jsonl"
expect bad-json 1 "bad.jsonl:6:" "$CF" --finish stop "$TMP/bad.jsonl"
"$CF" --verify --skip-bad --rejects "$TMP/b.rej" --stats "$TMP/b.stats" "$TMP/bad.jsonl" >"$TMP/b.out" 2>"$TMP/b.err"
rc=$?
[ $rc = 0 ] && [ "$(jq -r .id "$TMP/b.out" | tr '\n' ' ')" = "good-field good-inline equivalent-forms " ] &&
    jq -e -s 'map(select(.rule == "bad-input") | .id) == ["n", "t", "m"]' "$TMP/b.rej" >/dev/null &&
    jq -e '.in == 7 and .bad == 4 and .out == 3' "$TMP/b.stats" >/dev/null &&
    grep -q 'bad.jsonl:5: no "answer" field' "$TMP/b.err" && ok skip-bad-rejects-and-counts ||
    { not_ok skip-bad-rejects-and-counts; cat "$TMP/b.err" "$TMP/b.stats" >&2; }

# ---- answers as datasets write them ----
# a bare answer as the whole content (trimmed: a number or LaTeX without spaces) is the
# answer by default; a numeric "answer" is compared as a number (AMC: 27.0)
printf '%s\n' '{"id":"bare","answer":"5","reasoning":"2+3","content":" 5\n"}' \
    '{"id":"bare-latex","answer":"0.5","reasoning":"half","content":"\\frac{1}{2}"}' \
    '{"id":"bare-inline","answer":"7","content":"<think>3+4</think>\n7"}' \
    '{"id":"amc-float","answer":27.0,"reasoning":"cube","content":"So \\boxed{27}."}' \
    '{"id":"int-number","answer":12,"reasoning":"dozen","content":"\\boxed{12}"}' \
    '{"id":"tenth","answer":0.1,"reasoning":"tenth","content":"\\boxed{\\frac{1}{10}}"}' \
    '{"id":"x-sentence","answer":"5","reasoning":"2+3","content":"I guess 5"}' \
    '{"id":"x-wrong-bare","answer":"5","reasoning":"2+3","content":"6"}' \
    '{"id":"x-braces","answer":"5","reasoning":"2+3","content":"5}{"}' \
    '{"id":"x-number","answer":28.0,"reasoning":"cube","content":"\\boxed{27}"}' >"$TMP/ans.jsonl"
"$CF" -q --verify --rejects "$TMP/ans.rej" "$TMP/ans.jsonl" >"$TMP/ans.out"
[ "$(jq -r .id "$TMP/ans.out" | tr '\n' ' ')" = "bare bare-latex bare-inline amc-float int-number tenth " ] &&
    jq -e -s 'map(.id) == ["x-sentence", "x-wrong-bare", "x-braces", "x-number"] and
        map(.detail) == ["no final answer in content", "\"6\" is not \"5\"", "no final answer in content", "\"27\" is not \"28\""]' \
        "$TMP/ans.rej" >/dev/null && ok verify-bare-and-numeric-answers ||
    { not_ok verify-bare-and-numeric-answers; cat "$TMP/ans.out" "$TMP/ans.rej" >&2; }
# --extract without bare: a marked answer only; bare alone: any answer part without spaces
"$CF" -q --verify --extract boxed "$TMP/ans.jsonl" | jq -r .id | tr '\n' ' ' | grep -qx 'amc-float int-number tenth ' &&
    "$CF" -q --verify --extract bare "$TMP/ans.jsonl" | jq -r .id | tr '\n' ' ' | grep -qx 'bare bare-latex bare-inline int-number tenth ' &&
    ok extract-bare-is-a-mode || not_ok extract-bare-is-a-mode

# TRL's conversational prompt: the problem is its last user message (for records and benchmarks)
jq -c '{id: "trl", prompt: [{role: "system", content: "Reason step by step."}, {role: "user", content: "An example: 1+1?"},
        {role: "assistant", content: "2"}, {role: "user", content: .problem}], reasoning: "r", content: "c"}' \
    "$FIX/math500_excerpt.jsonl" | head -n 2 >"$TMP/trl.jsonl"
jq -c '{id: "plain", prompt: "A question of another kind, nothing like any benchmark problem at all.", reasoning: "r", content: "c"}' \
    -n >>"$TMP/trl.jsonl"
"$CF" -q --decontaminate "$FIX/math500_excerpt.jsonl" --rejects "$TMP/trl.rej" "$TMP/trl.jsonl" | jq -r .id | grep -qx plain &&
    jq -e -s 'length == 2 and all(.[]; .rule == "decontaminate")' "$TMP/trl.rej" >/dev/null && ok trl-prompt-decontaminated ||
    { not_ok trl-prompt-decontaminated; cat "$TMP/trl.rej" >&2; }
head -n 1 "$TMP/trl.jsonl" >"$TMP/trl-bench.jsonl"
"$CF" -q --decontaminate "$TMP/trl-bench.jsonl" "$FIX/math500_excerpt.jsonl" | wc -l | grep -qx "$(($(wc -l <"$FIX/math500_excerpt.jsonl") - 1))" &&
    ok trl-prompt-as-benchmark || not_ok trl-prompt-as-benchmark

# details cut long texts at a character boundary, with "…" (never half a UTF-8 character)
long=$(awk 'BEGIN { s = "x"; for (i = 0; i < 150; i++) s = s "é"; print s }')
word=$(awk 'BEGIN { s = "y"; for (i = 0; i < 60; i++) s = s "é"; print s }')
words="$word $word $word $word $word $word $word $word $word"
jq -nc --arg l "$long" --arg w "$words" '{id: "long", problem: $w, answer: ("z" + $l), reasoning: "r", content: "\\boxed{\($l)}"}' >"$TMP/long.jsonl"
jq -nc --arg w "$words" '{problem: $w}' >"$TMP/long-bench.jsonl"
"$CF" -q --verify --rejects "$TMP/long.rej" "$TMP/long.jsonl" >/dev/null
"$CF" -q --decontaminate "$TMP/long-bench.jsonl" --rejects "$TMP/long2.rej" "$TMP/long.jsonl" >/dev/null
fffd=$(printf '\357\277\275')
cat "$TMP/long.rej" "$TMP/long2.rej" | jq -r .detail >"$TMP/long.details"
[ "$(wc -l <"$TMP/long.details")" = 2 ] && ! grep -q "$fffd" "$TMP/long.details" &&
    [ "$(grep -c '…' "$TMP/long.details")" = 2 ] && grep -q '"xé*…" with "zxé*…"$' "$TMP/long.details" &&
    grep -q '^8-gram "yé* yé*…" of ' "$TMP/long.details" &&
    ok details-cut-at-characters || { not_ok details-cut-at-characters; cat "$TMP/long.details" >&2; }

# several inputs and stdin: locations name the file
"$CF" -q --dedup exact --rejects "$TMP/two.rej" "$FIX/edge.jsonl" - <"$FIX/edge.jsonl" >/dev/null
jq -e -s 'length == 22 and (map(select(.id == "good-field"))[0].detail | test("edge.jsonl:1$"))' "$TMP/two.rej" >/dev/null &&
    ok several-inputs || not_ok several-inputs
finish
