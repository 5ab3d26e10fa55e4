// sample_rows.c — the next token of n sequences from their logits (the contract is in
// ops.h). This is the reference the cuda twin is tested against, so it is written to be
// obviously right rather than fast: thresholds from a sorted copy of the candidates,
// masses in double, one pass in index order for the draw.
#include "ops.h"

#include <math.h>
#include <stdlib.h>

// The smallest index of the largest logit (NaN never wins; all NaN gives 0).
static int argmax_row(const float *x, int V) {
    int best = -1;
    for (int j = 0; j < V; j++)
        if (best < 0 ? !isnan(x[j]) : x[j] > x[best]) best = j;
    return best < 0 ? 0 : best;
}

// w = exp(z - mx) in double; exactly 1 for the best token (also when mx is ±inf).
static double mass(float z, float mx) { return z == mx ? 1.0 : exp((double)z - (double)mx); }

static int desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

// Rules of ops.h in order: z >= mx - 30, top-k, top-p; then min-p and the draw.
// cand [V]: scratch for the sorted candidate values.
static int sample_row(const float *x, const sample_params *p, int V, float *cand) {
    if (p->greedy) return argmax_row(x, V);
    float it = p->inv_temperature, mx = -INFINITY;
    for (int j = 0; j < V; j++) {
        float z = x[j] * it;
        if (z > mx) mx = z;
    }
    float thr = mx - 30.0f;
    int nc = 0;
    for (int j = 0; j < V; j++) {
        float z = x[j] * it;
        if (z >= thr) cand[nc++] = z;
    }
    if (nc == 0) return 0;  // every logit NaN
    bool top_k = p->top_k > 0 && p->top_k < V, top_p = p->top_p < 1;
    if (top_k || top_p) qsort(cand, (size_t)nc, sizeof *cand, desc);
    if (top_k && p->top_k < nc) thr = cand[p->top_k - 1];  // ties with it stay: z >= thr
    if (top_p) {
        int m = nc;  // cand[0..m): the tokens kept so far
        while (m > 0 && cand[m - 1] < thr) m--;
        double total = 0, cum = 0;
        for (int i = 0; i < m; i++) total += mass(cand[i], mx);
        double target = (double)p->top_p * total;
        // Whole groups of equal values: t_p is a value, and every token at it stays.
        for (int i = 0; i < m;) {
            float t = cand[i];
            for (; i < m && cand[i] == t; i++) cum += mass(cand[i], mx);
            if (cum >= target) {
                thr = t;
                break;
            }
        }
    }
    double min_p = p->min_p;
    double kept = 0;
    for (int j = 0; j < V; j++) {
        float z = x[j] * it;
        if (z >= thr && (min_p <= 0 || z == mx || mass(z, mx) >= min_p)) kept += mass(z, mx);
    }
    double target = p->u * kept, run = 0;
    int last = 0;
    for (int j = 0; j < V; j++) {
        float z = x[j] * it;
        if (!(z >= thr && (min_p <= 0 || z == mx || mass(z, mx) >= min_p))) continue;
        run += mass(z, mx);
        last = j;
        if (run > target) return j;
    }
    return last;
}

void sample_rows(int32_t *token, const float *logits, const sample_params *params, int n, int V) {
#pragma omp parallel if (n > 1 && (long)n * V > 1 << 15)
    {
        float *cand = malloc(sizeof(float) * (size_t)(V > 0 ? V : 1));
        if (!cand) abort();
#pragma omp for schedule(dynamic)
        for (int i = 0; i < n; i++) token[i] = sample_row(logits + (size_t)i * V, &params[i], V, cand);
        free(cand);
    }
}
