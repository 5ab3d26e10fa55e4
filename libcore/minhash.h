// minhash.h — MinHash signatures and LSH buckets, for near-duplicate detection.
//
// A text is the set of its word shingles (n-grams, ngram.h). Two texts' signatures
// agree in a position with probability about their Jaccard similarity |A∩B|/|A∪B|.
//
// Signatures use one-permutation hashing (Li, Owen, Zhang 2012): the top 7 bits of a
// shingle's 64-bit hash choose one of TP_MINHASH_K = 128 bins, and each bin keeps the
// smallest hash that falls in it; empty bins borrow from the next non-empty bin
// (rotation densification, Shrivastava and Li 2014). That is one hash and one compare
// per shingle instead of 128, and the same estimator as 128 independent permutations
// once a text has a few hundred shingles.
//
// LSH cuts a signature into b bands of r rows (b*r = 128); two texts become candidates
// when all r rows of some band agree, with probability 1-(1-s^r)^b at similarity s:
// an S-curve whose midpoint is near (1/b)^(1/r). For 16 bands of 8 rows (the default):
//     s       0.5    0.6    0.7    0.8    0.9    0.95
//     P     0.061  0.237  0.613  0.947  0.9999  1.0
// A table holds b 64-bit band keys (each with a 64-bit value) per inserted text, in a hash
// table at most half full: 0.5-1 KB a text for 16 bands, whatever its length.
#ifndef TP_MINHASH_H
#define TP_MINHASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ngram.h"

enum { TP_MINHASH_K = 128, TP_MINHASH_BIN_BITS = 7 };

// The signature of the set of shingle hashes shingles[0..n) (repeats change nothing).
// With n == 0 every bin is UINT64_MAX: an empty text is like no other.
void tp_minhash_sig(const uint64_t *shingles, size_t n, uint64_t sig[TP_MINHASH_K]);
// The fraction of positions where two signatures agree: the Jaccard estimate.
double tp_minhash_similarity(const uint64_t a[TP_MINHASH_K], const uint64_t b[TP_MINHASH_K]);
// The signature of a text's word n-grams (a text of fewer than n words is one shingle,
// all its words). scratch holds the shingle hashes between calls.
void tp_minhash_words(const tp_words *w, int n, uint64_t **scratch, size_t *scratch_cap, uint64_t sig[TP_MINHASH_K]);

typedef struct tp_lsh {
    int bands, rows;
    tp_u64map table;  // band key -> value of the first text inserted with it
} tp_lsh;

// bands * rows must be TP_MINHASH_K. Returns -1 when it is not.
int tp_lsh_init(tp_lsh *l, int bands, int rows);
// Looks sig up: true when some band matches an inserted text (*match: its value, when
// match is not NULL). Inserts sig with value when insert is true and nothing matched.
bool tp_lsh_query(tp_lsh *l, const uint64_t sig[TP_MINHASH_K], bool insert, uint64_t value, uint64_t *match);
void tp_lsh_free(tp_lsh *l);
// 1-(1-s^rows)^bands: how likely texts of Jaccard similarity s become candidates.
double tp_lsh_probability(double s, int bands, int rows);

#endif
