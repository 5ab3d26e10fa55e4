"""PyTorch peer for tests/gpu-check.sh: one SFT training step (forward, backward, clip_grad_norm_, AdamW) of a
random-initialised transformers model on the GPU the way people train it: fp32 master weights, bf16 autocast,
SDPA attention, torch.optim.AdamW (fused), same batch shape as thinkpipe's model_step.
    torch_gpu_step.py CONFIG.json B T STEPS [PEAK_TFLOPS [ACCUM]] -> "torch step S tokens/s X loss L devmem_mb M mfu F"
ACCUM micro-batches of B x T a step (default 1), their gradients added before one clipping and AdamW update, as
model_step --accum does.
devmem_mb is torch.cuda.max_memory_reserved (what the caching allocator took from the device at its peak).
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path, B, T, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
peak_tflops = float(sys.argv[5]) if len(sys.argv) > 5 else 989.0
accum = int(sys.argv[6]) if len(sys.argv) > 6 else 1
torch.manual_seed(1)
raw = json.load(open(cfg_path))
config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
try:
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
except TypeError:
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation="sdpa")
model.cuda().train()
decay = [p for n, p in model.named_parameters() if p.dim() == 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
ids = torch.randint(0, config.vocab_size, (B, T), device="cuda")
times = []
for k in range(steps + 1):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    for _ in range(accum):  # the mean over all micro-batches' targets (each has the same count)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids)
        (out.loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    torch.cuda.synchronize()
    if k > 0:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
n_params = sum(p.numel() for p in model.parameters())
c = config
hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
# Model FLOPs per token: 6 per matrix weight (embedding lookup excluded, the output head included) plus causal
# attention's 6 * L * T * NH * HD (forward QK^T and PV, backward twice that, halved by the causal mask).
matrix = n_params - c.vocab_size * c.hidden_size * (0 if c.tie_word_embeddings else 1)
flops_per_token = 6 * matrix + 6 * c.num_hidden_layers * T * c.num_attention_heads * hd
mfu = flops_per_token * B * T * accum / med / (peak_tflops * 1e12)
print(f"torch step {med:.3f} s tokens/s {B * T * accum / med:.1f} loss {out.loss.item():.4f} "
      f"devmem_mb {torch.cuda.max_memory_reserved() / 2**20:.0f} mfu {mfu:.3f} torch {torch.__version__} accum {accum}")
