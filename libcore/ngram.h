// ngram.h — words, word n-grams and their 64-bit hashes, for the text filters.
//
// cot-filter's repetition rule, near-duplicate detection (minhash.h) and
// decontamination all see a text as a sequence of words and compare word n-grams
// by a 64-bit hash (a collision in 2^64 is not a concern at these sizes), so they
// never copy or compare strings.
//
// A word is a maximal run of letters, digits, marks and '_' (Python's \w+); words
// written in ASCII are folded to lower case (others are compared as written); every
// letter of a script written without spaces (tp_script_unspaced in textfilter.h: CJK
// ideographs and kana, Thai, Lao, Myanmar, Khmer) is a word of its own. Everything else
// separates.
#ifndef TP_NGRAM_H
#define TP_NGRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// A finaliser that spreads every input bit over the output (splitmix64's).
static inline uint64_t tp_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

// A fast 64-bit hash of bytes (8 bytes a step, then tp_mix64).
uint64_t tp_hash64(const void *data, size_t n, uint64_t seed);

// The words of a text: a hash of each (of its lower-cased bytes) and its byte span.
typedef struct tp_words {
    uint64_t *hash;
    uint32_t *start, *end;  // text[start[i]..end[i]) is word i (as written, not folded)
    size_t count, cap;
} tp_words;

// Appends the words of text[0..len) to w (text is UTF-8; an invalid byte separates
// words). base is added to the spans, for texts scanned in parts.
void tp_words_scan(tp_words *w, const char *text, size_t len, uint32_t base);
void tp_words_free(tp_words *w);

// The hash of the n words hash[0..n) taken in order.
static inline uint64_t tp_ngram_hash(const uint64_t *hash, int n) {
    uint64_t h = 0x9e3779b97f4a7c15ull * (uint64_t)n;
    for (int i = 0; i < n; i++) h = (h ^ hash[i]) * 0xff51afd7ed558ccdull + 0x632be59bd9b4e019ull;
    return tp_mix64(h);
}

// A map from 64-bit keys to 64-bit values: open addressing, linear probing.
typedef struct tp_u64map {
    uint64_t *keys, *vals;  // key 0 marks an empty slot (a key 0 is stored as 1)
    size_t cap, count, alloc;  // alloc: slots allocated (>= cap)
    bool has_vals;          // vals allocated (tp_u64map_put with a value)
} tp_u64map;

// Adds key (value val when it is new). Returns true when it was new; else false and,
// when old is not NULL, *old is the value stored with it first.
bool tp_u64map_add(tp_u64map *m, uint64_t key, uint64_t val, uint64_t *old);
bool tp_u64map_get(const tp_u64map *m, uint64_t key, uint64_t *val);
// Empties the map and sizes it for about n keys, reusing its memory: for a scratch
// set used once per record, whose cost should follow the record, not the largest one.
void tp_u64map_reset(tp_u64map *m, size_t n);
void tp_u64map_free(tp_u64map *m);
size_t tp_u64map_bytes(const tp_u64map *m);

// The fraction of the word n-grams of a text that repeat an earlier n-gram of the
// same text: (n-grams - distinct n-grams) / n-grams; 0 with fewer than n words.
// A model caught in a loop ("Wait, let me check again. Wait, let me check again. ...")
// scores near 1; ordinary reasoning a few percent. scratch is reused across calls.
double tp_repeat_fraction(const uint64_t *hash, size_t count, int n, tp_u64map *scratch);

#endif
