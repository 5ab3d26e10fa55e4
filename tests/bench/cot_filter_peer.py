#!/usr/bin/env python3
"""The Python pipeline cot-filter is measured against (tests/bench/bench_cot_filter.sh).

The same three rules as `cot-filter --decontaminate FILE --verify --dedup near`, in the same
order, the way open-r1's scripts would write them:
  - decontaminate: word 8-grams of the problem against a set of the benchmark problems' 8-grams
    (open-r1's scripts/decontaminate.py; words here are \\w+ runs lower-cased, as cot-filter's);
  - verify: math-verify's parse() of the text after </think> (boxed and "answer is" anchors, no
    bare last number) against parse() of the gold answer, then verify();
  - dedup near: datasketch MinHash (128 permutations) of the word 5-shingles of reasoning +
    content, MinHashLSH with 16 bands of 8 rows; a trace whose query finds an earlier kept
    trace is a duplicate, otherwise it is inserted.
Reads JSONL traces (files or stdin), writes the kept ones to stdout.
"""
import argparse
import json
import re
import sys

from datasketch import MinHash, MinHashLSH
from math_verify import LatexExtractionConfig, ExprExtractionConfig, parse, verify

WORD = re.compile(r"\w+")


def words(text):
    return WORD.findall(text.lower())


def ngrams(ws, n):
    if len(ws) < n:
        return [" ".join(ws)] if ws else []
    return [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def problem_of(rec):
    for key in ("problem", "question", "prompt"):
        if isinstance(rec.get(key), str):
            return rec[key]
    for m in rec.get("messages", []):
        if m.get("role") == "user":
            return m.get("content")
    return None


def answer_part(rec):
    content = rec.get("content") or ""
    if (rec.get("reasoning") or "").strip():
        return content
    if "</think>" in content:
        return content.rsplit("</think>", 1)[1]
    return "" if "<think>" in content else content


PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
               ExprExtractionConfig(try_extract_without_anchor=False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--decontaminate", action="append", default=[])
    ap.add_argument("--ngram", type=int, default=8)
    ap.add_argument("--shingle", type=int, default=5)
    ap.add_argument("files", nargs="*")
    a = ap.parse_args()

    bench = set()
    for path in a.decontaminate:
        with open(path) as f:
            for line in f:
                bench.update(ngrams(words(problem_of(json.loads(line))), a.ngram))

    lsh = MinHashLSH(num_perm=128, params=(16, 8))
    counts = {"in": 0, "decontaminate": 0, "verify": 0, "dedup": 0}
    out = sys.stdout
    for path in a.files or ["-"]:
        f = sys.stdin if path == "-" else open(path)
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            counts["in"] += 1
            rec = json.loads(line)
            if bench and any(g in bench for g in ngrams(words(problem_of(rec)), a.ngram)):
                counts["decontaminate"] += 1
                continue
            gold = parse("$" + rec["answer"] + "$")
            pred = parse(answer_part(rec), extraction_config=PRED_CONFIG)
            if not pred or not gold or not verify(gold, pred):
                counts["verify"] += 1
                continue
            m = MinHash(num_perm=128)
            shingles = ngrams(words(rec.get("reasoning") or "") + words(rec.get("content") or ""), a.shingle)
            m.update_batch([s.encode() for s in shingles])
            if lsh.query(m):
                counts["dedup"] += 1
                continue
            lsh.insert(str(n) + path, m)
            out.write(line if line.endswith("\n") else line + "\n")
    print(json.dumps(counts), file=sys.stderr)


if __name__ == "__main__":
    main()
