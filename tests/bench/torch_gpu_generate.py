"""transformers peer of tests/bench/engine_bench.c on the GPU: B sequences as B/G prompts of P random tokens with G
samples each (num_return_sequences), D new tokens (EOS ignored), sampled (temperature 1, top-p 0.95) or greedy,
with model.generate on a random-initialised model in bf16 with SDPA attention and its default dynamic KV cache.
    torch_gpu_generate.py CONFIG.json B:G:P:D[:greedy]... -> per case "torch generate batch B group G ... tok/s X"
tok/s is B * D over the wall time of one generate call (prefill included), the better of two after a warm-up.
One process runs every case, so the model is built once."""
import json
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path = sys.argv[1]
torch.manual_seed(1)
raw = json.load(open(cfg_path))
config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
try:
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
except TypeError:
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
model.cuda().eval()


def case(B, G, P, D, greedy):
    ids = torch.randint(0, config.vocab_size, (B // G, P), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=0)

    def run(new):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                                 pad_token_id=0, num_return_sequences=G, **kw)
        torch.cuda.synchronize()
        assert out.shape == (B, P + new), out.shape
        return time.perf_counter() - t0

    run(4)  # warm-up
    best = min(run(D), run(D))
    print(f"torch generate batch {B} group {G} prompt {P} new {D} tok/s {B * D / best:.1f} "
          f"torch {torch.__version__}", flush=True)


for spec in sys.argv[2:]:
    f = spec.split(":")
    case(int(f[0]), int(f[1]), int(f[2]), int(f[3]), len(f) > 4 and f[4] == "greedy")
