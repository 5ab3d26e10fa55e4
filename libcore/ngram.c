#include "ngram.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "textfilter.h"
#include "unicode.h"

uint64_t tp_hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = seed ^ (0x9e3779b97f4a7c15ull * (n + 1));
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ tp_mix64(v)) * 0xff51afd7ed558ccdull;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < n; i++) tail |= (uint64_t)p[i] << (8 * i);
    return tp_mix64(h ^ tail);
}

// ---- words ----

// ASCII bytes that belong to words (letters, digits, '_'); bytes >= 0x80 are decoded.
static const uint64_t ascii_word_bits[2] = {0x03ff000000000000ull, 0x07fffffe87fffffeull};
static inline bool ascii_word_char(unsigned char c) { return c < 0x80 && (ascii_word_bits[c >> 6] >> (c & 63)) & 1; }

// The hash of a word's bytes, 8 at a time. An all-ASCII word is folded to lower case by
// setting bit 5 of every byte: that maps A-Z to a-z and leaves digits alone ('_' becomes
// DEL, which is no word byte, so nothing collides). Other words are hashed as written.
static uint64_t word_hash(const unsigned char *p, size_t n, bool ascii) {
    const uint64_t fold = ascii ? 0x2020202020202020ull : 0;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = (h ^ (v | fold)) * 0x9fb21c651e98df25ull;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    for (unsigned k = 0; i < n; i++, k += 8) tail |= (uint64_t)p[i] << k;
    if (n & 7) h = (h ^ (tail | (fold >> (64 - 8 * (n & 7))))) * 0x9fb21c651e98df25ull;
    return tp_mix64(h);
}

static inline void push_word(tp_words *w, const unsigned char *text, size_t start, size_t end, bool ascii,
                             uint32_t base) {
    w->hash[w->count] = word_hash(text + start, end - start, ascii);
    w->start[w->count] = base + (uint32_t)start, w->end[w->count] = base + (uint32_t)end;
    w->count++;
}

static void reserve(tp_words *w, size_t more) {
    if (w->count + more <= w->cap) return;
    w->cap = w->count + more + w->cap / 2;
    w->hash = tp_xrealloc(w->hash, w->cap * sizeof *w->hash);
    w->start = tp_xrealloc(w->start, w->cap * sizeof *w->start);
    w->end = tp_xrealloc(w->end, w->cap * sizeof *w->end);
}

void tp_words_scan(tp_words *w, const char *text, size_t len, uint32_t base) {
    const unsigned char *s = (const unsigned char *)text;
    reserve(w, len / 2 + 1);  // a word and a separator take two bytes at least (CJK: three)
    size_t start = 0;
    bool in_word = false, ascii = true;
    for (size_t i = 0; i < len;) {
        if (!in_word) {  // the fast path, tight loops over ASCII: most reasoning is ASCII
            while (i < len && s[i] < 0x80 && !ascii_word_char(s[i])) i++;
            if (i == len) break;
            if (s[i] < 0x80) {
                start = i, ascii = true;
                while (i < len && ascii_word_char(s[i])) i++;
                if (i == len || s[i] < 0x80) {
                    push_word(w, s, start, i, true, base);
                    continue;
                }
                in_word = true;  // a non-ASCII letter goes on with the word
            }
        } else if (s[i] < 0x80) {
            if (!ascii_word_char(s[i])) push_word(w, s, start, i, ascii, base), in_word = false;
            i++;
            continue;
        }
        uint32_t cp = 0;
        int n = tp_utf8_decode(s + i, len - i, &cp);
        bool word = n > 0 && (tp_uc_class(cp) & (TP_UC_L | TP_UC_N | TP_UC_M));
        if (word && tp_script_unspaced(cp)) {  // a word by itself
            if (in_word) push_word(w, s, start, i, ascii, base), in_word = false;
            push_word(w, s, i, i + (size_t)n, false, base);
        } else if (word) {
            if (!in_word) start = i, in_word = true;
            ascii = false;
        } else if (in_word) {
            push_word(w, s, start, i, ascii, base), in_word = false;
        }
        i += n > 0 ? (size_t)n : 1;
    }
    if (in_word) push_word(w, s, start, len, ascii, base);
}

void tp_words_free(tp_words *w) {
    free(w->hash), free(w->start), free(w->end);
    *w = (tp_words){0};
}

// ---- the map ----

static size_t slot_of(uint64_t key, size_t cap) { return (size_t)(tp_mix64(key) & (cap - 1)); }

static void grow(tp_u64map *m) {
    tp_u64map big = {.cap = m->cap ? 2 * m->cap : 64, .has_vals = m->has_vals};
    big.alloc = big.cap;
    big.keys = tp_xcalloc(big.cap, sizeof *big.keys);
    if (big.has_vals) big.vals = tp_xcalloc(big.cap, sizeof *big.vals);
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) tp_u64map_add(&big, m->keys[i], m->has_vals ? m->vals[i] : 0, NULL);
    free(m->keys), free(m->vals);
    *m = big;
}

bool tp_u64map_add(tp_u64map *m, uint64_t key, uint64_t val, uint64_t *old) {
    if (!key) key = 1;
    if (val && !m->has_vals) {  // values appear with the first non-zero one
        m->has_vals = true;
        if (m->alloc) m->vals = tp_xcalloc(m->alloc, sizeof *m->vals);
    }
    if (2 * (m->count + 1) > m->cap) grow(m);
    size_t i = slot_of(key, m->cap);
    while (m->keys[i]) {
        if (m->keys[i] == key) {
            if (old) *old = m->has_vals ? m->vals[i] : 0;
            return false;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->keys[i] = key;
    if (m->has_vals) m->vals[i] = val;
    m->count++;
    return true;
}

bool tp_u64map_get(const tp_u64map *m, uint64_t key, uint64_t *val) {
    if (!m->cap) return false;
    if (!key) key = 1;
    for (size_t i = slot_of(key, m->cap); m->keys[i]; i = (i + 1) & (m->cap - 1))
        if (m->keys[i] == key) {
            if (val) *val = m->has_vals ? m->vals[i] : 0;
            return true;
        }
    return false;
}

void tp_u64map_reset(tp_u64map *m, size_t n) {
    size_t cap = 64;
    while (cap < 2 * n + 2) cap *= 2;
    if (cap > m->alloc) {
        free(m->keys), free(m->vals);
        m->keys = tp_xmalloc(cap * sizeof *m->keys);
        m->vals = m->has_vals ? tp_xmalloc(cap * sizeof *m->vals) : NULL;
        m->alloc = cap;
    }
    m->cap = cap;  // only what this use needs is cleared (and probed)
    memset(m->keys, 0, cap * sizeof *m->keys);
    m->count = 0;
}

void tp_u64map_free(tp_u64map *m) {
    free(m->keys), free(m->vals);
    *m = (tp_u64map){0};
}

size_t tp_u64map_bytes(const tp_u64map *m) { return m->alloc * sizeof(uint64_t) * (m->has_vals ? 2 : 1); }

double tp_repeat_fraction(const uint64_t *hash, size_t count, int n, tp_u64map *scratch) {
    if (n < 1 || count < (size_t)n) return 0;
    size_t total = count - (size_t)n + 1, repeats = 0;
    tp_u64map_reset(scratch, total);
    for (size_t i = 0; i < total; i++)
        if (!tp_u64map_add(scratch, tp_ngram_hash(hash + i, n), 0, NULL)) repeats++;
    return (double)repeats / (double)total;
}
