# generate_env.sh — the settings bench_generate.sh and bench_generate_b8.sh share, sourced
# from the repository root: the build, transformers' Python, the SmolLM2-135M-shaped config,
# prompt and decode lengths, threads, and our decode repeats.
BUILD=${BUILD:-build/release}
PY=${THINKPIPE_REF_PYTHON:-$HOME/.cache/thinkpipe-ref-venv/bin/python}
CFG=tests/bench/configs/smollm2-135m.json
P=${P:-128}
D=${D:-64}
THREADS=${THREADS:-$(nproc)}
export GEN_REPEATS=${GEN_REPEATS:-5}
