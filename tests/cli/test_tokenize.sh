#!/bin/sh
# tokenize: the CLI contract (encode, decode, stream, templates, masks, packing) and bad input.
. "$(dirname "$0")/lib.sh"
TK="$BIN/tokenize"
TC="$BIN/tensor-cat"
FIX="$(cd "$(dirname "$0")/../fixtures" && pwd)/tokenizer"
TINY="$FIX/tiny/bpe.json"

expect help 0 "" "$TK" --help
grep -q "^Usage: tokenize" "$TMP/stdout" && [ "$(wc -l <"$TMP/stdout")" -le 24 ] && ok help-fits-a-screen || not_ok help-fits-a-screen
expect version 0 "" "$TK" --version
grep -qx "tokenize (thinkpipe) [0-9.]*" "$TMP/stdout" && ok version-format || not_ok version-format
expect no-tokenizer 2 "-t TOKENIZER is required" "$TK" --encode
expect no-mode 2 "choose a mode" "$TK" -t "$TINY"
expect two-modes 2 "choose one of --encode, --decode, --template" "$TK" -t "$TINY" -e -d
expect pack-needs-template 2 "need --template" "$TK" -t "$TINY" -e --pack 8
expect unknown-template 2 "unknown template \"bogus\"" "$TK" -t "$TINY" -T bogus
expect missing-tokenizer 1 "nope: No such file or directory" "$TK" -t nope -e

# Exact ids through the CLI, with one thread and with two (order kept).
expect encode-llama3 0 "5200 records, 474757 tokens" "$TK" -t "$FIX/llama3" -e -j 2 "$FIX/corpus.jsonl.zst"
zstd -dc "$FIX/llama3.ids.jsonl.zst" >"$TMP/want.jsonl"
same encode-llama3-equals-hf "$TMP/stdout" "$TMP/want.jsonl"
"$TK" -q -t "$FIX/llama3" -e -j 1 "$FIX/corpus.jsonl.zst" >"$TMP/j1.jsonl"
same threads-keep-order "$TMP/j1.jsonl" "$TMP/want.jsonl"

# The tiny tokenizer: HF's ids with and without the template post-processor.
jq -c '{text}' "$FIX/tiny/bpe.ids.jsonl" >"$TMP/tiny.jsonl"
jq -c '{ids}' "$FIX/tiny/bpe.ids.jsonl" >"$TMP/tiny.want"
jq -c '{ids: .special_ids}' "$FIX/tiny/bpe.ids.jsonl" >"$TMP/tiny.special"
"$TK" -q -t "$TINY" -e "$TMP/tiny.jsonl" >"$TMP/got" && same tiny-ids "$TMP/got" "$TMP/tiny.want"
"$TK" -q -t "$TINY" -e --add-special "$TMP/tiny.jsonl" >"$TMP/got" && same tiny-add-special "$TMP/got" "$TMP/tiny.special"
# DeepSeek has no template post-processor: add_bos_token in tokenizer_config.json adds BOS (id 0).
echo '{"text":"hi"}' | "$TK" -q -t "$FIX/deepseek-v3" -e --add-special | jq -e '.ids[0] == 0 and (.ids|length) == 2' >/dev/null \
    && ok deepseek-add-bos || not_ok deepseek-add-bos
echo '{"body":"x"}' | "$TK" -q -t "$TINY" -e --field body | jq -e '.ids|length == 1' >/dev/null && ok field-option || not_ok field-option

# Decode: the text comes back; specials can be skipped; bad ids are named.
"$TK" -q -t "$FIX/llama3" -d "$TMP/want.jsonl" | jq -c '{text}' >"$TMP/text.jsonl"
zstd -dc "$FIX/corpus.jsonl.zst" | jq -c '{text}' >"$TMP/corpus.jsonl"
same decode-round-trip "$TMP/text.jsonl" "$TMP/corpus.jsonl"
echo '{"ids":[0,84,81,1]}' | "$TK" -q -t "$TINY" -d --skip-special | jq -e '.text == "sp"' >/dev/null && ok skip-special || not_ok skip-special
printf '{"ids":[1]}\n{"ids":[999]}\n' >"$TMP/bad.jsonl"
expect decode-out-of-range 1 "bad.jsonl:2: token id 999 at position 0 is not in the vocabulary (size 400)" "$TK" -t "$TINY" -d "$TMP/bad.jsonl"
printf '{"ids":[1.5]}\n' >"$TMP/bad.jsonl"
expect decode-not-integer 1 "bad.jsonl:1: ids[0] is not an integer" "$TK" -t "$TINY" -d "$TMP/bad.jsonl"
printf '{"ids":"x"}\n' >"$TMP/bad.jsonl"
expect decode-not-array 1 "bad.jsonl:1: \"ids\" must be an array" "$TK" -t "$TINY" -d "$TMP/bad.jsonl"

# --stream: ids one per line (split inside multi-byte characters) give the exact text.
printf '{"text":"数学 👩‍👩‍👧 é"}\n' | "$TK" -q -t "$TINY" -e | jq -c '.ids[]' >"$TMP/one-per-line"
[ "$(wc -l <"$TMP/one-per-line")" -gt 10 ] && ok stream-input-is-split || not_ok stream-input-is-split
"$TK" -q -t "$TINY" -d --stream "$TMP/one-per-line" >"$TMP/streamed"
printf '数学 👩‍👩‍👧 é' >"$TMP/want-text"
same stream-decode "$TMP/streamed" "$TMP/want-text"

# Encode errors name the file and line.
printf '{"text":"ok"}\n{"txt":"no"}\n' >"$TMP/bad.jsonl"
expect missing-field 1 "bad.jsonl:2: \"text\" must be a string" "$TK" -t "$TINY" -e "$TMP/bad.jsonl"
printf '{"text":"ok"}\n\n{"text":}\n' >"$TMP/bad.jsonl"
expect bad-json 1 "bad.jsonl:3: invalid JSON" "$TK" -t "$TINY" -e "$TMP/bad.jsonl"
[ "$(wc -l <"$TMP/stdout")" -eq 1 ] && ok records-before-error-written || not_ok records-before-error-written

# Refused tokenizer kinds and malformed files.
expect refuse-wordpiece 1 "model type \"WordPiece\" is not supported" "$TK" -t "$FIX/tiny/wordpiece.json" -e
expect refuse-unigram 1 "model type \"Unigram\" is not supported" "$TK" -t "$FIX/tiny/unigram.json" -e
expect refuse-byte-fallback 1 "byte_fallback BPE (sentencepiece style" "$TK" -t "$FIX/tiny/byte_fallback.json" -e
sed 's/"type": "ByteLevel"/"type": "Metaspace"/' "$TINY" >"$TMP/meta.json"
expect refuse-pretokenizer 1 "pre-tokenizer type \"Metaspace\" is not supported" "$TK" -t "$TMP/meta.json" -e
jq -c '.added_tokens = [5]' "$TINY" >"$TMP/added.json"
expect added-token-not-object 1 "added_tokens[0]: needs an integer \"id\"" "$TK" -t "$TMP/added.json" -e
head -c 3000 "$TINY" >"$TMP/trunc.json"
expect truncated-json 1 "trunc.json:" "$TK" -t "$TMP/trunc.json" -e
grep -q "unexpected end of file" "$TMP/stderr" && ok truncated-json-says-why || not_ok truncated-json-says-why
sed 's/"Ġ t"/"Ġ zzzq"/' "$TINY" >"$TMP/merge.json"
grep -q '"Ġ t"' "$TINY" && expect bad-merge 1 "is not a byte-level token of the vocabulary" "$TK" -t "$TMP/merge.json" -e

# Templates: trained tokens are the assistant turn and its end-of-turn token.
cat >"$TMP/chat.jsonl" <<'JSON'
{"problem":"What is 2+3?","reasoning":"2+3=5","content":"\\boxed{5}"}
{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"again"},{"role":"assistant","content":"bye"}]}
JSON
expect template-auto 0 "template auto: qwen3" "$TK" -t "$FIX/qwen3" -T auto -o "$TMP/chat.stream" "$TMP/chat.jsonl"
trained() { "$TC" -v "$1" | jq -c '[.tensors.input_ids.data, .tensors.loss_mask.data] | transpose | map(select(.[1]==1)|.[0]) | {ids:.}' | "$TK" -q -t "$2" -d; }
trained "$TMP/chat.stream" "$FIX/qwen3" >"$TMP/trained"
printf '%s\n' '{"text":"<think>\n2+3=5\n</think>\n\n\\boxed{5}<|im_end|>"}' '{"text":"hello<|im_end|><think>\n\n</think>\n\nbye<|im_end|>"}' >"$TMP/want"
same qwen3-mask "$TMP/trained" "$TMP/want"
"$TK" -q -t "$FIX/qwen3" -T qwen3 --mask-history -o "$TMP/h.stream" "$TMP/chat.jsonl"
trained "$TMP/h.stream" "$FIX/qwen3" | sed -n 2p >"$TMP/trained"
printf '%s\n' '{"text":"<think>\n\n</think>\n\nbye<|im_end|>"}' >"$TMP/want"
same mask-history "$TMP/trained" "$TMP/want"
"$TK" -q -t "$FIX/qwen3" -T qwen3 --train-on-prompt -o "$TMP/a.stream" "$TMP/chat.jsonl"
"$TC" -v "$TMP/a.stream" | jq -e '.tensors.loss_mask.data | all(. == 1)' >/dev/null && ok train-on-prompt || not_ok train-on-prompt
"$TK" -q -t "$FIX/deepseek-v3" -T deepseek-r1 -o "$TMP/d.stream" "$TMP/chat.jsonl"
trained "$TMP/d.stream" "$FIX/deepseek-v3" | head -1 >"$TMP/trained"
printf '%s\n' '{"text":"<think>\n2+3=5\n</think>\n\n\\boxed{5}<｜end▁of▁sentence｜>"}' >"$TMP/want"
same deepseek-r1-mask "$TMP/trained" "$TMP/want"
"$TC" -v "$TMP/d.stream" | head -1 | jq -e '.tensors.input_ids.data[0] == 0 and .metadata.template == "deepseek-r1"' >/dev/null \
    && ok deepseek-r1-bos-and-metadata || not_ok deepseek-r1-bos-and-metadata
"$TK" -q -t "$FIX/llama3" -T llama3 -o "$TMP/l.stream" "$TMP/chat.jsonl"
trained "$TMP/l.stream" "$FIX/llama3" | head -1 | jq -e '.text == "<think>\n2+3=5\n</think>\n\n\\boxed{5}<|eot_id|>"' >/dev/null \
    && ok llama3-mask || not_ok llama3-mask

# Lengths and packing.
expect max-len-error 1 "chat.jsonl:1: 47 tokens, more than --max-len 40" "$TK" -t "$FIX/qwen3" -T qwen3 --max-len 40 -o "$TMP/x" "$TMP/chat.jsonl"
expect drop-long 0 "1 dropped" "$TK" -t "$FIX/qwen3" -T qwen3 --max-len 40 --drop-long -o "$TMP/x" "$TMP/chat.jsonl"
expect truncate 0 "1 truncated" "$TK" -t "$FIX/qwen3" -T qwen3 --max-len 40 --truncate -o "$TMP/x" "$TMP/chat.jsonl"
"$TC" "$TMP/x" | jq -s -e '.[0].tensors.input_ids.shape == [40]' >/dev/null && ok truncated-length || not_ok truncated-length
expect pack 0 "packed into 2 rows of 64 tokens" "$TK" -t "$FIX/qwen3" -T qwen3 --pack 64 -o "$TMP/p.stream" "$TMP/chat.jsonl"
"$TC" -v "$TMP/p.stream" | jq -s -c '[.[] | .tensors.seq_starts.data]' >"$TMP/starts"
echo '[[0,47],[0,28]]' >"$TMP/want"
same pack-seq-starts "$TMP/starts" "$TMP/want"
"$TC" -v "$TMP/p.stream" | jq -s -e '.[0].tensors.position_ids.data[47] == 0 and .[0].tensors.position_ids.data[46] == 46 and (.[0].tensors.loss_mask.data[47:] | all(. == 0))' >/dev/null \
    && ok pack-positions-and-padding || not_ok pack-positions-and-padding
expect pack-split 0 "packed into 2 rows" "$TK" -t "$FIX/qwen3" -T qwen3 --pack 64 --split -o "$TMP/s.stream" "$TMP/chat.jsonl"
"$TC" -v "$TMP/s.stream" | jq -s -c '[.[] | .tensors.seq_starts.data]' >"$TMP/starts"
echo '[[0,47],[0,11]]' >"$TMP/want"
same pack-split-seq-starts "$TMP/starts" "$TMP/want"
"$TC" -v "$TMP/s.stream" | jq -s -e '.[1].tensors.position_ids.data[0] == 17' >/dev/null && ok split-positions-continue || not_ok split-positions-continue
for seed in 1 2; do "$TK" -q -t "$FIX/qwen3" -T qwen3 --shuffle --seed $seed -o "$TMP/sh$seed" "$FIX/../chat/rendered.jsonl" 2>/dev/null || true; done
jq -c '.record' "$FIX/../chat/rendered.jsonl" | head -13 >"$TMP/records.jsonl"
"$TK" -q -t "$FIX/qwen3" -T qwen3 --shuffle --seed 7 -o "$TMP/s7a" "$TMP/records.jsonl"
"$TK" -q -t "$FIX/qwen3" -T qwen3 --shuffle --seed 7 -o "$TMP/s7b" "$TMP/records.jsonl"
"$TK" -q -t "$FIX/qwen3" -T qwen3 --shuffle --seed 8 -o "$TMP/s8" "$TMP/records.jsonl"
same shuffle-deterministic "$TMP/s7a" "$TMP/s7b"
cmp -s "$TMP/s7a" "$TMP/s8" && not_ok shuffle-seed-matters || ok shuffle-seed-matters
printf '{"messages":[{"role":"user","content":"a"},{"role":"tool","content":"b"}]}\n' >"$TMP/bad.jsonl"
expect bad-role 1 "bad.jsonl:1: messages[1].role \"tool\" is not supported" "$TK" -t "$TINY" -T chatml -o "$TMP/x" "$TMP/bad.jsonl"

# --train-bpe learns what HF's BpeTrainer learns (same vocabulary, same merges), and the
# tokenizer.json it writes loads and round-trips.
expect train-bpe 0 "5200 records" "$TK" --train-bpe 1000 -o "$TMP/trained.json" "$FIX/corpus.jsonl.zst"
canon() { zstd -dcf "$1" | jq -c '[.model.vocab, [.model.merges[] | if type=="string" then split(" ") else . end], [.added_tokens[] | .content]]'; }
canon "$TMP/trained.json" >"$TMP/ours"
canon "$FIX/tiny/trained-corpus.json.zst" >"$TMP/hf"
same train-bpe-equals-hf "$TMP/ours" "$TMP/hf"
"$TK" -q -t "$TMP/trained.json" -e "$FIX/corpus.jsonl.zst" | "$TK" -q -t "$TMP/trained.json" -d | jq -c '{text}' >"$TMP/rt"
same train-bpe-round-trip "$TMP/rt" "$TMP/corpus.jsonl"
expect train-bpe-no-t 2 "takes no -t" "$TK" -t "$TINY" --train-bpe 500
expect train-bpe-too-small 2 "--train-bpe: 100 is out of range" "$TK" --train-bpe 100
expect train-bpe-below-specials 1 "below 263" "$TK" --train-bpe 262 --special a --special b --special c --special d --special e --special f --special g "$TMP/tiny.jsonl"
finish
