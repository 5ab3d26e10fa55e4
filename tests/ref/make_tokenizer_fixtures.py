"""Token-id fixtures from Hugging Face `tokenizers` (the Rust library), for issue 3.

    sh tests/ref/setup-venv.sh && \
    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_tokenizer_fixtures.py

Writes tests/fixtures/tokenizer/corpus.jsonl.zst ({"text"} per line, >= 5,000 documents:
GSM8K and MATH-500 problems and solutions, source code, many scripts and languages,
adversarial strings) and, for each tokenizer in ../shared/tokenizers, NAME.ids.jsonl.zst
with {"ids": [...]} per corpus line (no special tokens added), as HF encodes them.
The C tests read these files; they never run Python.
"""
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
TOKENIZERS = ["qwen3", "llama3", "deepseek-v3"]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "数学是科学的语言。我们来计算 3 + 5 = 8。",
    "日本語のテキスト：東京は2024年に晴れでした。",
    "한국어 문장입니다. 답은 42입니다.",
    "Привет, мир! Ответ: x = 17.",
    "Γειά σου κόσμε· το π είναι περίπου 3,14159.",
    "مرحبا بالعالم! الجواب هو ٤٢.",
    "שלום עולם, התשובה היא 7.",
    "नमस्ते दुनिया, उत्तर १२ है।",
    "สวัสดีชาวโลก คำตอบคือ ๙",
    "Ça coûte 12,50 € — déjà vu, naïve café.",
    "Straße, Größe, Maß; ﬁnancial ligatures ﬂ.",
    "Emoji: 👩‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇯🇵 flag, ❤️ heart.",
    "Math: ∀x∈ℝ, ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6 ≈ ∞.",
    "Tiếng Việt có dấu: Hà Nội, Đà Nẵng.",
    "Türkçe: İstanbul, ığüşöç.",
    "ქართული ენა, Հայերեն, አማርኛ.",
]

ADVERSARIAL = [
    " ", "  ", "\t\t", "\n\n\n", "a  b   c    d", "   leading", "trailing   ", "\r\n", "line1\r\nline2\r\n",
    "x\u0085y", "a\u00a0b\u00a0\u00a0c", "\ufeffbom start", "mid\ufeffdle", "mongolian\u180espace",
    "e\u0301 combining", "Z\u0351\u0308\u0324a\u0350\u0353lgo", "'ſ", "'s 'S 'll 'LL 'Re", "don't I'm we've",
    "12345678901234567890", "3.14159 2,718", "abc123def", "数字123和456", "１２３ full-width", "٣٤٥ arabic digits",
    "👨‍💻👩‍🔬🏳️‍🌈", "<|im_start|>user\nhi<|im_end|>", "<think>\nreasoning\n</think>\n\nanswer",
    "<｜User｜>hi<｜Assistant｜>", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>",
    "<|endoftext|>", "<|im_start|", "< think >", "\\boxed{\\frac{1}{2}}", "$$x^2+y^2=z^2$$",
    "    def f(x):\n        return x ** 2\n", "{\"json\": [1, 2, 3]}", "http://example.com/a?b=c&d=e",
    "a" * 300, " " * 50 + "x", "\n" * 20 + "y", "!!!???...", "---***___", "@#$%^&*()",
    "\u200b zero width", "\u2028 line sep \u2029 para", "tab\there", "\x00 nul", "\x7f del", "\U0001F600\U0001F601",
]


def corpus():
    docs = []
    with open(os.path.join(SHARED, "data", "gsm8k", "train.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    for row in rows[:1500]:
        docs.append(row["question"])
        docs.append(row["answer"])
    with open(os.path.join(SHARED, "data", "math500", "test.jsonl")) as fh:
        for line in fh:
            row = json.loads(line)
            docs.append(row["problem"])
            docs.append(row["solution"])
    for sub in ("libcore", "tests/unit", "tools", "kernels/cuda"):
        for name in sorted(os.listdir(os.path.join(ROOT, sub))):
            with open(os.path.join(ROOT, sub, name), encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            docs.extend("\n".join(lines[i : i + 30]) for i in range(0, len(lines), 30))
    rng = random.Random(1234)
    for _ in range(400):
        docs.append(" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 4))))
    docs.extend(ADVERSARIAL)
    while len(docs) < 5200:
        parts = [rng.choice(ADVERSARIAL + SENTENCES) for _ in range(rng.randint(2, 5))]
        docs.append(rng.choice(["", " ", "\n", "  "]).join(parts))
    return docs


def write_zst(path, lines):
    data = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines).encode()
    subprocess.run(["zstd", "-q", "-19", "-f", "-o", path], input=data, check=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    docs = corpus()
    write_zst(os.path.join(OUT, "corpus.jsonl.zst"), [{"text": d} for d in docs])
    for name in TOKENIZERS:
        tok = Tokenizer.from_file(os.path.join(SHARED, "tokenizers", name, "tokenizer.json"))
        encs = tok.encode_batch(docs, add_special_tokens=False)
        write_zst(os.path.join(OUT, f"{name}.ids.jsonl.zst"), [{"ids": e.ids} for e in encs])
        n = sum(len(e.ids) for e in encs)
        print(f"{name}: {len(docs)} documents, {n} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
