#!/bin/sh
# tensor-cat: conventions every program follows, and stream round trips.
. "$(dirname "$0")/lib.sh"
TC="$BIN/tensor-cat"
FIX="$(cd "$(dirname "$0")/../fixtures" && pwd)"

expect help 0 "" "$TC" --help
grep -q "^Usage: tensor-cat" "$TMP/stdout" && [ "$(wc -l <"$TMP/stdout")" -le 24 ] && ok help-fits-a-screen || not_ok help-fits-a-screen
expect version 0 "" "$TC" --version
grep -qx "tensor-cat (thinkpipe) [0-9.]*" "$TMP/stdout" && ok version-format || not_ok version-format
expect unknown-option 2 "tensor-cat: unrecognized option '--bogus'" "$TC" --bogus
expect usage-conflict 2 "tensor-cat: error: --pack cannot be combined" "$TC" --pack --values
expect bad-zstd-level 2 "--zstd: 42 is out of range [1, 19]" "$TC" --pack -z 42
expect missing-file 1 "tensor-cat: error: nope.stream: No such file or directory" "$TC" nope.stream

cat >"$TMP/in.jsonl" <<'JSON'
{"tensors":{"input_ids":{"dtype":"I32","data":[151643,8,9,10]},"loss_mask":{"dtype":"U8","data":[0,0,1,1]}},"metadata":{"producer":"test"}}
{"tensors":{"w":{"dtype":"BF16","shape":[2,2],"data":[1.5,-2,0.10009765625,1e-3]},"x":{"dtype":"F16","shape":[],"data":[65504]}},"metadata":null}
JSON
expect pack 0 "" "$TC" --pack -o "$TMP/a.stream" "$TMP/in.jsonl"
expect print-values 0 "" "$TC" --values "$TMP/a.stream"
mv "$TMP/stdout" "$TMP/a.jsonl"
expect repack 0 "" "$TC" --pack -o "$TMP/b.stream" "$TMP/a.jsonl"
same round-trip-is-byte-identical "$TMP/a.stream" "$TMP/b.stream"
expect pack-zstd 0 "" "$TC" --pack -z 3 -o "$TMP/a.stream.zst" "$TMP/in.jsonl"
expect print-zstd 0 "" "$TC" --values "$TMP/a.stream.zst"
sed 's/"file":"[^"]*"/"file":"-"/' "$TMP/stdout" >"$TMP/z.jsonl"
sed 's/"file":"[^"]*"/"file":"-"/' "$TMP/a.jsonl" >"$TMP/p.jsonl"
same zstd-reads-the-same "$TMP/z.jsonl" "$TMP/p.jsonl"
"$TC" - <"$TMP/a.stream.zst" >"$TMP/stdin.jsonl" 2>/dev/null && grep -q '"file":"<stdin>"' "$TMP/stdin.jsonl" \
    && ok stdin-dash || not_ok stdin-dash
grep -q '"input_ids":{"dtype":"I32","shape":\[4\],"data":\[151643,8,9,10\]}' "$TMP/a.jsonl" && ok values-printed || not_ok values-printed
grep -q '"data":\[1.5,-2,0.10009765625,0.00099945068359375\]' "$TMP/a.jsonl" && ok bf16-decoded || not_ok bf16-decoded
expect check 0 "tensor-cat: 1 file, 2 records" "$TC" --check "$TMP/a.stream"
expect quiet-check 0 "" "$TC" --check -q "$TMP/a.stream"
[ ! -s "$TMP/stderr" ] && ok quiet-is-silent || not_ok quiet-is-silent
cat "$TMP/a.stream" "$TMP/a.stream" >"$TMP/cat.stream"
expect concatenated 0 "tensor-cat: 1 file, 4 records" "$TC" --check "$TMP/cat.stream"

# Truncation and junk are errors with the byte offset and status 1.
head -c 100 "$TMP/a.stream" >"$TMP/cut.stream"
expect truncated 1 "tensor-cat: error: $TMP/cut.stream: record 0 at byte offset 0: truncated" "$TC" "$TMP/cut.stream"
expect jsonl-not-stream 1 "looks like JSON text, not a tensor stream" "$TC" "$TMP/in.jsonl"
printf '{"tensors":{"a":{"dtype":"U8","data":[256]}}}\n' >"$TMP/bad.jsonl"
expect pack-out-of-range 1 "bad.jsonl:1: tensor 'a': data[0] does not fit U8" "$TC" --pack -o "$TMP/x" "$TMP/bad.jsonl"
printf '{"tensors":{"a":{"dtype":"U8","shape":[3],"data":[1]}}}\n' >"$TMP/bad.jsonl"
expect pack-shape-mismatch 1 "shape holds 3 elements but \"data\" has 1" "$TC" --pack -o "$TMP/x" "$TMP/bad.jsonl"
printf '{"tensors":{"a":{"dtype":"U8","data":[1]}}}\n{oops\n' >"$TMP/bad.jsonl"
expect pack-bad-json 1 "bad.jsonl:2: invalid JSON" "$TC" --pack -o "$TMP/x" "$TMP/bad.jsonl"

# A .safetensors file is a one-record stream; archives and compression work as inputs.
expect safetensors-file 0 "" "$TC" "$FIX/safetensors/ref.safetensors"
grep -q '"model.embed_tokens.weight":{"dtype":"F32","shape":\[7,5\]}' "$TMP/stdout" && ok safetensors-listed || not_ok safetensors-listed
(cd "$TMP" && tar -cf s.tar a.stream && zstd -q s.tar -o s.tar.zst)
expect archive-member 0 "" "$TC" --check "$TMP/s.tar.zst/a.stream"
expect archive-needs-member 1 "is a tar archive; name the member to read, e.g. $TMP/s.tar.zst/a.stream" "$TC" "$TMP/s.tar.zst"
finish
