#!/bin/sh
# Tokenizer speed: thinkpipe's tokenize against HF tokenizers (the Rust library via
# its Python binding) on the same ~21 MB of JSONL text, in one run on this machine.
# HF runs single-threaded (RAYON_NUM_THREADS=1: encode in a loop, and encode_batch)
# and with all threads (encode_batch); tokenize runs end to end (load, JSON parsing,
# output) with -j 1 and -j $(nproc), and $(nproc) independent -j 1 processes on
# parts of the text as the ceiling for -j. Prints medians of 3 runs and the ratios.
# Needs the reference venv (tests/ref/setup-venv.sh); without it, prints tokenize only.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
RUNS=${RUNS:-3}
PY=${THINKPIPE_REF_PYTHON:-$HOME/.cache/thinkpipe-ref-venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TK="$BUILD/bin/tokenize"
DATA=../shared/data

# Text: GSM8K train questions and answers, MATH-500 and AIME problems and solutions,
# the tokenizer corpus fixture and this repository's C sources; three passes.
{
    for f in "$DATA"/gsm8k/train.jsonl "$DATA"/gsm8k/test.jsonl; do jq -c '{text: .question}, {text: .answer}' "$f"; done
    jq -c '{text: .problem}, {text: .solution}' "$DATA"/math500/test.jsonl
    jq -c '{text: (.problem // .question // "")}, {text: (.solution // .answer // "" | tostring)}' "$DATA"/aime24/test.jsonl
    zstd -dc tests/fixtures/tokenizer/corpus.jsonl.zst
    for f in libcore/*.c libcore/*.h tools/*.c tests/unit/*.c; do jq -Rs -c '{text: .}' "$f"; done
} >"$TMP/one.jsonl"
cat "$TMP/one.jsonl" "$TMP/one.jsonl" "$TMP/one.jsonl" >"$TMP/text.jsonl"
MB=$(jq -j '.text' "$TMP/text.jsonl" | wc -c | awk '{printf "%.1f", $1 / 1e6}')
echo "tokenize bench: $(wc -l <"$TMP/text.jsonl") documents, $MB MB of text, $(nproc) cores, median of $RUNS"

# The same text cut into $(nproc) parts: independent single-threaded processes on them
# (each loading its own tokenizer) are the most a -j $(nproc) run could hope for here.
NP=$(nproc)
split -n "l/$NP" -d "$TMP/text.jsonl" "$TMP/part."

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_tk() {  # time_tk TOKENIZER THREADS [INPUT] -> seconds
    for _ in $(seq "$RUNS"); do
        s=$(date +%s.%N); "$TK" -q -t "$1" -e -j "$2" "${3:-$TMP/text.jsonl}" >/dev/null; e=$(date +%s.%N)
        echo "$e - $s" | bc -l
    done | median
}
time_parts() {  # time_parts TOKENIZER -> seconds for $NP concurrent -j1 processes, one per part
    for _ in $(seq "$RUNS"); do
        s=$(date +%s.%N)
        for p in "$TMP"/part.*; do "$TK" -q -t "$1" -e -j 1 "$p" >/dev/null & done
        wait
        e=$(date +%s.%N)
        echo "$e - $s" | bc -l
    done | median
}

for name in qwen3 llama3 deepseek-v3; do
    dir=tests/fixtures/tokenizer/$name
    tk1=$(time_tk "$dir" 1)
    tkn=$(time_tk "$dir" "$NP")
    parts=$(time_parts "$dir")
    load1=$(time_tk "$dir" 1 /dev/null)
    loadn=$(time_tk "$dir" "$NP" /dev/null)
    printf '%-12s tokenize -j1 %6.2f s %6.1f MB/s   -j%s %6.2f s %6.1f MB/s   scaling %.2fx\n' "$name" "$tk1" \
        "$(echo "$MB / $tk1" | bc -l)" "$NP" "$tkn" "$(echo "$MB / $tkn" | bc -l)" "$(echo "$tk1 / $tkn" | bc -l)"
    printf '%-12s %s independent -j1 processes on %s parts: %6.2f s (-j%s takes %.2fx their time); load %.3f s (-j1), %.3f s (-j%s); scaling without the load %.2fx\n' \
        "" "$NP" "$NP" "$parts" "$NP" "$(echo "$tkn / $parts" | bc -l)" "$load1" "$loadn" "$NP" \
        "$(echo "($tk1 - $load1) / ($tkn - $loadn)" | bc -l)"
    if [ -x "$PY" ]; then
        zstd -dc "$dir/tokenizer.json.zst" >"$TMP/tokenizer.json"
        RAYON_NUM_THREADS=1 "$PY" tests/bench/hf_tokenize.py "$TMP/tokenizer.json" "$TMP/text.jsonl" "$RUNS" >"$TMP/hf1"
        "$PY" tests/bench/hf_tokenize.py "$TMP/tokenizer.json" "$TMP/text.jsonl" "$RUNS" >"$TMP/hfn"
        loop=$(awk '$2=="encode-loop"{print $3}' "$TMP/hf1")
        batch1=$(awk '$2=="encode_batch"{print $3}' "$TMP/hf1")
        batchn=$(awk '$2=="encode_batch"{print $3}' "$TMP/hfn")
        printf '%-12s HF 1 thread: encode loop %6.2f s (%.1fx slower than tokenize -j1), encode_batch %6.2f s (%.1fx)\n' \
            "" "$loop" "$(echo "$loop / $tk1" | bc -l)" "$batch1" "$(echo "$batch1 / $tk1" | bc -l)"
        printf '%-12s HF %s threads: encode_batch %6.2f s (%.1fx slower than tokenize -j%s); HF load %s s\n' \
            "" "$(nproc)" "$batchn" "$(echo "$batchn / $tkn" | bc -l)" "$(nproc)" "$(awk '$2=="load"{print $3}' "$TMP/hf1")"
    else
        echo "             (no HF peer: run tests/ref/setup-venv.sh)"
    fi
done
