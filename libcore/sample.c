// sample.c — token sampling (sample.h).
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "error.h"
#include "rng.h"

VECTOR_CLONES static bool holds(const float *x, int n, float v) {
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int j = 0; j < n; j++) any |= x[j] == v;
    return any;
}

// The first j with x[j] == v, or -1: the first block of 256 that holds it, then within it.
static int first_index(const float *x, int n, float v) {
    enum { SCAN = 256 };
    for (int j0 = 0; j0 < n; j0 += SCAN) {
        int m = n - j0 < SCAN ? n - j0 : SCAN;
        if (!holds(x + j0, m, v)) continue;
        for (int j = j0; j < j0 + m; j++)
            if (x[j] == v) return j;
    }
    return -1;
}

// The first of the largest logits, NaN never (all NaN: 0). Vectorised: a scalar scan took
// 50 us a row at 49,152 tokens, 0.4 ms of a 16 ms batch-8 decode step.
static int32_t argmax(const float *x, int V) {
    int j = first_index(x, V, max_not_nan(x, V));
    return j < 0 ? 0 : j;  // -1: all NaN
}

// How the draw works (the same distribution as sorting every candidate, without the sort:
// that cost 9 ms a row at 49,152 tokens and 28 at 151,936, more than a decode step):
// w_j = exp(z_j - max z) for z = logits / T, vectorised (cpu_ops.h's exp_shift_inplace);
// each filter becomes a rule on z: top-k a threshold (the k-th largest z, by selection),
// top-p a threshold plus a tie cut (logits bucketed by value, then only the bucket where
// the mass reaches top_p sorted), min-p a threshold; then the token is drawn in index
// order from the kept weights, summed in double by blocks so the draw scans one block.
enum { BLOCK = 1024, BUCKETS = 4096 };
static const float SPAN = 30.0f;  // nats below the best a filtered candidate may lie (< V e^-30 of the mass)

typedef struct keep_rule {
    float lo;      // keep z >= lo ...
    float cut;     // ... and z > cut, or z == cut with index <= cut_idx (top-p's last token)
    int cut_idx;
    float min_w;   // ... and w >= min_w, or the index is top (min-p; top: the first best)
    int top;
} keep_rule;

// z [n] := logits / T, NaN as -inf (never drawn).
VECTOR_CLONES static void scale_logits(float *z, const float *logits, int n, float inv_t) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float v = logits[j] * inv_t;
        z[j] = v == v ? v : -INFINITY;
    }
}

// w [n] := 0 where rule r drops the token (z: the scaled logits), branch-free so it vectorises.
VECTOR_CLONES static void apply_rule(float *w, const float *z, int n, keep_rule r) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        bool keep = (z[j] >= r.lo) & ((z[j] > r.cut) | ((z[j] == r.cut) & (j <= r.cut_idx))) &
                    ((w[j] >= r.min_w) | (j == r.top));
        w[j] = keep ? w[j] : 0.0f;
    }
}

// The k-th largest of v [n] (1 <= k <= n), v reordered: quickselect, median of three.
static float kth_largest(float *v, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        float a = v[lo], b = v[mid], c = v[hi];
        float pivot = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
        int i = lo, j = hi;
        while (i <= j) {  // descending: larger values to the left
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j], v[j] = t;
                i++, j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return v[want];  // between j and i: equal to the pivot
    }
    return v[lo];
}

// Tokens in bucket order of value, then by (z descending, index ascending) within one.
typedef struct ranked {
    float z;
    int32_t j;
} ranked;
static int by_rank(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

static void grow(tp_sample_scratch *sc, int V) {
    if (sc->cap >= V) return;
    sc->p = tp_xrealloc(sc->p, sizeof *sc->p * (size_t)V);
    sc->z = tp_xrealloc(sc->z, sizeof *sc->z * (size_t)V);
    sc->vals = tp_xrealloc(sc->vals, sizeof(ranked) * (size_t)V);
    int blocks = (V + BLOCK - 1) / BLOCK;
    sc->mass = tp_xrealloc(sc->mass, sizeof *sc->mass * (size_t)(blocks > BUCKETS ? blocks : BUCKETS));
    sc->bk = tp_xrealloc(sc->bk, sizeof *sc->bk * (size_t)V);
    sc->cap = V;
}

// bk [n] := the value bucket of each z >= lo (mx - SPAN <= lo <= z <= mx), the best first;
// -1 below lo.
VECTOR_CLONES static void buckets_of(int32_t *bk, const float *z, int n, float lo, float mx) {
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float d = z[j] >= lo ? (mx - z[j]) * (BUCKETS / SPAN) : 0.0f;  // in [0, BUCKETS]: no overflow
        int b = (int)d;
        bk[j] = z[j] >= lo ? (b < BUCKETS ? b : BUCKETS - 1) : -1;
    }
}

// Top-p on the tokens at or above r's lo (top-p comes before min-p and the cut): the
// smallest set, most likely first (ties by index), whose mass reaches top_p of theirs;
// sets r's cut. z: the scaled logits; w: the weights; mx: the largest z. Bucket masses
// are summed in index order, the total over buckets best first (so the running sum over
// every bucket is the total).
static void top_p_cut(keep_rule *r, const float *zs, const float *w, int V, float mx, double top_p,
                      tp_sample_scratch *sc) {
    double *bucket = sc->mass, total = 0;
    int32_t *bk = sc->bk;
    memset(bucket, 0, sizeof *bucket * BUCKETS);
    buckets_of(bk, zs, V, r->lo, mx);
    for (int j = 0; j < V; j++)
        if (bk[j] >= 0) bucket[bk[j]] += w[j];
    for (int b = 0; b < BUCKETS; b++) total += bucket[b];
    double target = top_p * total, cum = 0;
    int edge = 0;
    while (edge < BUCKETS - 1 && cum + bucket[edge] < target) cum += bucket[edge++];
    ranked *in = sc->vals;  // the edge bucket's tokens, in rank order
    int n = 0;
    for (int j = 0; j < V; j++)
        if (bk[j] == edge) in[n++] = (ranked){zs[j], j};
    qsort(in, (size_t)n, sizeof *in, by_rank);
    for (int i = 0; i < n; i++) {
        cum += w[in[i].j];
        if (cum >= target || i == n - 1) {
            r->cut = in[i].z, r->cut_idx = in[i].j;
            return;
        }
    }
}

int32_t tp_sample(const tp_sampler *s, const float *logits, int V, uint64_t *rng, tp_sample_scratch *sc) {
    if (tp_sampler_is_greedy(s)) return argmax(logits, V);
    grow(sc, V);
    float inv_t = (float)(1.0 / s->temperature), *w = sc->p;
    scale_logits(w, logits, V, inv_t);
    float mx = max_not_nan(w, V);
    // Nothing to draw from (every logit -inf or NaN: the first that is not NaN), or all the
    // mass on one token: a +inf logit, or a temperature so small that 1/T or z overflows
    // (then it is the largest logit, as T -> 0 means).
    if (!isfinite(mx) || !isfinite(inv_t)) return argmax(logits, V);
    int top = first_index(w, V, mx);  // finite, so one of w
    bool top_k = s->top_k > 0 && s->top_k < V, top_p = s->top_p < 1.0, min_p = s->min_p > 0;
    const float *z = sc->z;
    if (top_k || top_p || min_p) memcpy(sc->z, w, sizeof *w * (size_t)V);  // the filters read z again
    exp_shift_inplace(w, mx, V);                        // w_j = exp(z_j - mx): 1 for the best
    if (top_k || top_p || min_p) {
        keep_rule r = {.lo = mx - SPAN, .cut = -INFINITY, .cut_idx = V, .min_w = 0, .top = top};
        if (top_k) {
            float *v = (float *)sc->vals;
            int n = 0;
            for (int j = 0; j < V; j++)
                if (z[j] >= r.lo) v[n++] = z[j];
            if (s->top_k < n) r.lo = kth_largest(v, n, s->top_k);  // ties with the k-th stay, as in transformers
        }
        if (top_p) top_p_cut(&r, z, w, V, mx, s->top_p, sc);
        if (min_p) r.min_w = (float)s->min_p;  // p_j / p_max = w_j
        apply_rule(w, z, V, r);
    }
    // Block masses, the block the draw lands in, then the token in it (in index order).
    double *block = sc->mass, mass = 0;
    int blocks = (V + BLOCK - 1) / BLOCK;
    for (int b = 0; b < blocks; b++)
        block[b] = sum_in_double(w + (size_t)b * BLOCK, b + 1 < blocks ? BLOCK : V - b * BLOCK), mass += block[b];
    double u = (double)(tp_splitmix64(rng) >> 11) * 0x1.0p-53 * mass, acc = 0;
    int last = top;
    for (int b = 0; b < blocks; b++) {
        if (block[b] == 0) continue;
        if (u >= acc + block[b] && b < blocks - 1) {
            acc += block[b];
            continue;
        }
        for (int j = b * BLOCK; j < V && j < (b + 1) * BLOCK; j++) {
            if (w[j] == 0) continue;
            acc += w[j], last = j;
            if (u < acc) return j;
        }
    }
    return last;  // u at the very top of the mass (rounding): the last kept token
}

void tp_sample_scratch_free(tp_sample_scratch *sc) {
    free(sc->p), free(sc->z), free(sc->vals), free(sc->mass), free(sc->bk);
    *sc = (tp_sample_scratch){0};
}
