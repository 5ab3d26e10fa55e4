// tokenizer.h — Hugging Face tokenizer.json (byte-level BPE) in C: load, encode,
// decode, with ids identical to the `tokenizers` library.
//
// Supported: model BPE over a ByteLevel pre-tokenizer (GPT-2, Llama 3, Qwen2/3,
// DeepSeek-V3/R1 and the like), merges as "a b" strings or ["a", "b"] pairs,
// ignore_merges, added tokens (leftmost-longest, special or not, normalized or
// not, lstrip/rstrip/single_word), NFC/NFD/NFKC/NFKD normalizers, the pre-tokenizers
// of pretok.h, and the TemplateProcessing/Roberta/Bert post-processors for
// add_special. WordPiece, Unigram, WordLevel, byte-fallback (sentencepiece-style)
// BPE and unknown component types are refused with a message naming them.
//
// A tp_tokenizer is immutable after loading and may be shared by threads; each
// thread encodes with its own tp_tok_state (word cache and scratch buffers).
#ifndef TP_TOKENIZER_H
#define TP_TOKENIZER_H

#include <jv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"

typedef struct tp_tokenizer tp_tokenizer;
typedef struct tp_tok_state tp_tok_state;

typedef struct {
    int32_t *ids;
    size_t count, cap;
} tp_ids;
void tp_ids_push(tp_ids *v, int32_t id);
void tp_ids_free(tp_ids *v);

// path: a model directory (tokenizer.json[.zst] and tokenizer_config.json[.zst]
// inside) or a tokenizer.json file, plain or compressed (its directory is searched
// for tokenizer_config.json).
tp_tokenizer *tp_tokenizer_load(const char *path, tp_err *err);
// The same from tokenizer.json text in memory; name is for messages, config is a
// tokenizer_config.json value (taken; jv_null() for none).
tp_tokenizer *tp_tokenizer_from_json(const char *text, size_t len, const char *name, jv config, tp_err *err);
void tp_tokenizer_free(tp_tokenizer *t);

const char *tp_tokenizer_path(const tp_tokenizer *t);      // the tokenizer.json it was read from
const char *tp_tokenizer_hash(const tp_tokenizer *t);      // 16 hex digits of the file's content hash
int32_t tp_tokenizer_vocab_size(const tp_tokenizer *t);    // largest id + 1, added tokens included
jv tp_tokenizer_config(const tp_tokenizer *t);             // tokenizer_config.json (copy) or jv_null()
bool tp_tokenizer_fast_pretok(const tp_tokenizer *t);      // hand-written pre-tokenizer in use
// Id of a vocabulary or added token given by its text (added-token content, or the
// vocabulary string as it appears in tokenizer.json); -1 when there is none.
int32_t tp_tokenizer_token_id(const tp_tokenizer *t, const char *token);
// The text of a token tokenizer_config.json names under key ("bos_token", "pad_token",
// ...), given as a string or as {"content": ...}; NULL when absent. Valid while t lives.
const char *tp_tokenizer_config_token(const tp_tokenizer *t, const char *key);
bool tp_tokenizer_is_special(const tp_tokenizer *t, int32_t id);
// The ids add_special puts before and after a sequence.
void tp_tokenizer_special_affixes(const tp_tokenizer *t, const int32_t **prefix, size_t *n_prefix,
                                  const int32_t **suffix, size_t *n_suffix);

tp_tok_state *tp_tok_state_new(const tp_tokenizer *t);
void tp_tok_state_free(tp_tok_state *st);

// Appends the ids of text[0..n) to out. text must be valid UTF-8 (an error names the
// first bad byte otherwise). add_special applies the post-processor's template.
int tp_tokenizer_encode(const tp_tokenizer *t, tp_tok_state *st, const char *text, size_t n, bool add_special,
                        tp_ids *out, tp_err *err);
// Appends the bytes of ids[0..n) to out, as HF's ByteLevel decoder produces them
// before its UTF-8 conversion (so the result may end inside a character; see
// tp_utf8_append_lossy). An id outside the vocabulary is an error naming it.
int tp_tokenizer_decode(const tp_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, tp_buf *out,
                        tp_err *err);

// The bytes token id stands for (its text as decode gives it); 0 for an unknown id.
size_t tp_tokenizer_token_bytes(const tp_tokenizer *t, int32_t id, const char **bytes);
// The tokenizer's normaliser (NFC for Qwen; none for Llama 3 and DeepSeek) applied
// to s[0..n): appends to out. Returns whether there is a normaliser.
bool tp_tokenizer_normalize(const tp_tokenizer *t, const char *s, size_t n, tp_buf *out, tp_err *err);

// Test hooks: disable the hand-written pre-tokenizer (run every regex on
// Oniguruma), and choose the word length from which BPE uses its heap.
void tp_tokenizer_force_regex_engine(tp_tokenizer *t, bool on);
void tp_tok_state_set_heap_threshold(tp_tok_state *st, size_t symbols);

#endif
