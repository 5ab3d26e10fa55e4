"""Peer for bench_tokenize.sh: HF tokenizers on the same JSONL text, timed in-process.

Prints one line per way of calling it: "hf NAME SECONDS" (median of --runs).
"""
import json
import os
import statistics
import sys
import time

from tokenizers import Tokenizer


def main():
    path, data, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(path)
    print(f"hf load {time.perf_counter() - t0:.4f}")
    with open(data) as fh:
        texts = [json.loads(line)["text"] for line in fh]
    ways = {
        "encode-loop": lambda: [tok.encode(t, add_special_tokens=False) for t in texts],
        "encode_batch": lambda: tok.encode_batch(texts, add_special_tokens=False),
    }
    for name, fn in ways.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        print(f"hf {name} {statistics.median(times):.4f}")


if __name__ == "__main__":
    main()
