#!/bin/sh
# cot-filter's throughput: traces/s and MB/s with --verify --dedup near --decontaminate on
# N (100,000) synthetic traces, one core, against a Python pipeline doing the same
# (tests/bench/cot_filter_peer.py: math-verify, datasketch MinHashLSH, an 8-gram set)
# when the reference venv has them. Targets (issue 8): >= 20 MB/s, >= 50x the Python peer.
# The Python peer runs on the first N_PY (5,000) traces (its cost per trace does not depend
# on N); its rate is compared per trace and per MB. Ours: the median of 3 runs.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
N=${N:-100000}
N_PY=${N_PY:-5000}
CF=$BUILD/bin/cot-filter
VENV=${THINKPIPE_REF_VENV:-$HOME/.cache/thinkpipe-ref-venv}
BENCH=tests/fixtures/cot_filter/math500_excerpt.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -x "$CF" ] || { echo "cot-filter bench: $CF not built"; exit 0; }

# Deterministic synthetic traces (a Park-Miller generator, the same in every awk): ~3 KB of
# reasoning each from a 200-word vocabulary, 15% wrong answers, 5% near-duplicates of the
# trace before (two words changed), 1% problems copied from the MATH-500 excerpt.
awk -v n="$N" -v bench="$BENCH" '
function rnd(k) { seed = (seed * 16807) % 2147483647; return seed % k }
BEGIN {
    seed = 42
    nv = split("the a we so then this that is are of to in for and with by from as be it " \
        "sum product number digit column carry total value term factor divisor remainder " \
        "equation side both left right add subtract multiply divide check again wait let me " \
        "compute first second next last step case answer result since because therefore " \
        "hence thus if not only all each every both some many more less greater smaller " \
        "equal zero one two three four five six seven eight nine ten hundred thousand " \
        "square root cube power prime odd even integer fraction decimal percent ratio " \
        "triangle circle angle area length width height radius diameter perimeter volume " \
        "probability count ways choose order pair set element function graph line slope " \
        "point coordinate distance middle mean median mode range list sequence series " \
        "pattern rule formula expression simplify expand solve substitute plug verify " \
        "correct wrong mistake careful actually hmm okay alright now consider suppose " \
        "assume given known unknown variable constant coefficient degree polynomial root " \
        "solution interval bound maximum minimum positive negative whole part half quarter " \
        "double triple times plus minus over under above below", v, " ")
    nb = 0
    while ((getline line < bench) > 0) {  # the problems as JSON strings, quotes and escapes kept
        match(line, /"problem": *"([^"\\]|\\.)*"/)
        q = substr(line, RSTART, RLENGTH)
        sub(/^"problem": */, "", q)
        bp[++nb] = q
    }
    for (i = 0; i < n; i++) {
        a = rnd(900) + 100; b = rnd(900) + 100
        pq = "\"What is " a "+" b "?\""
        if (rnd(100) == 0 && nb) pq = bp[rnd(nb) + 1]  # (a JSON string already)
        if (rnd(20) == 0 && prev != "") {
            r = prev
            for (k = 0; k < 2; k++) { p = rnd(length(r) - 20) + 10; r = substr(r, 1, p) "zz" substr(r, p + 3) }
        } else {
            r = "Okay, I need " a " plus " b "."
            ns = 30 + rnd(20)
            for (s = 0; s < ns; s++) {
                nw = 8 + rnd(8); sent = ""
                for (w = 0; w < nw; w++) sent = sent (w ? " " : "") v[rnd(nv) + 1]
                r = r " " toupper(substr(sent, 1, 1)) substr(sent, 2) (rnd(4) ? "." : ", " rnd(1000) "+" rnd(1000) "=" rnd(2000) ".")
            }
        }
        prev = r
        said = a + b; if (rnd(100) < 15) said = said + 1 + rnd(9)
        printf "{\"id\":\"s%d\",\"problem\":%s,\"answer\":\"%d\",\"sample\":0,\"model\":\"synthetic\",\"reasoning\":\"%s\",\"content\":\"The answer is $\\\\boxed{%d}$.\",\"finish_reason\":\"stop\"}\n", i, pq, a + b, r, said
    }
}' >"$TMP/traces.jsonl"
MB=$(awk -v b="$(wc -c <"$TMP/traces.jsonl")" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "cot-filter bench: $N synthetic traces, $MB MB; --verify --dedup near --decontaminate (MATH-500 excerpt); one core"

RULES="--verify --dedup near --decontaminate $BENCH"
for k in 1 2 3; do
    /usr/bin/time -f "%e %U %S %M" -o "$TMP/time.$k" taskset -c 0 "$CF" -q $RULES --stats "$TMP/stats.json" \
        "$TMP/traces.jsonl" >"$TMP/kept.jsonl"
    cat "$TMP/time.$k"
done | sort -n | sed -n 2p >"$TMP/median"
read -r wall user sys rss <"$TMP/median"
kept=$(wc -l <"$TMP/kept.jsonl")
awk -v n="$N" -v w="$wall" -v mb="$MB" -v m="$rss" -v k="$kept" 'BEGIN {
    printf "cot-filter:    %7.0f traces/s, %6.1f MB/s (median of 3: %.2f s, %.0f MB resident); %d kept\n", n / w, mb / w, w, m / 1024, k }'
jq -c '[.rules[] | {(.rule): .rejected}] | add' "$TMP/stats.json" | sed 's/^/  rejected: /'

PY=$VENV/bin/python
if [ -x "$PY" ] && "$PY" -c 'import math_verify, datasketch' 2>/dev/null; then
    head -n "$N_PY" "$TMP/traces.jsonl" >"$TMP/py.jsonl"
    pmb=$(awk -v b="$(wc -c <"$TMP/py.jsonl")" 'BEGIN { printf "%.3f", b / 1e6 }')
    /usr/bin/time -f "%e %U %S %M" -o "$TMP/ptime" taskset -c 0 "$PY" tests/bench/cot_filter_peer.py \
        --decontaminate "$BENCH" "$TMP/py.jsonl" >"$TMP/py_kept.jsonl" 2>"$TMP/py.err" || { cat "$TMP/py.err"; exit 0; }
    read -r pwall puser psys prss <"$TMP/ptime"
    "$CF" -q $RULES "$TMP/py.jsonl" >"$TMP/c_kept.jsonl"
    same=$(jq -r .id "$TMP/py_kept.jsonl" "$TMP/c_kept.jsonl" | sort | uniq -d | wc -l)
    awk -v n="$N_PY" -v w="$pwall" -v mb="$pmb" -v m="$prss" -v cw="$wall" -v cn="$N" -v cmb="$MB" \
        -v pk="$(wc -l <"$TMP/py_kept.jsonl")" -v ck="$(wc -l <"$TMP/c_kept.jsonl")" -v same="$same" 'BEGIN {
        printf "python peer:   %7.0f traces/s, %6.2f MB/s (%d traces in %.1f s, %.0f MB resident)\n", n / w, mb / w, n, w, m / 1024
        printf "ratio: %.0fx the Python pipeline (traces/s)\n", (cn / cw) / (n / w)
        printf "agreement on the first %d: python keeps %d, cot-filter %d, both %d\n", n, pk, ck, same }'
else
    echo "python peer: skipped ($VENV lacks math_verify or datasketch: sh tests/ref/setup-venv.sh)"
fi
