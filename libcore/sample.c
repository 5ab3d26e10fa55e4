// sample.c — token sampling (sample.h).
#include "sample.h"

#include <math.h>
#include <stdlib.h>

#include "error.h"
#include "rng.h"

static int32_t argmax(const float *x, int V) {
    int32_t best = 0;
    for (int j = 1; j < V; j++)
        if (x[j] > x[best]) best = j;
    return best;
}

// Candidates sorted by logit, descending (index ascending among equals).
static const float *sort_keys;
static int by_logit_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_keys[i] != sort_keys[j]) return sort_keys[i] > sort_keys[j] ? -1 : 1;
    return (i > j) - (i < j);
}

int32_t tp_sample(const tp_sampler *s, const float *logits, int V, uint64_t *rng, tp_sample_scratch *sc) {
    if (s->greedy || s->temperature <= 0) return argmax(logits, V);
    if (sc->cap < V) {
        sc->p = tp_xrealloc(sc->p, sizeof *sc->p * (size_t)V);
        sc->idx = tp_xrealloc(sc->idx, sizeof *sc->idx * (size_t)V);
        sc->cap = V;
    }
    float *z = sc->p;
    float inv_t = (float)(1.0 / s->temperature), mx = -INFINITY;
    for (int j = 0; j < V; j++) z[j] = logits[j] * inv_t, mx = z[j] > mx ? z[j] : mx;
    bool filter = (s->top_k > 0 && s->top_k < V) || s->top_p < 1.0 || s->min_p > 0;
    int n = 0;
    int32_t *idx = sc->idx;
    if (!filter) {
        for (int j = 0; j < V; j++) idx[n++] = j;  // index order: no sort needed
    } else {
        // Tokens more than 30 nats below the best carry < V e^-30 of the mass (below float
        // resolution of any cumulative sum): only the rest are sorted.
        for (int j = 0; j < V; j++)
            if (z[j] >= mx - 30.0f) idx[n++] = j;
        sort_keys = z;
        qsort(idx, (size_t)n, sizeof *idx, by_logit_desc);
        if (s->top_k > 0 && s->top_k < n) {
            float kth = z[idx[s->top_k - 1]];
            int keep = s->top_k;
            while (keep < n && z[idx[keep]] == kth) keep++;  // ties with the k-th stay, as in transformers
            n = keep;
        }
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += exp((double)z[idx[i]] - mx);
    if (filter && s->top_p < 1.0) {
        double cum = 0;
        int keep = 0;
        while (keep < n) {
            cum += exp((double)z[idx[keep]] - mx) / total;
            keep++;
            if (cum >= s->top_p) break;
        }
        n = keep;
    }
    if (filter && s->min_p > 0) {
        // relative to the most likely token of what is left: p_j / p_max = exp(z_j - mx)
        int keep = 0;
        while (keep < n && exp((double)z[idx[keep]] - mx) >= s->min_p) keep++;
        n = keep > 0 ? keep : 1;
    }
    double mass = 0;
    for (int i = 0; i < n; i++) mass += exp((double)z[idx[i]] - mx);
    double u = (double)(tp_splitmix64(rng) >> 11) * 0x1.0p-53 * mass, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += exp((double)z[idx[i]] - mx);
        if (u < acc) return idx[i];
    }
    return idx[n - 1];
}

void tp_sample_scratch_free(tp_sample_scratch *sc) {
    free(sc->p), free(sc->idx);
    sc->p = NULL, sc->idx = NULL, sc->cap = 0;
}
