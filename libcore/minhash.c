#include "minhash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void tp_minhash_sig(const uint64_t *shingles, size_t n, uint64_t sig[TP_MINHASH_K]) {
    for (int i = 0; i < TP_MINHASH_K; i++) sig[i] = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = shingles[i];
        unsigned bin = (unsigned)(h >> (64 - TP_MINHASH_BIN_BITS));
        uint64_t v = h << TP_MINHASH_BIN_BITS;  // the rest of the bits orders the bin
        if (v < sig[bin]) sig[bin] = v;
    }
    if (!n) return;
    // Rotation densification: an empty bin takes the value of the next non-empty one,
    // salted with the distance, so that two texts' empty bins agree when their
    // donors do. Walk backwards once from a non-empty bin.
    int last = TP_MINHASH_K - 1;
    while (sig[last] == UINT64_MAX) last--;
    uint64_t donor = sig[last];
    int dist = 0;
    for (int k = 1; k <= TP_MINHASH_K; k++) {
        int i = (last - k + TP_MINHASH_K) % TP_MINHASH_K;
        if (i == last) break;
        if (sig[i] == UINT64_MAX) {
            dist++;
            sig[i] = tp_mix64(donor + 0x9e3779b97f4a7c15ull * (uint64_t)dist) | 1;  // never UINT64_MAX by chance
        } else {
            donor = sig[i], dist = 0;
        }
    }
}

double tp_minhash_similarity(const uint64_t a[TP_MINHASH_K], const uint64_t b[TP_MINHASH_K]) {
    int same = 0;
    for (int i = 0; i < TP_MINHASH_K; i++) same += a[i] == b[i];
    return (double)same / TP_MINHASH_K;
}

void tp_minhash_words(const tp_words *w, int n, uint64_t **scratch, size_t *scratch_cap, uint64_t sig[TP_MINHASH_K]) {
    size_t count = w->count == 0 ? 0 : w->count < (size_t)n ? 1 : w->count - (size_t)n + 1;
    if (count > *scratch_cap) {
        *scratch_cap = count + count / 2;
        *scratch = tp_xrealloc(*scratch, *scratch_cap * sizeof **scratch);
    }
    int len = w->count < (size_t)n ? (int)w->count : n;
    for (size_t i = 0; i < count; i++) (*scratch)[i] = tp_ngram_hash(w->hash + i, len);
    tp_minhash_sig(*scratch, count, sig);
}

int tp_lsh_init(tp_lsh *l, int bands, int rows) {
    *l = (tp_lsh){.bands = bands, .rows = rows};
    return bands > 0 && rows > 0 && bands * rows == TP_MINHASH_K ? 0 : -1;
}

static uint64_t band_key(const uint64_t *sig, int band, int rows) {
    uint64_t h = 0x243f6a8885a308d3ull ^ (uint64_t)band * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < rows; i++) h = tp_mix64(h ^ sig[band * rows + i]);
    return h;
}

bool tp_lsh_query(tp_lsh *l, const uint64_t sig[TP_MINHASH_K], bool insert, uint64_t value, uint64_t *match) {
    if (sig[0] == UINT64_MAX) return false;  // an empty text
    uint64_t keys[TP_MINHASH_K];
    for (int b = 0; b < l->bands; b++) {
        keys[b] = band_key(sig, b, l->rows);
        if (tp_u64map_get(&l->table, keys[b], match)) return true;
    }
    if (insert)
        for (int b = 0; b < l->bands; b++) tp_u64map_add(&l->table, keys[b], value, NULL);
    return false;
}

void tp_lsh_free(tp_lsh *l) { tp_u64map_free(&l->table); }

double tp_lsh_probability(double s, int bands, int rows) { return 1 - pow(1 - pow(s, rows), bands); }
