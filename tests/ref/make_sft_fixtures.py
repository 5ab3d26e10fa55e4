"""Optimizer fixtures from the reference implementation (PyTorch AdamW + clip_grad_norm_ and
transformers' cosine-with-min-lr schedule), run in float64.

    sh tests/ref/setup-venv.sh && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_model_fixtures.py && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_sft_fixtures.py

Writes tests/fixtures/sft/adamw5-<case>.safetensors.zst for two of the model fixtures,
tests/fixtures/model/qwen3 (untied, q/k norms) and tests/fixtures/model/qwen2-tied (tied
embeddings: one parameter, model.embed_tokens.weight; q/k/v biases). Each is a zstd-compressed
safetensors file (read it with tp_stream_open) with two runs of five steps from the case's
model.safetensors (float32, converted to float64):

TRAINING RUN, on the batch of the case's expected.safetensors.zst (make_model_fixtures.py):
    zero_grad; loss = mean over the batch's targets (make_model_fixtures' LOSS_DEFINITION: every
    packed segment run separately, with its float64 replacements of transformers' float32
    roundings); backward; grad_norm = clip_grad_norm_(params, max_norm);
    AdamW(lr 1e-3, betas (0.9, 0.95), eps 1e-8; weight decay 0.1 on every 2-D weight:
          projections, embedding, lm_head; 0 on norms and biases).step();
    get_cosine_with_min_lr_schedule_with_warmup(warmup 1, total 5, min_lr 1e-4).step().
  With one warmup step the first update runs at lr 0 (it only fills the moments), so the first
  two losses are equal. max_norm is 1.0 unless fewer than two steps would clip; then the largest
  of 0.5, 0.2, 0.1, ... that clips at least two steps.
    input_ids I32 [2,24], position_ids I32 [2,24], seq_starts I32 [2,2], loss_mask U8 [2,24]
                          the batch, copied from the model fixture (the same every step)
    loss F64 [5]          the loss BEFORE each update
    loss_final F64 [1]    the loss after the fifth update
    grad_norm F64 [5]     the L2 norm of all gradients together, before clipping
    lr F64 [5]            the learning rate each update used, as the scheduler gave it
    max_norm F64 [1]      clip_grad_norm_'s max_norm
    param.<HF name> F32   every parameter after the five updates
    torch32_err.<HF name> F64 [1]  ||p32 - p|| / ||p|| of PyTorch's own float32 run (stock
                          transformers, float32 AdamW) for that parameter: the tests hold thinkpipe to
                          1e-5, or to twice this where float32 PyTorch itself lands beyond 1e-5

GIVEN-GRADIENT RUN: the same clipping, AdamW and schedule, but step s's gradient is given, not
computed: float32(a_s G + b_s G') with G the model fixture's float32 gradient (its grad.*
tensors) and G' each tensor of G with its elements in reverse (flat) order, summed in double;
the coefficients are powers of two so that a C program gets the same float32 gradients bit for
bit. Only the optimizer's arithmetic can then differ. Why both: in the training run a float32
implementation cannot follow the float64 trajectory to 1e-5 in every parameter, because a few
elements have gradients 1e-5 of their tensor's typical size (Qwen2's k_proj biases along RoPE's
slowest frequencies, where a constant bias barely changes attention; single elements elsewhere),
float32 gets those to only a few percent, and Adam's normalisation m / sqrt(v) turns any relative
error of a gradient element into the same relative error of an lr-sized step. The script prints
how far PyTorch's own float32 run lands (stock transformers, float32 AdamW): beyond 1e-5 too.
    given_coef F64 [5,2]        (a_s, b_s)
    given_grad_norm F64 [5]     the norm of each step's given gradient, before clipping
    given.param.<HF name> F32   every parameter after the five updates

__metadata__ is one key, "hyperparameters": a JSON object (sorted keys; one key because
safetensors writes several in a random order) with every number above and the definitions.

Sanity checks (the script stops if one fails): the batch and the first step's loss and gradients
equal the model fixture's; the schedule's learning rates equal optim.h's formula; clip_grad_norm_'s
norm equals the gradients' L2 norm; an AdamW written from optim.h's formulas (decoupled decay, bias
corrections) reproduces torch's parameters to float64 rounding; at least two training steps clip,
some given-gradient steps clip and some do not, and no norm is within 1e-3 of max_norm (where
float32 rounding could flip the decision).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_fixtures as mmf  # noqa: E402  (the model oracle: batch, loss, float64 ops)

ROOT = mmf.ROOT
MODEL_DIR = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "sft")
CASES = ["qwen3", "qwen2-tied"]

STEPS = 5
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 1
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.95), 1e-8, 0.1
MAX_NORMS = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
# (a_s, b_s) of the given-gradient run: norms about 6.5, 4.6, 1.2, 0.45, 6.7, so at max_norm 1 every
# step but the 4th clips, the 3rd by little; signs and the two patterns change from step to step.
GIVEN_COEF = [(1.0, 0.0), (0.5, 0.5), (0.0, 0.1875), (-0.0625, 0.03125), (-1.0, 0.25)]


def read_expected(case_dir):
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "expected.safetensors")
        subprocess.run(["zstd", "-q", "-d", "-f", os.path.join(case_dir, "expected.safetensors.zst"), "-o", raw],
                       check=True)
        return load_file(raw)


def schedule_lr(step):
    """optim.h's formula for cosine with warmup and min_lr (independent of transformers)."""
    if step < WARMUP:
        return LR * step / WARMUP
    return MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def param_groups(model):
    decay = [p for _, p in model.named_parameters() if p.ndim == 2]
    other = [p for _, p in model.named_parameters() if p.ndim != 2]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": other, "weight_decay": 0.0}]


def train(model, batch, max_norm, own_adamw=False):
    """Five steps; returns losses, norms, lrs and the parameters after them. own_adamw: our
    float64 AdamW from optim.h's formulas instead of torch's (same schedule and clipping)."""
    input_ids, position_ids, _, loss_mask = batch
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, eps=EPS)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS,
                                                        min_lr=MIN_LR)
    moments = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}
    losses, norms, lrs, first_grads = [], [], [], None
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        logits = mmf.forward_segments(model, input_ids, position_ids)
        loss = mmf.loss_of(logits, input_ids, loss_mask)
        loss.backward()
        if first_grads is None:
            first_grads = {n: p.grad.detach().clone() for n, p in params.items()}
        l2 = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params.values()))
        norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm))
        assert abs(norm - l2) <= 1e-5 * l2, f"clip_grad_norm_ {norm} vs L2 norm {l2}"
        lr = sched.get_last_lr()[0]
        assert all(g["lr"] == lr for g in opt.param_groups)
        if own_adamw:
            adamw_by_hand(params, moments, step + 1, lr)
        else:
            opt.step()
        sched.step()
        losses.append(loss.item()), norms.append(norm), lrs.append(lr)
    final = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        losses.append(mmf.loss_of(mmf.forward_segments(model, input_ids, position_ids), input_ids, loss_mask).item())
    return np.array(losses), np.array(norms), np.array(lrs), final, first_grads


def adamw_by_hand(params, moments, t, lr):
    b1, b2 = BETAS
    with torch.no_grad():
        for n, p in params.items():
            m, v = moments[n]
            if p.ndim == 2:
                p.sub_(lr * WEIGHT_DECAY * p)
            m.mul_(b1).add_((1 - b1) * p.grad)
            v.mul_(b2).add_((1 - b2) * p.grad * p.grad)
            p.sub_(lr / (1 - b1 ** t) * m / (v.sqrt() / math.sqrt(1 - b2 ** t) + EPS))


def given_gradients(base):
    """The gradient of every step of the given-gradient run: g_s = a_s G + b_s G', with G the
    model fixture's float32 gradient and G' each of its tensors with the elements in reverse
    order, summed in double and rounded to float32 (the coefficients are powers of two, so C
    computing (float)(a * (double)G[i] + b * (double)G'[i]) gets the same bits)."""
    rev = {n: g.ravel()[::-1].reshape(g.shape) for n, g in base.items()}
    return [{n: (a * base[n].astype(np.float64) + b * rev[n].astype(np.float64)).astype(np.float32)
             for n in base} for a, b in GIVEN_COEF]


def train_given(weights, base, max_norm):
    """Five steps of the same clipping, AdamW and schedule on the float64 copies of the float32
    weights, with given gradients instead of a model's: nothing but the optimizer's arithmetic
    can differ from a float32 implementation fed the same gradients."""
    params = {n: torch.from_numpy(w.astype(np.float64)).requires_grad_() for n, w in weights.items()}
    groups = [{"params": [p for p in params.values() if p.ndim == 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params.values() if p.ndim != 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS,
                                                        min_lr=MIN_LR)
    norms = []
    for grads in given_gradients(base):
        for n, p in params.items():
            p.grad = torch.from_numpy(grads[n].astype(np.float64))
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)))
        opt.step()
        sched.step()
    return np.array(norms), {n: p.detach() for n, p in params.items()}


def load64(case_dir):
    config = AutoConfig.from_pretrained(case_dir)
    model, _, _ = mmf.load_float64(case_dir, config)
    mmf.set_float64_ops(model, True)
    return model


def load32(case_dir):
    model = AutoModelForCausalLM.from_pretrained(case_dir, torch_dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def choose_max_norm(case_dir, batch):
    """The largest of MAX_NORMS that clips on at least two steps."""
    for max_norm in MAX_NORMS:
        _, norms, _, _, _ = train(load64(case_dir), batch, max_norm)
        clipped = int((norms > max_norm).sum())
        print(f"  max_norm {max_norm:g}: grad norms {' '.join(f'{x:.4f}' for x in norms)} -> {clipped} clipped")
        if clipped >= 2:
            return max_norm
    raise SystemExit("no max_norm clips on two steps")


def write(path, tensors, hyper):
    meta = {"hyperparameters": json.dumps(hyper, sort_keys=True)}  # one key: see make_model_fixtures
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "adamw5.safetensors")
        save_file(tensors, raw, metadata=meta)
        subprocess.run(["zstd", "-q", "-19", "-f", raw, "-o", path], check=True)


def make_case(name):
    case_dir = os.path.join(MODEL_DIR, name)
    expected = read_expected(case_dir)
    batch = mmf.make_batch()
    for k, v in zip(["input_ids", "position_ids", "seq_starts", "loss_mask"], batch):
        assert np.array_equal(expected[k], v) and expected[k].dtype == v.dtype, f"{name}: batch {k} differs"
    print(f"{name}:")
    max_norm = choose_max_norm(case_dir, batch)

    model = load64(case_dir)
    losses, norms, lrs, final, grads0 = train(model, batch, max_norm)
    # the first step is the model fixture's forward and backward
    assert abs(losses[0] - expected["loss"][0]) <= 1e-6 * losses[0], (losses[0], expected["loss"][0])
    assert set(grads0) == {k[5:] for k in expected if k.startswith("grad.")}
    for n, g in grads0.items():
        assert rel(torch.from_numpy(expected["grad." + n]), g) < 1e-6, f"{name}: grad {n} differs from fixture"
    assert losses[0] == losses[1], "the lr-0 first update moved the weights"
    want_lrs = [schedule_lr(s) for s in range(STEPS)]
    assert max(abs(a - b) for a, b in zip(lrs, want_lrs)) <= 1e-15, (lrs, want_lrs)
    clipped = [s for s in range(STEPS) if norms[s] > max_norm]
    assert len(clipped) >= 2 and min(abs(norms / max_norm - 1)) > 1e-3, norms

    # our AdamW from optim.h's formulas reproduces torch's
    _, _, _, by_hand, _ = train(load64(case_dir), batch, max_norm, own_adamw=True)
    e_hand = max(rel(by_hand[n], final[n]) for n in final)
    assert e_hand < 1e-12, f"optim.h's AdamW formula disagrees with torch: {e_hand:g}"

    # float32 torch (stock transformers) against the float64 oracle
    l32, n32, _, f32, _ = train(load32(case_dir), batch, max_norm)
    e32 = {n: rel(f32[n], final[n]) for n in final}
    worst32 = max(e32, key=e32.get)

    # the optimizer alone, on given gradients
    base = {k[5:]: v for k, v in expected.items() if k.startswith("grad.")}
    initial = load_file(os.path.join(case_dir, "model.safetensors"))
    weights = {n: initial[n] for n in final}
    given_norms, given_final = train_given(weights, base, max_norm)
    given_clipped = [s for s in range(STEPS) if given_norms[s] > max_norm]
    assert 0 < len(given_clipped) < STEPS and min(abs(given_norms / max_norm - 1)) > 1e-3, given_norms

    print(f"  max_norm {max_norm:g}; clipped on steps {', '.join(str(s + 1) for s in clipped)} (1-based)")
    for s in range(STEPS):
        print(f"  step {s + 1}: loss {losses[s]:.9f}  grad_norm {norms[s]:.6f}  lr {lrs[s]:.6g}"
              f"{'  clipped' if s in clipped else ''}")
    print(f"  loss after the 5th update {losses[STEPS]:.9f}")
    print(f"  given gradients: norms {' '.join(f'{x:.4f}' for x in given_norms)}, clipped on steps "
          f"{', '.join(str(s + 1) for s in given_clipped)}")
    print(f"  AdamW by hand vs torch: worst parameter relative difference {e_hand:.1e}")
    print(f"  float32 torch vs float64 oracle: losses {np.max(np.abs(l32 / losses - 1)):.1e}, "
          f"grad norms {np.max(np.abs(n32 / norms - 1)):.1e}, worst parameter {e32[worst32]:.1e} ({worst32}); "
          f"{sum(e > 1e-5 for e in e32.values())} of {len(e32)} parameters beyond 1e-5")
    moved = {n: rel(final[n], torch.from_numpy(initial[n])) for n in final}
    print(f"  parameters moved (||after - before|| / ||before||): "
          f"min {min(moved.values()):.3g}, max {max(moved.values()):.3g}")

    tensors = {k: expected[k] for k in ["input_ids", "position_ids", "seq_starts", "loss_mask"]}
    tensors.update(loss=losses[:STEPS], loss_final=losses[STEPS:], grad_norm=norms, lr=np.array(lrs),
                   max_norm=np.array([max_norm]), given_coef=np.array(GIVEN_COEF), given_grad_norm=given_norms)
    for n, p in final.items():
        tensors["param." + n] = p.numpy().astype(np.float32)
        tensors["given.param." + n] = given_final[n].numpy().astype(np.float32)
        tensors["torch32_err." + n] = np.array([e32[n]])
    hyper = dict(case=name, steps=STEPS, lr=LR, min_lr=MIN_LR, warmup=WARMUP, schedule="cosine_with_min_lr",
                 beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY, max_norm=max_norm,
                 weight_decay_on="2-D weights (projections, embedding, lm_head); not norms or biases",
                 loss_definition=mmf.LOSS_DEFINITION,
                 given_gradients=f"step s: float32(given_coef[s][0] * G + given_coef[s][1] * G'), summed in double; "
                 f"G = grad.* of tests/fixtures/model/{name}/expected.safetensors.zst, G' = each tensor of G with "
                 "its elements (flat, row-major) in reverse order",
                 versions=f"torch {torch.__version__.split('+')[0]}, transformers {transformers.__version__}")
    path = os.path.join(OUT, f"adamw5-{name}.safetensors.zst")
    write(path, tensors, hyper)
    print(f"  wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path) / 1e6:.2f} MB, {len(tensors)} tensors)")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(OUT, exist_ok=True)
    for name in sys.argv[1:] or CASES:
        make_case(name)


if __name__ == "__main__":
    main()
