#!/bin/sh
# cot-fetch's own cost: requests/s, CPU time and peak memory with 64, 256 and 1,024
# requests in flight against the test teacher on loopback with instant answers
# (tests/server/teacher-server.c, streaming). Targets (issue 7): >= 2,000 requests/s with
# 256 in flight using under one core; under 200 MB resident with 1,024 in flight.
# The teacher runs on the same machine and takes CPU too: its share is printed.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
N=${N:-20000}
TS=$BUILD/tests/teacher-server
CF=$BUILD/bin/cot-fetch
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null; rm -rf "$TMP"' EXIT
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "{\"id\":\"b%d\",\"problem\":\"What is %d+%d?\"}\n", i, i % 997, i % 991 }' >"$TMP/p.jsonl"
"$TS" --port 0 --seed 1 2>"$TMP/ts.err" &
PID=$!
i=0
while ! grep -q 'http://' "$TMP/ts.err" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$TMP/ts.err" | head -n 1)
echo "cot-fetch bench: $N requests (streamed), teacher at $URL, $(nproc) cores"
for c in 64 256 1024; do
    rm -f "$TMP/out.jsonl"
    ts0=$(awk '{ print $14 + $15 }' /proc/$PID/stat)
    /usr/bin/time -f "%e %U %S %M" -o "$TMP/time" "$CF" -q --base-url "$URL/v1" --model teacher-r1 -c "$c" \
        -o "$TMP/out.jsonl" "$TMP/p.jsonl"
    ts1=$(awk '{ print $14 + $15 }' /proc/$PID/stat)
    read -r wall user sys rss <"$TMP/time"
    lines=$(wc -l <"$TMP/out.jsonl")
    awk -v c="$c" -v n="$lines" -v w="$wall" -v u="$user" -v s="$sys" -v m="$rss" -v t="$((ts1 - ts0))" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
        printf "in flight %5d: %6d traces in %.2f s = %7.0f requests/s; cot-fetch CPU %.2f cores (%.1f s), %.0f MB resident; teacher %.2f cores\n",
            c, n, w, n / w, (u + s) / w, u + s, m / 1024, t / hz / w }'
done
