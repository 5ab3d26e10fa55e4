"""PyTorch peer for tests/bench/bench_sft.sh: the training loop people write with transformers for the same
job sft-train does — the same records (read from `tensor-cat -v` of the same tensor stream), in the same
micro-batches padded to the longest, loss on the loss-masked targets (labels -100 elsewhere), AdamW (decay on
2-D weights), clip_grad_norm_ 1.0, linear schedule; fp32, eager CPU, same thread count.
    tensor-cat -v STREAM | torch_sft.py CONFIG.json MICRO STEPS ATTN  -> "torch sft tokens/s X steps N loss L"
"""
import json
import os
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path, micro, steps, attn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(1)
records = []
for line in sys.stdin:
    t = json.loads(line)["tensors"]
    records.append((t["input_ids"]["data"], t["loss_mask"]["data"]))
config = AutoConfig.for_model(**{k: v for k, v in json.load(open(cfg_path)).items() if k != "architectures"})
model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation=attn)
model.train()
decay = [p for n, p in model.named_parameters() if p.dim() == 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
tokens, i, t0 = 0, 0, time.perf_counter()
for step in range(steps):
    batch = [records[(i + k) % len(records)] for k in range(micro)]
    i += micro
    T = max(len(ids) for ids, _ in batch)
    ids = torch.zeros((micro, T), dtype=torch.long)
    labels = torch.full((micro, T), -100, dtype=torch.long)
    attention = torch.zeros((micro, T), dtype=torch.long)
    for r, (x, m) in enumerate(batch):
        ids[r, :len(x)] = torch.tensor(x)
        labels[r, :len(x)] = torch.where(torch.tensor(m) > 0, torch.tensor(x), -100)
        attention[r, :len(x)] = 1
        tokens += len(x)
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=attention, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
elapsed = time.perf_counter() - t0
print(f"torch sft tokens/s {tokens / elapsed:.1f} steps {steps} loss {out.loss.item():.4f} attn {attn}")
