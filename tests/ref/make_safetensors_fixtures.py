"""Safetensors fixtures from the reference implementation (PyPI `safetensors`).

    sh tests/ref/setup-venv.sh && make && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_safetensors_fixtures.py

1. Writes tests/fixtures/safetensors/ref.safetensors and a two-shard checkpoint
   (shards/) with safetensors' own writer; test_safetensors reads them and checks
   every value, which it can compute (value[i] = f(i) below).
2. Checks the other direction: a file written by our tensor-cat --pack (a one-record
   stream is a safetensors file) loads in safetensors with the values we asked for.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")
TENSOR_CAT = os.path.join(ROOT, "build", "release", "bin", "tensor-cat")


def ref_tensors():
    # value[i] = i * 0.25 - 3 for floats, i - 5 for signed, i for unsigned (flat index i)
    def f(shape, dtype):
        n = int(np.prod(shape))
        i = np.arange(n, dtype=np.float64)
        if np.issubdtype(dtype, np.floating):
            v = i * 0.25 - 3
        elif np.issubdtype(dtype, np.signedinteger):
            v = i - 5
        else:
            v = i
        return v.astype(dtype).reshape(shape)

    return {
        "model.embed_tokens.weight": f((7, 5), np.float32),
        "model.norm.weight": f((5,), np.float16),
        "lm_head.bias": f((3,), np.float64),
        "ids": f((2, 3), np.int32),
        "big_ids": f((4,), np.int64),
        "mask": f((6,), np.uint8),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float32),
    }


def main():
    os.makedirs(os.path.join(OUT, "shards"), exist_ok=True)
    tensors = ref_tensors()
    save_file(tensors, os.path.join(OUT, "ref.safetensors"), metadata={"format": "np", "producer": "safetensors"})

    # Two shards and an index, as transformers' save_pretrained lays them out.
    names = sorted(tensors)
    shard_of = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"model-0000{k + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(OUT, "shards", fname), metadata={"format": "np"})
        shard_of.update({n: fname for n in part})
    with open(os.path.join(OUT, "shards", "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": shard_of},
                  fh, indent=2, sort_keys=True)

    # Our writer -> their reader.
    records = {
        "tensors": {
            "a": {"dtype": "F32", "shape": [2, 2], "data": [1.5, -2, 0.1, 3e38]},
            "b": {"dtype": "BF16", "data": [1.0, -0.5, 3.140625]},
            "c": {"dtype": "I64", "data": [-(2**40), 0, 2**40]},
            "d": {"dtype": "U8", "data": [0, 255]},
            "e": {"dtype": "F16", "shape": [1, 3], "data": [65504, -0.0001, 0.5]},
        },
        "metadata": {"who": "thinkpipe"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ours.safetensors")
        subprocess.run([TENSOR_CAT, "--pack", "-q", "-o", path], input=json.dumps(records).encode(), check=True)
        # safe_open validates the whole header (offsets, sizes, alignment); numpy has
        # no bfloat16, so "b" is checked from the raw bytes below.
        with safe_open(path, framework="np") as fh:
            assert sorted(fh.keys()) == ["a", "b", "c", "d", "e"]
            assert fh.metadata() == {"who": "thinkpipe"}
            got = {k: fh.get_tensor(k) for k in "acde"}
        assert np.array_equal(got["a"], np.array([[1.5, -2, 0.1, 3e38]], dtype=np.float32).reshape(2, 2))
        assert np.array_equal(got["c"], np.array([-(2**40), 0, 2**40], dtype=np.int64))
        assert np.array_equal(got["d"], np.array([0, 255], dtype=np.uint8))
        assert np.array_equal(got["e"], np.array([[65504, -0.0001, 0.5]], dtype=np.float16))
        with open(path, "rb") as fh:
            blob = fh.read()
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + n])
        assert header["__metadata__"] == {"who": "thinkpipe"}
        b0, b1 = header["b"]["data_offsets"]
        bf16 = np.frombuffer(blob[8 + n + b0 : 8 + n + b1], dtype=np.uint16)
        assert list(bf16) == [0x3F80, 0xBF00, 0x4049], [hex(x) for x in bf16]
        assert (8 + n) % 8 == 0
    print("safetensors fixtures written; tensor-cat output loads in safetensors", file=sys.stderr)


if __name__ == "__main__":
    main()
