"""sft-train's saved model loads in transformers with the same logits (issue 5, point 3).

    sh tests/ref/setup-venv.sh && ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/check_sft_checkpoint.py

For each tiny model fixture (tests/fixtures/model/qwen3: untied, q/k norms;
tests/fixtures/model/qwen2-tied: tied embeddings, q/k/v biases) this:

  1. builds seeded random train (32 records) and eval (8 records) streams with
     `tensor-cat --pack` (input_ids I32 [T], loss_mask U8 [T], T in 10..40, ids < 1000);
  2. runs sft-train for 6 updates, saving the final model once as f32 and once as bf16;
  3. loads each saved directory with transformers' AutoModelForCausalLM (float32) and
     recomputes the held-out loss: for every eval record, token t (t > 0, loss_mask[t] == 1)
     is predicted by the logits at t-1; the mean cross-entropy over all targets of all records.

Checks, per fixture:
  f32   transformers' eval loss equals sft-train's last "eval_loss" to 1e-5 (relative);
        config.json says torch_dtype float32; tied models have no lm_head.weight in
        model.safetensors and transformers ties lm_head to the embedding; the logits on the
        eval records differ from those of the untrained fixture (training changed something).
  bf16  config.json says bfloat16; every weight is exactly the round-to-nearest-even bf16 of
        the f32 checkpoint's weight; transformers' loss on the bf16 checkpoint equals (1e-6)
        its loss on the f32 checkpoint with the weights rounded to bf16 in torch (sft-train's
        own eval_loss is computed on the fp32 weights, before rounding, so it is not compared).

Prints one line per case and exits 1 on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load as st_load_bytes
from safetensors.torch import load_file as st_load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "release", "bin")
CASES = ["qwen3", "qwen2-tied"]
VOCAB = 1000
F32_TOL = 1e-5
BF16_TOL = 1e-6

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL: " + what)
    return ok


def build():
    """make is a no-op when the binaries are current; this keeps them from being stale."""
    subprocess.run(["make", "-C", ROOT], check=True, stdout=subprocess.DEVNULL)
    for p in ("tokenize", "sft-train", "tensor-cat"):
        if not os.access(os.path.join(BIN, p), os.X_OK):
            sys.exit(f"no {os.path.join(BIN, p)} after make")


def make_records(rng, n):
    recs = []
    for _ in range(n):
        t = int(rng.integers(10, 41))
        ids = rng.integers(0, VOCAB, size=t).astype(np.int32)
        # a "prompt" of 1..t/2 unmasked tokens, then the "answer", with a few holes in it
        prompt = int(rng.integers(1, t // 2 + 1))
        mask = np.zeros(t, dtype=np.uint8)
        mask[prompt:] = 1
        mask[prompt:][rng.random(t - prompt) < 0.1] = 0
        mask[-1] = 1
        recs.append((ids, mask))
    return recs


def write_stream(recs, path):
    lines = []
    for ids, mask in recs:
        lines.append(json.dumps({"tensors": {
            "input_ids": {"dtype": "I32", "shape": [len(ids)], "data": ids.tolist()},
            "loss_mask": {"dtype": "U8", "shape": [len(mask)], "data": mask.tolist()}}}))
    subprocess.run([os.path.join(BIN, "tensor-cat"), "-q", "--pack", "-o", path],
                   input=("\n".join(lines) + "\n").encode(), check=True)


def read_stream(path):
    """A tensor stream: safetensors blobs back to back. Split by hand, load each blob."""
    buf = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(buf):
        n = int(np.frombuffer(buf, dtype="<u8", count=1, offset=pos)[0])
        header = json.loads(buf[pos + 8:pos + 8 + n])
        data_len = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"],
                       default=0)
        end = pos + 8 + n + data_len
        out.append(st_load_bytes(buf[pos:end]))
        pos = end
    return out


def eval_loss(model, recs):
    """Mean cross-entropy (float64 sum) over all targets; also the logits of every record."""
    total, count, logits_all = 0.0, 0, []
    with torch.no_grad():
        for r in recs:
            ids = torch.from_numpy(r["input_ids"].astype(np.int64))[None]
            mask = torch.from_numpy(r["loss_mask"].astype(np.bool_))
            logits = model(input_ids=ids).logits[0].float()
            logits_all.append(logits)
            tgt = mask.clone()
            tgt[0] = False
            pos = torch.nonzero(tgt).flatten()
            lp = torch.log_softmax(logits[pos - 1].double(), dim=-1)
            total += float(-lp.gather(1, ids[0, pos][:, None]).sum())
            count += len(pos)
    return total / count, logits_all


def load(path):
    m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    m.eval()
    return m


def bf16_rne(a):
    """float32 array -> the float32 values of its round-to-nearest-even bfloat16."""
    b = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def train(fixture, train_s, eval_s, out, dtype):
    cmd = [os.path.join(BIN, "sft-train"), "-q", "-m", fixture, "-d", train_s, "--eval", eval_s,
           "-o", out, "--steps", "6", "--lr", "1e-3", "--micro-batch", "4", "--schedule", "cosine",
           "--warmup", "1", "--save-dtype", dtype]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not check(p.returncode == 0, f"sft-train {dtype} exit {p.returncode}: {p.stderr.strip()}"):
        return None
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    check(len(lines) == 6, f"sft-train {dtype}: {len(lines)} metrics lines, expected 6")
    if not check(bool(lines) and "eval_loss" in lines[-1], f"sft-train {dtype}: no eval_loss"):
        return None
    return lines[-1]["eval_loss"]


def run_case(name, tmp, seed):
    fixture = os.path.join(ROOT, "tests", "fixtures", "model", name)
    cfg0 = json.load(open(os.path.join(fixture, "config.json")))
    tied = bool(cfg0.get("tie_word_embeddings"))
    rng = np.random.default_rng(seed)
    train_s = os.path.join(tmp, name + "-train.stream")
    eval_s = os.path.join(tmp, name + "-eval.stream")
    write_stream(make_records(rng, 32), train_s)
    eval_recs_written = make_records(rng, 8)
    write_stream(eval_recs_written, eval_s)
    eval_recs = read_stream(eval_s)
    check(len(eval_recs) == 8 and all(
        np.array_equal(r["input_ids"], ids) and np.array_equal(r["loss_mask"], m)
        for r, (ids, m) in zip(eval_recs, eval_recs_written)), f"{name}: eval stream round trip")

    out32 = os.path.join(tmp, name + "-f32")
    out16 = os.path.join(tmp, name + "-bf16")
    ours32 = train(fixture, train_s, eval_s, out32, "f32")
    ours16 = train(fixture, train_s, eval_s, out16, "bf16")
    if ours32 is None or ours16 is None:
        return

    # f32 checkpoint
    cfg = json.load(open(os.path.join(out32, "config.json")))
    check(cfg.get("torch_dtype") == "float32", f"{name} f32: torch_dtype {cfg.get('torch_dtype')!r}")
    w32 = st_load_file(os.path.join(out32, "model.safetensors"))
    check(all(v.dtype == torch.float32 for v in w32.values()), f"{name} f32: non-f32 tensors")
    m32 = load(out32)
    sd = m32.state_dict()
    if tied:
        check("lm_head.weight" not in w32, f"{name}: tied model saved lm_head.weight")
        check(m32.lm_head.weight.data_ptr() == m32.model.embed_tokens.weight.data_ptr(),
              f"{name}: transformers did not tie lm_head to embed_tokens")
    else:
        check("lm_head.weight" in w32, f"{name}: untied model lacks lm_head.weight")
    missing = [k for k in sd if k not in w32 and not (tied and k == "lm_head.weight")]
    extra = [k for k in w32 if k not in sd]
    check(not missing and not extra, f"{name}: missing {missing} extra {extra}")
    for k, v in w32.items():
        if k in sd and not torch.equal(sd[k], v):
            check(False, f"{name}: transformers' {k} differs from the file")
    ref32, logits32 = eval_loss(m32, eval_recs)
    rel32 = abs(ref32 - ours32) / abs(ref32)
    check(rel32 <= F32_TOL, f"{name} f32: eval_loss ours {ours32} transformers {ref32} rel {rel32:.2e}")
    _, logits0 = eval_loss(load(fixture), eval_recs)
    dmax = max(float((a - b).abs().max()) for a, b in zip(logits32, logits0))
    check(dmax > 1e-4, f"{name}: trained logits equal the fixture's (max diff {dmax:.2e})")
    print(f"{name:11s} f32 : ours {ours32:.8f}  transformers {ref32:.8f}  rel {rel32:.2e}  "
          f"(logits moved {dmax:.3g} from the fixture)")

    # bf16 checkpoint
    cfg = json.load(open(os.path.join(out16, "config.json")))
    check(cfg.get("torch_dtype") == "bfloat16", f"{name} bf16: torch_dtype {cfg.get('torch_dtype')!r}")
    w16 = st_load_file(os.path.join(out16, "model.safetensors"))
    check(sorted(w16) == sorted(w32), f"{name} bf16: tensor names differ from the f32 save")
    nbad = 0
    for k in w16:
        if k not in w32:
            continue
        if not check(w16[k].dtype == torch.bfloat16, f"{name} bf16: {k} is {w16[k].dtype}"):
            continue
        want = bf16_rne(w32[k].numpy())
        got = w16[k].float().numpy()
        same = np.array_equal(want.view(np.uint32), got.view(np.uint32))
        same_torch = torch.equal(w32[k].to(torch.bfloat16), w16[k])
        if not (same and same_torch):
            nbad += 1
            check(False, f"{name} bf16: {k} is not the RNE bf16 of the f32 save "
                  f"({int((want != got).sum())} of {want.size} elements differ)")
    m16 = load(out16)
    ref16, _ = eval_loss(m16, eval_recs)
    with torch.no_grad():
        for p in m32.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ref32r, _ = eval_loss(m32, eval_recs)
    rel16 = abs(ref16 - ref32r) / abs(ref32r)
    check(rel16 <= BF16_TOL, f"{name} bf16: transformers on the bf16 save {ref16} vs on the rounded "
          f"f32 save {ref32r} rel {rel16:.2e}")
    print(f"{name:11s} bf16: ours {ours16:.8f}  transformers {ref16:.8f} (rounded f32 save "
          f"{ref32r:.8f}, rel {rel16:.2e}); weights RNE-exact: {nbad == 0}")
    check(ours16 == ours32, f"{name}: eval_loss differs between the f32 ({ours32}) and bf16 "
          f"({ours16}) runs (it is computed before saving)")


def main():
    build()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="tp-sft-ckpt-") as tmp:
        for i, name in enumerate(CASES):
            run_case(name, tmp, 1234 + i)
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
