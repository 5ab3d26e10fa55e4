// pretok.h — Hugging Face pre-tokenizers: Split (regex or literal, the five
// delimiter behaviours, invert), Digits, ByteLevel, and Sequence, which runs each
// step on the pieces the previous one produced.
//
// Regexes run on Oniguruma, the engine HF tokenizers uses, so any pattern means
// what it means there. The patterns of the GPT-4/Qwen2/Llama 3 and DeepSeek-V3
// pre-tokenizers are recognised by their exact text and run by hand-written
// matchers instead, which are several times faster; tests check them against
// Oniguruma on the whole corpus and under fuzzing.
#ifndef TP_PRETOK_H
#define TP_PRETOK_H

#include <jv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct tp_pretok tp_pretok;

// A piece of text: bytes [off, off+len) of the working text.
typedef struct {
    uint32_t off, len;
} tp_span;

typedef struct {
    tp_span *items;
    size_t count, cap;
} tp_spans;

// Builds a pre-tokenizer from the tokenizer.json "pre_tokenizer" value (borrowed).
// Unknown types are refused with a message naming them. *byte_level is set when the
// last step is ByteLevel (pieces are then byte sequences for a byte-level BPE).
tp_pretok *tp_pretok_new(jv spec, bool *byte_level, tp_err *err);
void tp_pretok_free(tp_pretok *p);
// Disables the hand-written matchers so every regex runs on Oniguruma (for tests).
void tp_pretok_force_regex_engine(tp_pretok *p, bool on);
// True when every regex step runs on a hand-written matcher.
bool tp_pretok_is_fast(const tp_pretok *p);

// Splits text[0..n) (valid UTF-8). *text_out points at the working text the spans
// index: text itself, or a scratch copy when ByteLevel added a prefix space.
// scratch/spans/tmp are caller-owned buffers reused between calls.
typedef struct {
    uint32_t start, end;
    bool match;
} tp_pretok_match;
typedef struct {
    tp_pretok_match *items;
    size_t count, cap;
} tp_pretok_matches;
typedef struct {
    tp_spans spans, tmp, work;
    tp_pretok_matches matches;
    char *text;
    size_t text_len, text_cap;
} tp_pretok_scratch;
int tp_pretok_run(const tp_pretok *p, const char *text, size_t n, tp_pretok_scratch *scratch,
                  const char **text_out, tp_err *err);
void tp_pretok_scratch_free(tp_pretok_scratch *s);

#endif
