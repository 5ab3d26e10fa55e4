"""Small tokenizer.json files for tokenize's error and feature tests (issue 3).

    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_tiny_tokenizers.py

Writes tests/fixtures/tokenizer/tiny/:
  bpe.json           byte-level BPE (vocab 400) trained by HF on GSM8K questions,
                     Qwen's pre-tokenizer, a TemplateProcessing post-processor
  bpe.ids.jsonl      HF's ids for a few texts (with and without add_special_tokens)
  wordpiece.json, unigram.json, byte_fallback.json   kinds thinkpipe must refuse
  trained-corpus.json.zst   HF's BpeTrainer on tests/fixtures/tokenizer/corpus.jsonl.zst
                     (vocab 1000, tokenize --train-bpe's default special tokens): what
                     `tokenize --train-bpe 1000` must learn
"""
import subprocess
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "tiny")
QWEN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TEXTS = ["Natalia sold clips to 48 of her friends.", "  spaces\tand\ttabs\n\nnewlines", "<|bos|>special<|eos|> inside",
         "unicode: é ü 数学 👍", ""]


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(SHARED, "data", "gsm8k", "train.jsonl")) as fh:
        corpus = [json.loads(line)["question"] for line in fh][:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A <|eos|>", special_tokens=[("<|bos|>", 0), ("<|eos|>", 1)])
    tok.save(os.path.join(OUT, "bpe.json"))
    with open(os.path.join(OUT, "bpe.ids.jsonl"), "w") as fh:
        for t in TEXTS:
            fh.write(json.dumps({"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
                                 "special_ids": tok.encode(t).ids}, ensure_ascii=False) + "\n")
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wp.save(os.path.join(OUT, "wordpiece.json"))
    uni = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0, False))
    uni.save(os.path.join(OUT, "unigram.json"))
    bf = Tokenizer(models.BPE(vocab={"<unk>": 0, "a": 1, "b": 2, "ab": 3}, merges=[("a", "b")], byte_fallback=True, unk_token="<unk>"))
    bf.save(os.path.join(OUT, "byte_fallback.json"))


def train_corpus():
    raw = subprocess.run(["zstd", "-dc", os.path.join(ROOT, "tests", "fixtures", "tokenizer", "corpus.jsonl.zst")],
                         check=True, capture_output=True).stdout.decode()
    texts = [json.loads(line)["text"] for line in raw.split("\n") if line]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    path = os.path.join(OUT, "trained-corpus.json.zst")
    subprocess.run(["zstd", "-q", "-19", "-f", "-o", path], input=tok.to_str().encode(), check=True)


if __name__ == "__main__":
    train_corpus()
    main()
