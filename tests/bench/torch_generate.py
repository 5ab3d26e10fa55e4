"""transformers peer for tests/bench/bench_generate.sh: prefill and greedy decode of a random-initialised model
of the same config with model.generate (KV cache, eager CPU, same threads; fp32, or DTYPE=bfloat16;
greedy, or SAMPLE=1: temperature 1, top-p 0.95).
    torch_generate.py CONFIG.json B P D -> "torch gen batch B prefill_tok/s X decode_tok/s Y"
Prefill is timed as generate(max_new_tokens=1); decode as (generate(D+1 tokens) - that) / (B * D), each the
median of REPEATS (3) timed runs after a warm-up (the machine is shared: ours is a median too)."""
import json
import os
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path, B, P, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(1)
config = AutoConfig.for_model(**{k: v for k, v in json.load(open(cfg_path)).items() if k not in ("architectures", "torch_dtype")})
dtype = getattr(torch, os.environ.get("DTYPE", "float32"))
model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).eval()
ids = torch.randint(0, config.vocab_size, (B, P))
mask = torch.ones_like(ids)


sample = os.environ.get("SAMPLE", "0") == "1"
sampling = dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=0) if sample else dict(do_sample=False)


def run(new):
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                       pad_token_id=0, **sampling)
    return time.perf_counter() - t0


run(2)  # warm-up
repeats = max(1, int(os.environ.get("REPEATS", "3")))
t1s, tDs = [], []
for _ in range(repeats):
    t1s.append(run(1))
    tDs.append(run(D + 1))
t1, tD = sorted(t1s)[repeats // 2], sorted(tDs)[repeats // 2]
print(f"torch gen{'' if dtype == torch.float32 else '-' + str(dtype).split('.')[-1]}{'-sampled' if sample else ''} batch {B} prefill_tok/s {B * P / t1:.1f} decode_tok/s {B * D / max(tD - t1, 1e-9):.1f} "
      f"torch {torch.__version__}")
