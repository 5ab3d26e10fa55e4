#!/bin/sh
# Generation speed: the KV-cache engine under rollout against transformers' generate on a
# SmolLM2-135M-shaped model (random weights, same threads), prefill of 128-token prompts
# and 64 greedy decode steps at batch 1, 8 and 64, in one run on this machine: fp32 against
# fp32, then our bf16 weights (rollout --matmul bf16) with the fp32 KV cache and with a
# bf16 one (--kv-cache bf16) against transformers in bfloat16 (whose cache is bf16). The
# fp32 and the bf16 + bf16-cache steps keep only each row's argmax (through the head's
# int8 screen), as rollout --greedy runs them; the plain bf16 line writes logits.
# Then sampled decode as GRPO rollouts run it (temperature 1, top-p 0.95, batch 8 as one
# prompt's 8 samples): the engine (engine_bench) against generate(do_sample=True).
# Prints tokens/s, the ratios, and KV-cache bytes per token. Our decode figure is the
# median of GEN_REPEATS (5) repeats of the decode steps in one process (the machine is
# shared); transformers' the median of REPEATS (3) timed generates after a warm-up.
set -u
cd "$(dirname "$0")/../.."
. tests/bench/generate_env.sh
echo "generate bench: SmolLM2-135M shape, prompts of $P tokens, $D decode steps, $THREADS threads"
ratio() {  # ratio MODE "our line" "their line"
    echo "$2 $3" | awk -v mode="$1" '{ for (i = 1; i < NF; i++) { if ($i == "prefill_tok/s") p[++np] = $(i + 1); if ($i == "decode_tok/s") d[++nd] = $(i + 1) }
        printf "ratio vs transformers, %s, batch %s: decode %.2fx, prefill %.2fx\n", mode, $4, d[1] / d[2], p[1] / p[2] }'
}
for mode in fp32 bf16; do
    for B in 1 8 64; do
        tp=$(OMP_NUM_THREADS=$THREADS "$BUILD/bench/gen_step" "$CFG" "$B" "$P" "$D" $([ $mode = bf16 ] && echo bf16 ||
            echo argmax)) ||
            { echo "gen_step failed"; exit 1; }
        echo "$tp"
        tk=
        if [ $mode = bf16 ]; then
            tk=$(OMP_NUM_THREADS=$THREADS "$BUILD/bench/gen_step" "$CFG" "$B" "$P" "$D" bf16 kv-bf16 argmax) ||
                { echo "gen_step failed"; exit 1; }
            echo "$tk"
        fi
        [ -x "$PY" ] || continue
        dtype=float32
        [ $mode = bf16 ] && dtype=bfloat16
        pt=$(DTYPE=$dtype THREADS=$THREADS "$PY" tests/bench/torch_generate.py "$CFG" "$B" "$P" "$D" 2>/dev/null) ||
            { echo "torch failed"; continue; }
        echo "$pt"
        ratio $mode "$tp" "$pt"
        [ -n "$tk" ] && ratio "bf16 + bf16 KV cache" "$tk" "$pt"
    done
done

# Sampled: B 8 = one prompt's 8 samples sharing its prefill, bf16 products and caches on both sides.
tp=$(OMP_NUM_THREADS=$THREADS "$BUILD/bench/engine_bench" "$CFG" 8 8 "$P" "$D" --matmul bf16 --kv-cache bf16 2>/dev/null) ||
    { echo "engine_bench failed"; exit 1; }
echo "$tp"
if [ -x "$PY" ]; then
    pt=$(SAMPLE=1 DTYPE=bfloat16 THREADS=$THREADS "$PY" tests/bench/torch_generate.py "$CFG" 8 "$P" "$D" 2>/dev/null) &&
        echo "$pt" && echo "$tp $pt" | awk '{ for (i = 1; i < NF; i++) if ($i == "decode_tok/s") d[++nd] = $(i + 1)
            printf "ratio vs transformers, bf16 sampled (T 1, top-p 0.95), batch 8: decode %.2fx\n", d[1] / d[2] }'
fi
