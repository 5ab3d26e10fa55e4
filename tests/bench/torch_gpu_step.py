"""PyTorch peer for tests/gpu-check.sh: one SFT training step (forward, backward, clip_grad_norm_, AdamW) of a
random-initialised transformers model on the GPU the way people train it: fp32 master weights, bf16 autocast,
SDPA attention, torch.optim.AdamW (fused), same batch shape as thinkpipe's model_step.
    torch_gpu_step.py CONFIG.json B T STEPS [PEAK_TFLOPS [ACCUM]] -> "torch step S tokens/s X loss L devmem_mb M mfu F"
ACCUM micro-batches of B x T a step (default 1), their gradients added before one clipping and AdamW update, as
model_step --accum does.
devmem_mb is torch.cuda.max_memory_reserved (what the caching allocator took from the device at its peak).
TORCH_PROFILE=1: one more step under torch.profiler, its device time by kind of kernel (products, attention,
cross-entropy, optimizer, the rest) and its ten longest kernels, on stderr as "torch profile: ..." lines, beside which
our TP_PROFILE table says where thinkpipe's step spends the same time (gpu-check prints both). TORCH_STEP_DEVICE=cpu
runs it all on the CPU (a check of the script on a machine without a GPU; the numbers mean nothing there).
"""
import json
import os
import re
import statistics
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

cfg_path, B, T, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
peak_tflops = float(sys.argv[5]) if len(sys.argv) > 5 else 989.0
accum = int(sys.argv[6]) if len(sys.argv) > 6 else 1
device = os.environ.get("TORCH_STEP_DEVICE", "cuda")
torch.manual_seed(1)
raw = json.load(open(cfg_path))
config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
try:
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
except TypeError:
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation="sdpa")
model.to(device).train()
decay = [p for n, p in model.named_parameters() if p.dim() == 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=device == "cuda")
ids = torch.randint(0, config.vocab_size, (B, T), device=device)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def step():
    opt.zero_grad(set_to_none=True)
    for _ in range(accum):  # the mean over all micro-batches' targets (each has the same count)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids)
        (out.loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return out


# A kernel's kind from its name: cuBLAS's and CUTLASS's product kernels (nvjet, xmma, gemm), SDPA's (flash, cuDNN,
# memory-efficient), the loss's softmax and NLL, the fused AdamW and its multi-tensor kernels, and everything else
# (casts, elementwise, norms, reductions, embedding, copies). On the CPU the names are aten ops.
# Attention first: cuDNN's and CUTLASS's attention kernels have "sm90_" and "cutlass" in their names too.
KINDS = [("attention", r"flash|fmha|sdpa|attention"),
         ("products", r"gemm|nvjet|xmma|cutlass|cublas|sm\d\d_|aten::(mm|addmm|bmm|matmul|linear)$"),
         ("cross-entropy", r"softmax|nll_loss|cross_entropy"),
         ("optimizer", r"adam|multi_tensor|foreach"),
         ("elementwise, norms, other", r"")]


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return KINDS[-1][0]


def profile_step():
    from torch.profiler import ProfilerActivity, profile
    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        step()
        sync()
    # the kernels themselves (their device's events), not the CPU ops that launched them
    want = torch.autograd.DeviceType.CUDA if device == "cuda" else torch.autograd.DeviceType.CPU
    kernels = [e for e in prof.events() if e.device_type == want and (device == "cuda" or e.cpu_parent is None)]
    by_kind, by_name = {}, {}
    for e in kernels:
        us, kind = e.time_range.elapsed_us(), kind_of(e.name)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
        by_name[e.name] = by_name.get(e.name, 0.0) + us
    total = sum(by_kind.values()) or 1.0
    say = lambda line: print("torch profile: " + line, file=sys.stderr)
    say(f"device time by kind ({total / 1e3:.1f} ms in all, one step of {accum} x {B} x {T})")
    for kind, _ in KINDS:
        say(f"  {kind:<28} {by_kind.get(kind, 0.0) / 1e3:9.2f} ms {100 * by_kind.get(kind, 0.0) / total:5.1f}%")
    say("longest kernels")
    for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:10]:
        say(f"  {us / 1e3:9.2f} ms {100 * us / total:5.1f}%  {kind_of(name):<14} {name[:90]}")


times = []
for k in range(steps + 1):
    sync()
    t0 = time.perf_counter()
    out = step()
    sync()
    if k > 0:
        times.append(time.perf_counter() - t0)
if os.environ.get("TORCH_PROFILE") == "1":
    profile_step()
med = statistics.median(times)
n_params = sum(p.numel() for p in model.parameters())
c = config
hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
# Model FLOPs per token: 6 per matrix weight (embedding lookup excluded, the output head included) plus causal
# attention's 6 * L * T * NH * HD (forward QK^T and PV, backward twice that, halved by the causal mask).
matrix = n_params - c.vocab_size * c.hidden_size * (0 if c.tie_word_embeddings else 1)
flops_per_token = 6 * matrix + 6 * c.num_hidden_layers * T * c.num_attention_heads * hd
mfu = flops_per_token * B * T * accum / med / (peak_tflops * 1e12)
devmem = torch.cuda.max_memory_reserved() if device == "cuda" else 0
print(f"torch step {med:.3f} s tokens/s {B * T * accum / med:.1f} loss {out.loss.item():.4f} "
      f"devmem_mb {devmem / 2**20:.0f} mfu {mfu:.3f} torch {torch.__version__} accum {accum}")
