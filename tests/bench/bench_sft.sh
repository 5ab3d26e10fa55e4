#!/bin/sh
# sft-train end to end against the PyTorch training loop people write (tests/bench/torch_sft.py) on the same
# tensor stream: worked additions tokenized with the tiny BPE, a Qwen3-shaped model (8 layers, hidden 512,
# vocab 32,000) from random weights, micro-batches of 8 records padded to the longest, AdamW + clipping, the
# same thread count, one run on this machine. Prints training tokens/s (sft-train's own tokens_per_s: the
# training loop, not loading) and peak RSS of each whole process, and the ratios.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
PY=${THINKPIPE_REF_PYTHON:-$HOME/.cache/thinkpipe-ref-venv/bin/python}
STEPS=${STEPS:-20}
MICRO=${MICRO:-8}
THREADS=$(nproc)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cat >"$TMP/config.json" <<'JSON'
{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 32000, "hidden_size": 512,
 "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
 "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
 "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "float32"}
JSON
TINY=tests/fixtures/tokenizer/tiny/bpe.json
sh samples/addition/make.sh 400 1 >"$TMP/data.jsonl"
"$BUILD/bin/tokenize" -q -t "$TINY" --template chatml "$TMP/data.jsonl" -o "$TMP/data.stream"
echo "sft bench: Qwen3-shaped (8 layers, hidden 512, vocab 32000), $STEPS updates of $MICRO records, $THREADS threads"
/usr/bin/time -f "%M" -o "$TMP/rss" "$BUILD/bin/sft-train" -q --device cpu --init "$TMP/config.json" --tokenizer "$TINY" \
    -d "$TMP/data.stream" -o "$TMP/out" --lr 1e-4 --micro-batch "$MICRO" --steps "$STEPS" --weight-decay 0.1 \
    -j "$THREADS" >"$TMP/metrics.jsonl" || { echo "sft-train failed"; exit 1; }
tp=$(jq -s -r '.[-1].tokens_per_s' "$TMP/metrics.jsonl")
tp_rss=$(cat "$TMP/rss")
echo "thinkpipe sft-train tokens/s $tp peak_rss_mb $((tp_rss / 1024))"
if [ ! -x "$PY" ]; then
    echo "(no PyTorch peer: run tests/ref/setup-venv.sh)"
    exit 0
fi
"$BUILD/bin/tensor-cat" -q -v "$TMP/data.stream" >"$TMP/values.jsonl"
for attn in sdpa eager; do
    THREADS=$THREADS /usr/bin/time -f "%M" -o "$TMP/rss" "$PY" tests/bench/torch_sft.py "$TMP/config.json" "$MICRO" \
        "$STEPS" "$attn" <"$TMP/values.jsonl" >"$TMP/torch.txt" 2>"$TMP/torch.err" || { cat "$TMP/torch.err"; continue; }
    pt=$(awk '{ for (i = 1; i < NF; i++) if ($i == "tokens/s") print $(i + 1) }' "$TMP/torch.txt")
    pt_rss=$(cat "$TMP/rss")
    echo "torch ($attn) training loop tokens/s $pt peak_rss_mb $((pt_rss / 1024))"
    awk -v a="$tp" -v b="$pt" -v ra="$tp_rss" -v rb="$pt_rss" -v n="$attn" \
        'BEGIN { printf "ratio vs torch (%s): tokens/s %.2fx, peak RSS %.2fx\n", n, a / b, ra / rb }'
done
