// unicode.h — UTF-8 decoding and validation, Unicode general categories as bit
// flags, and normalisation forms, for the tokenizer.
//
// Categories and NFC come from libutf8proc (Unicode 15, the same version as the
// Oniguruma that Hugging Face tokenizers' regexes run on). The category lookup is a
// two-level table built once, so the pre-tokenizer pays one load per character.
#ifndef TP_UNICODE_H
#define TP_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"

// Class flags: the regex classes \p{L} \p{N} \p{M} \p{P} \p{S} and \s (White_Space:
// U+0009..U+000D, U+0085 and the Zs/Zl/Zp characters, which is Oniguruma's \s).
enum {
    TP_UC_L = 1,
    TP_UC_N = 2,
    TP_UC_M = 4,
    TP_UC_P = 8,
    TP_UC_S = 16,
    TP_UC_SPACE = 32,
};

// Flags of one code point (cp <= 0x10FFFF).
uint8_t tp_uc_class(uint32_t cp);

// Decodes the UTF-8 character at s[0..n) (n >= 1) into *cp; returns its length
// (1..4), or 0 when the bytes are not a complete, valid, shortest-form character.
int tp_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
// Same as tp_utf8_decode for text already known to be valid.
static inline int tp_utf8_next(const unsigned char *s, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}
int tp_utf8_encode(uint32_t cp, char out[4]);  // returns the length

// True when s[0..n) is valid UTF-8; otherwise *bad_offset is the first bad byte.
bool tp_utf8_valid(const char *s, size_t n, size_t *bad_offset);
// Length of the longest prefix of s[0..n) that does not end inside a character that
// the following bytes could still complete (for streaming decode).
size_t tp_utf8_complete_prefix(const char *s, size_t n);
// Appends s[0..n) to out with each maximal invalid subsequence replaced by U+FFFD,
// as Rust's String::from_utf8_lossy (and so HF tokenizers' decode) does.
void tp_utf8_append_lossy(tp_buf *out, const char *s, size_t n);

typedef enum { TP_NORM_NFC, TP_NORM_NFD, TP_NORM_NFKC, TP_NORM_NFKD } tp_norm_form;
// Appends the normalisation of valid UTF-8 s[0..n) to out. Returns 0, or -1 with err.
int tp_unicode_normalize(tp_norm_form form, const char *s, size_t n, tp_buf *out, tp_err *err);

#endif
