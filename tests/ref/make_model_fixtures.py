"""Model-core fixtures from the reference implementation (HF transformers + PyTorch).

    sh tests/ref/setup-venv.sh && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_model_fixtures.py

Writes tests/fixtures/model/<case>/ for four tiny random models (2 layers, hidden 64,
4 query heads, 2 KV heads, vocab 1000; every parameter drawn at random so each matters):

    qwen2-tied   Qwen2ForCausalLM, tied embeddings, q/k/v bias
    qwen3        Qwen3ForCausalLM, untied, head_dim 32 (not hidden/heads), q_norm/k_norm
    llama3       LlamaForCausalLM, untied, rope_scaling "llama3" (all three frequency bands hit)
    llama3-tied  LlamaForCausalLM, tied, no rope scaling

Each case directory holds
    config.json, model.safetensors    save_pretrained's float32 checkpoint (a tied model has
                                      no lm_head.weight, as real checkpoints)
    expected.safetensors.zst          a zstd-compressed safetensors file (read it with
                                      tp_stream_open) with float32 results of float64 math:
        input_ids I32 [2,24], position_ids I32 [2,24], seq_starts I32 [2,2], loss_mask U8 [2,24]
        logits F32 [2,24,1000], loss F32 [1], grad.<HF parameter name> F32 (parameter's shape)
    and __metadata__ {"loss_definition": LOSS_DEFINITION}.

The batch (same for every case): row 0 packs two sequences of 10 and 14 tokens; row 1 is one
sequence of 17 tokens and a 7-token padding segment (pad id 0). Positions restart at 0 in every
segment. loss_mask (per token, marks training targets) is 0 on the first 4 tokens of every real
sequence (the "prompt") and on padding, 1 elsewhere.

LOSS: for every position t whose next token t+1 is in the SAME segment and has
loss_mask[t+1] = 1, the cross-entropy of logits[t] against input_ids[t+1]; the loss is the sum
divided by the number of such targets in the whole batch (a mean over targets, not rows).

How the oracle is computed: the saved float32 weights are loaded with transformers (eager
attention) and converted with model.double(); every segment runs SEPARATELY (batch 1, its own
input_ids and position_ids) so packing cannot leak attention, and the logits are gathered back
into [2,24,vocab]; loss.backward() gives the gradient of every parameter (for a tied model the
embedding's gradient includes the lm_head contribution: one tensor, model.embed_tokens.weight).
Stock transformers rounds three things to float32 even in a float64 model (RMSNorm's input, the
RoPE angles/cos/sin, the softmax in eager attention); the script replaces exactly those three
with float64 versions of the same formulas, checks that stock transformers agrees to float32
rounding, and checks its own RoPE frequencies against transformers' rope init.

Sanity checks (the script stops if one fails): a finite difference of the loss along a random
direction of all parameters equals the gradients' dot product with it; the gathered logits equal
transformers' own packed mode (position_ids restarting at 0, no mask) and an explicit
block-diagonal 4D mask; row 1's first sequence alone equals its slice of the whole row; changing
a token in segment 2 of row 0 leaves segment 1's logits unchanged.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "model")
TENSOR_CAT = os.path.join(ROOT, "build", "release", "bin", "tensor-cat")

LOSS_DEFINITION = (
    "For every position t whose next token t+1 is in the same segment (seq_starts) and has "
    "loss_mask[t+1] = 1, the cross-entropy of logits[t] against input_ids[t+1]; loss = sum / "
    "number of such targets over the whole batch."
)

SEED = 20250607
B, T, VOCAB, PAD = 2, 24, 1000, 0
SEGMENTS = [[10, 14], [17, 7]]  # lengths per row; row 1's last segment is padding
PAD_SEGMENT = (1, 1)  # (row, segment index)
PROMPT = 4  # first tokens of each real sequence that are not targets

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    attention_dropout=0.0,
    hidden_act="silu",
    torch_dtype="float32",
)

# original_max_position_embeddings 64 puts the llama3 band edges at wavelengths 16 and 64, so
# with theta 500000 and head_dim 16 (wavelengths 6.3, 32.3, 166, ...) one frequency is kept, one
# is interpolated and six are divided by the factor: every branch of the formula matters.
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CASES = {
    "qwen2-tied": lambda: Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=1000000.0,
                                      use_sliding_window=False),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0,
                                 attention_bias=False, use_sliding_window=False),
    "llama3": lambda: LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=500000.0,
                                  rope_scaling=dict(LLAMA3_SCALING)),
    "llama3-tied": lambda: LlamaConfig(**COMMON, tie_word_embeddings=True, rope_theta=10000.0),
}


# ---------------------------------------------------------------------------------------------
# The batch


def segment_bounds():
    """[(row, seg, start, end)] in row order."""
    out = []
    for r, lens in enumerate(SEGMENTS):
        s = 0
        for k, n in enumerate(lens):
            out.append((r, k, s, s + n))
            s += n
        assert s == T
    return out


def make_batch():
    rng = np.random.default_rng([SEED, 0])
    input_ids = rng.integers(1, VOCAB, size=(B, T)).astype(np.int32)  # real tokens never equal PAD
    position_ids = np.zeros((B, T), np.int32)
    loss_mask = np.zeros((B, T), np.uint8)
    seq_starts = np.zeros((B, 2), np.int32)
    for r, k, s, e in segment_bounds():
        seq_starts[r, k] = s
        position_ids[r, s:e] = np.arange(e - s)
        if (r, k) == PAD_SEGMENT:
            input_ids[r, s:e] = PAD
        else:
            loss_mask[r, s + PROMPT:e] = 1
    return input_ids, position_ids, seq_starts, loss_mask


def target_mask(loss_mask):
    """[B,T] bool: position t predicts t+1 (same segment, loss_mask[t+1] = 1)."""
    seg_id = np.zeros((B, T), np.int64)
    for r, k, s, e in segment_bounds():
        seg_id[r, s:e] = k
    m = np.zeros((B, T), bool)
    m[:, :-1] = (seg_id[:, :-1] == seg_id[:, 1:]) & (loss_mask[:, 1:] == 1)
    return m


def loss_of(logits, input_ids, loss_mask):
    """logits [B,T,V] float64 -> scalar mean cross-entropy over the targets."""
    m = torch.from_numpy(target_mask(loss_mask))
    targets = torch.zeros((B, T), dtype=torch.long)
    targets[:, :-1] = torch.from_numpy(input_ids[:, 1:].astype(np.int64))
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    return nll[m].sum() / m.sum()


# ---------------------------------------------------------------------------------------------
# The model


def init_weights(model, case_index, tied):
    """Every parameter random: matrices N(0, 1/fan_in) so activations and logits stay of order 1,
    norms 1 + 0.1 N(0,1), biases 0.1 N(0,1). The embedding's fan_in is hidden (it is the lm_head
    too when tied), so the same rule gives order-1 logits tied or not."""
    rng = np.random.default_rng([SEED, 1, case_index])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = tuple(p.shape)
            if "norm" in name:
                v = 1.0 + 0.1 * rng.standard_normal(shape)
            elif name.endswith(".bias"):
                v = 0.1 * rng.standard_normal(shape)
            else:
                assert len(shape) == 2, name
                v = rng.standard_normal(shape) / math.sqrt(shape[1])
            p.copy_(torch.from_numpy(v.astype(np.float32)))
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def ref_inv_freq(config):
    """RoPE inverse frequencies in float64, written from the formulas (checked against
    transformers' own rope init, which computes them in float32)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    i = np.arange(0, head_dim, 2, dtype=np.float64)
    inv = 1.0 / (config.rope_theta ** (i / head_dim))
    sc = config.rope_scaling
    if not sc:
        return inv, None
    assert sc["rope_type"] == "llama3"
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    band = np.where(wavelen < old / hi, "kept", np.where(wavelen > old / lo, "divided", "smoothed"))
    out = np.where(band == "kept", inv,
                   np.where(band == "divided", inv / factor, (1 - smooth) * inv / factor + smooth * inv))
    return out, band


def rmsnorm64(self, x):
    # transformers' RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), here without its float32 cast
    var = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))


def rope64(self, x, position_ids):
    # [B,T] positions -> cos, sin [B,T,head_dim] (HF half-rotation layout: angles repeated twice)
    ang = position_ids.to(torch.float64)[..., None] * self.inv_freq64[None, None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def eager_attention64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query [B,Hq,T,D], key/value [B,Hkv,T,D]; query head h uses KV head h // (Hq/Hkv)
    g = module.num_key_value_groups
    k = key.repeat_interleave(g, dim=1)
    v = value.repeat_interleave(g, dim=1)
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, : k.shape[-2]]
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), w


STOCK_EAGER = {m: m.eager_attention_forward for m in (modeling_llama, modeling_qwen2, modeling_qwen3)}


def set_float64_ops(model, on):
    """Swap transformers' three float32 roundings (RMSNorm input, RoPE, eager softmax) for float64."""
    for m, f in STOCK_EAGER.items():
        m.eager_attention_forward = eager_attention64 if on else f
    for mod in model.modules():
        cls = type(mod).__name__
        if cls.endswith("RMSNorm"):
            if on:
                mod.forward = types.MethodType(rmsnorm64, mod)
            elif "forward" in mod.__dict__:
                del mod.forward
        elif cls.endswith("RotaryEmbedding"):
            if on:
                mod.forward = types.MethodType(rope64, mod)
            elif "forward" in mod.__dict__:
                del mod.forward


def load_float64(path, config):
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    model = model.double().eval()
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight, "tie lost"
    rot = model.model.rotary_emb
    inv64, band = ref_inv_freq(config)
    hf = rot.inv_freq.detach().double().numpy()  # transformers' float32 computation
    rel = np.max(np.abs(hf - inv64) / inv64)
    assert rel < 1e-6, f"RoPE inv_freq disagrees with transformers: rel {rel:g}"
    assert rot.attention_scaling == 1.0
    rot.inv_freq64 = torch.from_numpy(inv64)
    return model, inv64, band


# ---------------------------------------------------------------------------------------------
# The reference computation


def forward_segments(model, input_ids, position_ids):
    """Each segment alone (batch 1) -> logits [B,T,V]."""
    rows = [[] for _ in range(B)]
    for r, _, s, e in segment_bounds():
        ids = torch.from_numpy(input_ids[r:r + 1, s:e].astype(np.int64))
        pos = torch.from_numpy(position_ids[r:r + 1, s:e].astype(np.int64))
        rows[r].append(model(input_ids=ids, position_ids=pos, use_cache=False).logits[0])
    return torch.stack([torch.cat(x, dim=0) for x in rows])


def block_mask(dtype):
    """[B,1,T,T] additive mask: causal within a segment, nothing across."""
    allowed = torch.zeros((B, 1, T, T), dtype=torch.bool)
    for r, _, s, e in segment_bounds():
        allowed[r, 0, s:e, s:e] = torch.ones((e - s, e - s), dtype=torch.bool).tril()
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def forward_packed(model, input_ids, position_ids, mask=None):
    ids = torch.from_numpy(input_ids.astype(np.int64))
    pos = torch.from_numpy(position_ids.astype(np.int64))
    return model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits


def maxdiff(a, b):
    return float((a - b).abs().max())


def sanity_checks(model, input_ids, position_ids, logits):
    with torch.no_grad():
        # transformers' own packed-sequence detection (positions restart at 0, no mask)
        d_packed = maxdiff(forward_packed(model, input_ids, position_ids), logits)
        # an explicit block-diagonal causal mask
        packed = forward_packed(model, input_ids, position_ids, block_mask(torch.float64))
        d_mask = maxdiff(packed, logits)
        # row 1's first sequence alone vs its slice of the whole row 1 (causal; padding comes after)
        n = SEGMENTS[1][0]
        alone = model(input_ids=torch.from_numpy(input_ids[1:2, :n].astype(np.int64)), use_cache=False).logits[0]
        row1 = forward_packed(model, input_ids[1:2], position_ids[1:2])[0, :n]
        d_alone = max(maxdiff(alone, row1), maxdiff(alone, logits[1, :n]))
        # a token changed in segment 2 of row 0 leaves segment 1 alone (and does change segment 2)
        s2 = SEGMENTS[0][0]
        changed = input_ids.copy()
        changed[0, s2 + 3] = changed[0, s2 + 3] % (VOCAB - 1) + 1
        p2 = forward_packed(model, changed, position_ids, block_mask(torch.float64))
        d_seg1 = maxdiff(p2[0, :s2], packed[0, :s2])
        d_seg2 = maxdiff(p2[0, s2 + 3:], packed[0, s2 + 3:])
    print(f"  checks: packed(HF detection) {d_packed:.1e}  packed(4D mask) {d_mask:.1e}  "
          f"row1 seq alone {d_alone:.1e}  seg1 after seg2 change {d_seg1:.1e} (seg2 moved {d_seg2:.2f})")
    assert d_packed < 1e-12 and d_mask < 1e-12 and d_alone < 1e-12, "packing leaks attention"
    assert d_seg1 == 0.0 and d_seg2 > 1e-3, "segment 1 depends on segment 2"


def directional_check(model, batch, grads):
    """Central finite difference of the loss along one random direction of ALL parameters equals
    the gradient's dot product with it: the gradients (tied embedding included) are the loss's."""
    input_ids, position_ids, _, loss_mask = batch
    rng = np.random.default_rng([SEED, 2])
    params = dict(model.named_parameters())
    d = {n: torch.from_numpy(rng.standard_normal(tuple(p.shape))) for n, p in params.items()}
    dot = sum(float((grads[n] * d[n]).sum()) for n in params)
    eps = 1e-5

    def loss_at(sign):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * d[n])
            v = loss_of(forward_segments(model, input_ids, position_ids), input_ids, loss_mask).item()
            for n, p in params.items():
                p.sub_(sign * eps * d[n])
        return v

    fd = (loss_at(1) - loss_at(-1)) / (2 * eps)
    print(f"  finite difference along a random direction {fd:.9f}, gradient . direction {dot:.9f}")
    assert abs(fd - dot) < 1e-6 * max(1.0, abs(dot)), "gradients disagree with the loss"


def reference(model, batch):
    input_ids, position_ids, _, loss_mask = batch
    model.zero_grad(set_to_none=True)
    logits = forward_segments(model, input_ids, position_ids)
    loss = loss_of(logits, input_ids, loss_mask)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return logits.detach(), loss.detach(), grads


# ---------------------------------------------------------------------------------------------


def write_expected(path, batch, logits, loss, grads):
    input_ids, position_ids, seq_starts, loss_mask = batch
    tensors = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "seq_starts": seq_starts,
        "loss_mask": loss_mask,
        "logits": logits.numpy().astype(np.float32),
        "loss": np.array([loss.item()], np.float32),
    }
    for name, g in grads.items():
        tensors["grad." + name] = g.numpy().astype(np.float32)
    # One key only: safetensors keeps __metadata__ in a hash map, so several keys come out in a
    # random order and the committed file would change on every run (versions are in config.json).
    meta = {"loss_definition": LOSS_DEFINITION}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "expected.safetensors")
        save_file(tensors, raw, metadata=meta)
        subprocess.run(["zstd", "-q", "-19", "-f", raw, "-o", path], check=True)
    return tensors


def check_written(case_dir, tensors, config):
    """The checkpoint holds what the model had; the .zst is readable by our C reader."""
    with safe_open(os.path.join(case_dir, "model.safetensors"), "np") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) != bool(config.tie_word_embeddings), names
    assert set("grad." + n for n in names) == {k for k in tensors if k.startswith("grad.")}
    exp = os.path.join(case_dir, "expected.safetensors.zst")
    if os.access(TENSOR_CAT, os.X_OK):
        out = subprocess.run([TENSOR_CAT, exp], check=True, capture_output=True, text=True).stdout
        rec = json.loads(out.splitlines()[0])
        assert len(out.splitlines()) == 1
        for k, v in tensors.items():
            assert rec["tensors"][k]["shape"] == list(v.shape), k
        assert rec["metadata"]["loss_definition"] == LOSS_DEFINITION
        print(f"  tensor-cat reads {os.path.relpath(exp, ROOT)}: {len(rec['tensors'])} tensors")
    else:
        print(f"  (no {TENSOR_CAT}: run `make` to have tensor-cat check the .zst)")


def make_case(index, name, batch):
    torch.manual_seed(SEED)
    config = CASES[name]()
    case_dir = os.path.join(OUT, name)
    shutil.rmtree(case_dir, ignore_errors=True)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation="eager")
    init_weights(model, index, config.tie_word_embeddings)
    model.save_pretrained(case_dir, safe_serialization=True)
    gen = os.path.join(case_dir, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    assert sorted(os.listdir(case_dir)) == ["config.json", "model.safetensors"], os.listdir(case_dir)

    model, inv, band = load_float64(case_dir, config)
    print(f"{name}: {type(model).__name__}, head_dim {inv.size * 2}, rope_theta {config.rope_theta:g}")
    if band is not None:
        print("  llama3 rope bands: " + " ".join(f"{b}" for b in band))
        assert set(band) == {"kept", "smoothed", "divided"}, "llama3 scaling must hit every band"

    # stock transformers (float32 roundings inside) vs the float64 oracle
    input_ids, position_ids, _, loss_mask = batch
    with torch.no_grad():
        stock = forward_segments(model, input_ids, position_ids)
    set_float64_ops(model, True)
    try:
        logits, loss, grads = reference(model, batch)
        d_stock = maxdiff(stock, logits)
        print(f"  stock transformers vs float64 oracle: max |logit diff| {d_stock:.1e}")
        assert d_stock < 1e-4, "stock transformers disagrees with the float64 oracle"
        sanity_checks(model, input_ids, position_ids, logits)
        directional_check(model, batch, grads)
    finally:
        set_float64_ops(model, False)

    n_targets = int(target_mask(loss_mask).sum())
    print(f"  loss {loss.item():.6f} over {n_targets} targets, logits std {logits.std().item():.4f}")
    for n, g in grads.items():
        gn = g.norm().item()
        print(f"    grad {n:48s} {str(list(g.shape)):12s} norm {gn:.4e}")
        assert gn > 0, f"grad of {n} is zero"
    tensors = write_expected(os.path.join(case_dir, "expected.safetensors.zst"), batch, logits, loss, grads)
    check_written(case_dir, tensors, config)
    sizes = {f: os.path.getsize(os.path.join(case_dir, f)) for f in sorted(os.listdir(case_dir))}
    print("  sizes: " + ", ".join(f"{f} {s / 1e6:.2f} MB" for f, s in sizes.items()))


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    batch = make_batch()
    os.makedirs(OUT, exist_ok=True)
    names = sys.argv[1:] or list(CASES)
    for name in names:
        make_case(list(CASES).index(name), name, batch)


if __name__ == "__main__":
    main()
