#!/bin/sh
# Model core speed: one training step (forward, backward, gradient clipping, AdamW) of a Qwen3-shaped model (8 layers, hidden
# 512, 8 query / 4 KV heads, head_dim 64, intermediate 1408, vocab 32,000) on B=4 rows of
# T=512 tokens, thinkpipe (CPU backend) against PyTorch eager (transformers, fp32, same
# thread count) in one run on this machine. Prints medians, peak RSS and the ratios.
# Needs the reference venv (tests/ref/setup-venv.sh) for the PyTorch side.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build/release}
PY=${THINKPIPE_REF_PYTHON:-$HOME/.cache/thinkpipe-ref-venv/bin/python}
STEPS=${STEPS:-5}
B=${B:-4}
T=${T:-512}
THREADS=$(nproc)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cat >"$TMP/config.json" <<'JSON'
{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 32000, "hidden_size": 512,
 "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
 "head_dim": 64, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
 "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "float32"}
JSON
echo "model bench: Qwen3-shaped, 8 layers, hidden 512, vocab 32000, B=$B T=$T, $THREADS threads, median of $STEPS steps"
run() {  # run LABEL CMD... -> "LABEL <stdout line> rss_kb N"
    /usr/bin/time -f "%M" -o "$TMP/rss" "$@" >"$TMP/out" 2>"$TMP/err" || { echo "$1 failed:"; cat "$TMP/err"; return 1; }
    echo "$(cat "$TMP/out") rss_kb $(cat "$TMP/rss")"
}
tp=$(OMP_NUM_THREADS=$THREADS run "$BUILD/bench/model_step" "$TMP/config.json" "$B" "$T" "$STEPS") || exit 1
tpr=$(OMP_NUM_THREADS=$THREADS run "$BUILD/bench/model_step" "$TMP/config.json" "$B" "$T" "$STEPS" --recompute) || exit 1
echo "$tp"
echo "$tpr (--recompute)"
if [ -x "$PY" ]; then
    for attn in sdpa eager; do
        pt=$(THREADS=$THREADS run "$PY" tests/bench/torch_step.py "$TMP/config.json" "$B" "$T" "$STEPS" "$attn") || continue
        echo "$pt"
        awk -v a="$tp" -v b="$pt" -v r="$tpr" 'BEGIN {
            split(a, x, " "); split(b, y, " "); split(r, z, " ");
            for (i in x) { if (x[i] == "tokens/s") ta = x[i+1]; if (x[i] == "rss_kb") ra = x[i+1] }
            for (i in y) { if (y[i] == "tokens/s") tb = y[i+1]; if (y[i] == "rss_kb") rb = y[i+1] }
            for (i in z) { if (z[i] == "rss_kb") rr = z[i+1] }
            printf "ratio vs torch (%s attention): tokens/s %.2fx, peak RSS %.2fx (%.0f vs %.0f MB; --recompute %.2fx)\n",
                   y[12], ta / tb, ra / rb, ra / 1024, rb / 1024, rr / rb }'
    done
else
    echo "(no PyTorch peer: run tests/ref/setup-venv.sh)"
fi
