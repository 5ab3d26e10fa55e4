"""PyTorch peer for tests/bench/bench_model.sh: a training step (forward, backward, clip_grad_norm_, AdamW) of the same
Qwen3-shaped model (transformers, fp32, eager mode, random init), same batch shape.
    torch_step.py CONFIG.json B T STEPS ATTN  -> "torch step S tokens/s X"
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path, B, T, steps, attn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
torch.manual_seed(1)
config = AutoConfig.for_model(**{k: v for k, v in json.load(open(cfg_path)).items() if k != "architectures"})
model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation=attn)
model.train()
# The same optimizer as thinkpipe's step: AdamW, decay on 2-D weights only, clipping at 1.0.
decay = [p for n, p in model.named_parameters() if p.dim() == 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
ids = torch.randint(0, config.vocab_size, (B, T))
times = []
for k in range(steps + 1):
    t0 = time.perf_counter()
    model.zero_grad(set_to_none=False)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if k > 0:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(f"torch step {med:.3f} s tokens/s {B * T / med:.1f} loss {out.loss.item():.4f} torch {torch.__version__} attn {attn}")
