"""GGUF fixtures from the reference implementation (PyPI `gguf`, llama.cpp's gguf-py).

    sh tests/ref/setup-venv.sh && ~/.cache/thinkpipe-ref-venv/bin/pip install gguf==0.17.1 && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_gguf_fixtures.py

Writes tests/fixtures/gguf/ (read by tests/unit/test_gguf.c) and seeds tests/fuzz/corpus/gguf/:

  types.gguf         one tensor per type we dequantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
                     Q2_K..Q6_K) with odd shapes and special values, one IQ4_NL tensor (a type we refuse),
                     an empty tensor, and metadata of every value type (nested arrays too).
  types.expected.safetensors   gguf.quants.dequantize of every supported tensor, float32, numpy shape
                     (= GGUF's ne reversed); the C test compares bit for bit.
  types.metadata.json          the metadata as gguf-py's GGUFReader reads it back.
  llama_tiny.gguf, qwen3_tiny.gguf   tiny models in llama.cpp's layout: HF-named weights renamed, and
                     for llama q_proj/k_proj rows permuted as llama.cpp's converter does.
  hf.expected.safetensors      the HF tensors those files were made from ("llama/<hf name>", "qwen3/...").
  llama_tiny.transformers_config.json   the config transformers' GGUF loader derives (when importable).

Quantized payloads come from gguf-py's own quantizers where it has one (Q4_0..Q8_0, BF16); the K-quants
have none, so their blocks are random bytes with finite f16 scales — dequantization is what is tested.
If transformers is importable, the tiny llama file is also loaded through transformers' GGUF loader and
its state dict compared to hf.expected (the q/k un-permutation oracle).
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import quantize, dequantize
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus", "gguf")

rng = np.random.default_rng(20240611)


def f16_scales(n, lo, hi):
    return rng.uniform(lo, hi, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)


def k_quant_blocks(qtype, nblocks):
    """Random K-quant blocks whose f16 scale fields hold finite values (positions per gguf-py's layout)."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    if qtype in (T.Q2_K,):      # scales[16] qs[64] d dmin
        b[:, 80:82] = f16_scales(nblocks, -0.05, 0.05)
        b[:, 82:84] = f16_scales(nblocks, -0.05, 0.05)
    elif qtype == T.Q3_K:       # hmask[32] qs[64] scales[12] d
        b[:, 108:110] = f16_scales(nblocks, -0.05, 0.05)
    elif qtype in (T.Q4_K, T.Q5_K):  # d dmin scales[12] ...
        b[:, 0:2] = f16_scales(nblocks, -0.05, 0.05)
        b[:, 2:4] = f16_scales(nblocks, -0.05, 0.05)
    elif qtype == T.Q6_K:       # ql[128] qh[64] scales[16] d
        b[:, 208:210] = f16_scales(nblocks, -0.05, 0.05)
    return b


def quantized(qtype, shape):
    """(bytes array of GGUF row layout, gguf-py's dequantized float32 array of `shape`)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        nblocks = int(np.prod(shape)) // block
        raw = k_quant_blocks(qtype, nblocks).reshape(*shape[:-1], shape[-1] // block * size)
    else:
        x = rng.normal(0, 1, size=shape).astype(np.float32)
        x.flat[0] = 0.0
        if x.shape[-1] >= 64:
            x[..., 32:64] = 0.0  # an all-zero block (d = 0)
        raw = quantize(x, qtype)
    ref = dequantize(raw, qtype).astype(np.float32, copy=False)
    assert ref.shape == tuple(shape), (qtype, ref.shape, shape)
    return raw, ref


def type_tensors():
    """[(name, array to write, raw_dtype or None, expected float32 or None)]"""
    out = []
    f32 = rng.normal(0, 3, size=(5, 7)).astype(np.float32)
    f32.flat[:6] = [-0.0, np.inf, -np.inf, 1e-45, 3.4028235e38, -1.17549435e-38]
    f32_bits = f32.view(np.uint32)
    f32_bits.flat[6] = 0x7FC00001  # a NaN with a payload
    f32_bits.flat[7] = 0xFF800123  # a signalling NaN, negative
    out.append(("f32.5x7", f32, None, f32.copy()))

    f16 = rng.normal(0, 100, size=(3, 11)).astype(np.float16)
    f16.flat[:6] = [-0.0, np.inf, -np.inf, 6e-8, 65504, -3e-5]  # subnormals, max
    f16.view(np.uint16).flat[6] = 0x7E01  # NaN with a payload
    f16.view(np.uint16).flat[7] = 0xFC01  # signalling NaN
    out.append(("f16.3x11", f16, None, dequantize(f16.view(np.uint8), T.F16).reshape(3, 11)))

    b = rng.normal(0, 1, size=(2, 3, 5)).astype(np.float32)
    b.flat[:4] = [-0.0, np.inf, 1e-40, np.nan]
    raw = quantize(b, T.BF16)
    raw.view(np.uint16).flat[4] = 0xFF81  # a NaN payload as stored
    out.append(("bf16.2x3x5", raw, T.BF16, dequantize(raw, T.BF16)))

    for qtype, shape in [(T.Q8_0, (3, 96)), (T.Q4_0, (5, 64)), (T.Q4_1, (7, 32)), (T.Q5_0, (2, 3, 64)),
                         (T.Q5_1, (3, 160)), (T.Q2_K, (1, 256)), (T.Q3_K, (3, 256)), (T.Q4_K, (2, 512)),
                         (T.Q5_K, (3, 256)), (T.Q6_K, (3, 512)), (T.Q4_1, (1, 2, 1, 64))]:
        raw, ref = quantized(qtype, shape)
        name = f"{qtype.name.lower()}.{'x'.join(map(str, shape))}"
        out.append((name, raw, qtype, ref))

    four = np.arange(12, dtype=np.float32).reshape(2, 1, 3, 2) - 5.5
    out.append(("f32.2x1x3x2", four, None, four.copy()))
    out.append(("f32.empty", np.zeros((0, 4), dtype=np.float32), None, np.zeros((0, 4), dtype=np.float32)))
    iq = rng.integers(0, 256, size=(2, 18), dtype=np.uint8)  # 2 rows of one IQ4_NL block
    out.append(("iq4_nl.unsupported", iq, T.IQ4_NL, None))
    return out


# (key, value, type, element type): every value type, arrays of several, a nested array.
METADATA = [
    ("test.u8", 200, V.UINT8, None), ("test.i8", -100, V.INT8, None),
    ("test.u16", 65000, V.UINT16, None), ("test.i16", -32000, V.INT16, None),
    ("test.u32", 4000000000, V.UINT32, None), ("test.i32", -2000000000, V.INT32, None),
    ("test.f32", 0.1, V.FLOAT32, None), ("test.bool_true", True, V.BOOL, None),
    ("test.bool_false", False, V.BOOL, None), ("test.string", "h\u00e9llo \"w\u00f6rld\"\n\t\u2713", V.STRING, None),
    ("test.u64", 2**53, V.UINT64, None), ("test.i64", -(2**40) - 7, V.INT64, None),
    ("test.f64", -1.0e300 / 3, V.FLOAT64, None), ("test.empty_string", "", V.STRING, None),
    ("test.array_i32", [1, -2, 3], V.ARRAY, V.INT32), ("test.array_f32", [0.5, -1.25, 1e-3], V.ARRAY, V.FLOAT32),
    ("test.array_u8", [0, 7, 255], V.ARRAY, V.UINT8), ("test.array_bool", [True, False], V.ARRAY, V.BOOL),
    ("test.array_string", ["a", "", "\u00fcn\u00ef"], V.ARRAY, V.STRING),
    ("test.array_f64", [1.5, -2.25], V.ARRAY, V.FLOAT64), ("test.array_i64", [-(2**40), 2**40], V.ARRAY, V.INT64),
    # gguf-py's writer types inner arrays by their first element (int -> int32, str -> string)
    ("test.array_nested", [[1, 2], [3], ["x", "y"]], V.ARRAY, V.ARRAY),
]


def add_metadata(w):
    for key, val, vtype, sub in METADATA:
        w.add_key_value(key, val, vtype, sub)


def as_json(val, vtype, sub):
    """The value as our reader reports it: float32 values widened exactly to double."""
    if vtype == V.FLOAT32:
        return float(np.float32(val))
    if vtype == V.ARRAY and sub == V.FLOAT32:
        return [float(np.float32(v)) for v in val]
    return val


def write_types():
    path = os.path.join(OUT, "types.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    add_metadata(w)
    expected = {}
    for name, arr, raw_dtype, ref in type_tensors():
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
        if ref is not None:
            expected[name] = np.ascontiguousarray(ref, dtype=np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(OUT, "types.expected.safetensors"))

    meta = {"general.architecture": "test"}
    meta.update({key: as_json(val, vtype, sub) for key, val, vtype, sub in METADATA})
    with open(os.path.join(OUT, "types.metadata.json"), "w") as fh:
        json.dump(meta, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    # gguf-py's reader agrees (except on nested arrays, which it flattens), and on every tensor.
    r = gguf.GGUFReader(path)
    for key, want in meta.items():
        if key != "test.array_nested":
            got = r.fields[key].contents()
            assert (as_json(got, r.fields[key].types[0], r.fields[key].types[-1]) == want), (key, got, want)
    for t in r.tensors:
        if t.name in expected:
            got = dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
            assert got.tobytes() == expected[t.name].tobytes(), t.name
    return path


# ---- tiny models in llama.cpp's layout ------------------------------------------------------------

def llama_permute(w, n_head):
    """What llama.cpp's converter does to q_proj/k_proj rows (HF half-split RoPE -> interleaved pairs)."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    stem, suffix = hf.rsplit(".", 1)
    glob = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    if stem in glob:
        return f"{glob[stem]}.{suffix}"
    parts = stem.split(".")
    return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:])]}.{suffix}"


def tiny_weights(layers, hidden, heads, kv_heads, head_dim, ff, vocab, tied, qk_norm, qkv_bias, **_):
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, hidden)),
         "model.norm.weight": 1 + 0.1 * rng.normal(size=hidden)}
    if not tied:
        w["lm_head.weight"] = rng.normal(0, 0.3, (vocab, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=hidden)
        w[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.2, (heads * head_dim, hidden))
        w[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.2, (kv_heads * head_dim, hidden))
        w[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.2, (kv_heads * head_dim, hidden))
        w[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.2, (hidden, heads * head_dim))
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = 0.1 * rng.normal(size=heads * head_dim)
            w[p + "self_attn.k_proj.bias"] = 0.1 * rng.normal(size=kv_heads * head_dim)
            w[p + "self_attn.v_proj.bias"] = 0.1 * rng.normal(size=kv_heads * head_dim)
        if qk_norm:
            w[p + "self_attn.q_norm.weight"] = 1 + 0.1 * rng.normal(size=head_dim)
            w[p + "self_attn.k_norm.weight"] = 1 + 0.1 * rng.normal(size=head_dim)
        w[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (ff, hidden))
        w[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (ff, hidden))
        w[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (hidden, ff))
    return {k: v.astype(np.float32) for k, v in w.items()}


def add_tokenizer(w, vocab):
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(vocab - 3)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("tiny")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def write_tiny(arch, fname, **hp):
    weights = tiny_weights(**hp)
    path = os.path.join(OUT, fname)
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_name(f"{arch} tiny")
    w.add_block_count(hp["layers"])
    w.add_context_length(128)
    w.add_embedding_length(hp["hidden"])
    w.add_feed_forward_length(hp["ff"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["heads"] != hp["hidden"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    if hp.get("rope_scaling"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)
    add_tokenizer(w, hp["vocab"])
    for hf, t in weights.items():
        name = gguf_name(hf)
        data = t
        if arch == "llama" and ".self_attn.q_proj." in hf:
            data = llama_permute(t, hp["heads"])
        elif arch == "llama" and ".self_attn.k_proj." in hf:
            data = llama_permute(t, hp["kv_heads"])
        w.add_tensor(name, np.ascontiguousarray(data))
    if hp.get("rope_freqs"):
        # llama.cpp's form of Llama 3 rope scaling: one divisor per rotary frequency.
        w.add_tensor("rope_freqs.weight", np.linspace(1, 8, hp["head_dim"] // 2).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, weights


def check_with_transformers(path, weights):
    try:
        from transformers import AutoModelForCausalLM
    except Exception as e:  # torch/transformers not installed: the permutation is then checked on SmolLM2 only
        print(f"transformers not importable ({e.__class__.__name__}); skipping the transformers cross-check")
        return
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    cfg = load_gguf_checkpoint(path, return_tensors=False)["config"]
    cfg.pop("_model_name_or_path", None)
    with open(path.replace(".gguf", ".transformers_config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1, sort_keys=True)
        fh.write("\n")
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype="float32")
    sd = model.state_dict()
    for k, v in weights.items():
        got = sd[k].numpy()
        assert got.shape == v.shape and np.array_equal(got, v), f"transformers disagrees on {k}"
    print(f"transformers' GGUF loader gives the same {len(weights)} tensors for {os.path.basename(path)}")


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(CORPUS, exist_ok=True)
    types_path = write_types()
    common = dict(layers=2, hidden=16, heads=4, kv_heads=2, ff=24, vocab=16)
    llama_path, llama_w = write_tiny("llama", "llama_tiny.gguf", head_dim=4, tied=False, qk_norm=False,
                                     qkv_bias=False, rope_theta=500000.0, rope_freqs=True, **common)
    qwen3_path, qwen3_w = write_tiny("qwen3", "qwen3_tiny.gguf", head_dim=8, tied=True, qk_norm=True,
                                     qkv_bias=False, rope_theta=1000000.0, rope_scaling=True, **common)
    hf = {f"llama/{k}": v for k, v in llama_w.items()}
    hf.update({f"qwen3/{k}": v for k, v in qwen3_w.items()})
    save_file(hf, os.path.join(OUT, "hf.expected.safetensors"))
    check_with_transformers(llama_path, llama_w)
    # (transformers 4.53 has no GGUF support for qwen3: that file is checked against its source weights only)

    for p in (types_path, llama_path, qwen3_path):
        with open(p, "rb") as src, open(os.path.join(CORPUS, os.path.basename(p)), "wb") as dst:
            dst.write(src.read())
    for f in sorted(os.listdir(OUT)):
        print(f"{f}: {os.path.getsize(os.path.join(OUT, f))} bytes")


if __name__ == "__main__":
    sys.exit(main())
