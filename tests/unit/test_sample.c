// The sampler (libcore/sample.c) against the filters written out with a full sort, as
// transformers applies them (TopK keeps ties with the k-th; TopP keeps the smallest
// most-likely-first prefix, ties by index, whose mass reaches p; MinP keeps p >= min_p
// p_max): on logits with many equal values and on distinct ones, within one block of the
// draw and across several, every draw is a kept token and the draw frequencies match the
// kept tokens' renormalised probabilities within 5 standard errors (and 3 draws).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "sample.h"
#include "test.h"

enum { DRAWS = 20000, VMAX = 2600 };

static const float *keys;
static int by_logit_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (keys[i] != keys[j]) return keys[i] > keys[j] ? -1 : 1;
    return (i > j) - (i < j);
}

// p [V]: the sampler's target distribution, by sorting every candidate.
static void reference(const tp_sampler *s, const float *logits, int V, double *p) {
    static float z[VMAX];
    static int idx[VMAX];
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) z[j] = logits[j] / (float)s->temperature, mx = fmaxf(mx, z[j]);
    int n = 0;
    for (int j = 0; j < V; j++)
        if (z[j] >= mx - 30.0f) idx[n++] = j;
    keys = z;
    qsort(idx, (size_t)n, sizeof *idx, by_logit_desc);
    if (s->top_k > 0 && s->top_k < n) {
        int keep = s->top_k;
        while (keep < n && z[idx[keep]] == z[idx[s->top_k - 1]]) keep++;
        n = keep;
    }
    if (s->top_p < 1) {
        double total = 0, cum = 0;
        for (int i = 0; i < n; i++) total += exp((double)z[idx[i]] - mx);
        int keep = 0;
        while (keep < n && cum < s->top_p * total) cum += exp((double)z[idx[keep++]] - mx);
        n = keep;
    }
    if (s->min_p > 0) {
        int keep = 0;
        while (keep < n && exp((double)z[idx[keep]] - mx) >= s->min_p) keep++;
        n = keep > 0 ? keep : 1;
    }
    double total = 0;
    memset(p, 0, sizeof(double) * (size_t)V);
    for (int i = 0; i < n; i++) total += p[idx[i]] = exp((double)z[idx[i]] - mx);
    for (int j = 0; j < V; j++) p[j] /= total;
}

// Draws of case s on logits [V] against the reference: the number of tokens off.
static int draw_and_compare(const tp_sampler *s, const float *logits, int V, uint64_t *rng, tp_sample_scratch *sc,
                            const char *what) {
    static double p[VMAX];
    static int count[VMAX];
    reference(s, logits, V, p);
    memset(count, 0, sizeof count);
    for (int i = 0; i < DRAWS; i++) count[tp_sample(s, logits, V, rng, sc)]++;
    int bad = 0;
    for (int j = 0; j < V; j++) {
        double f = (double)count[j] / DRAWS, sd = sqrt(p[j] * (1 - p[j]) / DRAWS);
        if (p[j] == 0 ? count[j] != 0 : fabs(f - p[j]) > 5 * sd + 3.0 / DRAWS)
            if (bad++ < 3) fprintf(stderr, "  %s token %d: drawn %.6f, want %.6f\n", what, j, f, p[j]);
    }
    return bad;
}

static void fill(float *logits, int V, bool tied) {
    for (int j = 0; j < V; j++)
        logits[j] = tied ? -6.0f + 0.25f * (float)(test_rand() % 33) : (float)(-6.0 + 8.0 * test_uniform());
    logits[V - 1] = NAN;  // never drawn
}

static void test_filters_match_sorting(void) {
    static const tp_sampler cases[] = {
        {.temperature = 1, .top_p = 1},
        {.temperature = 0.7, .top_p = 1},
        {.temperature = 1, .top_k = 40, .top_p = 1},
        {.temperature = 1, .top_k = 1, .top_p = 1},
        {.temperature = 1, .top_p = 0.3},
        {.temperature = 0.6, .top_p = 0.9},
        {.temperature = 1, .top_p = 1, .min_p = 0.3},
        {.temperature = 0.8, .top_k = 200, .top_p = 0.8, .min_p = 0.05},
    };
    static float logits[VMAX];
    tp_sample_scratch sc = {0};
    uint64_t rng = 11;
    for (int tied = 1; tied >= 0; tied--) {  // 33 levels of logit, then distinct ones
        fill(logits, 1000, tied);
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            char what[64];
            snprintf(what, sizeof what, "%s case %zu", tied ? "tied" : "distinct", c);
            int bad = draw_and_compare(&cases[c], logits, 1000, &rng, &sc, what);
            CHECK_MSG(bad == 0, "%s: %d tokens off", what, bad);
        }
    }
    // 2,600 tokens: the draw finds its block of 1,024 first, then the token in it.
    fill(logits, VMAX, false);
    for (int c = 0; c < 6; c += 5) {
        int bad = draw_and_compare(&cases[c], logits, VMAX, &rng, &sc, "3 blocks");
        CHECK_MSG(bad == 0, "3 blocks, case %d: %d tokens off", c, bad);
    }
    tp_sample_scratch_free(&sc);
}

// All logits -inf or NaN but one: that one; +inf: the first +inf; greedy skips a NaN in
// front; a temperature so small that 1/T overflows: the largest logit.
static void test_degenerate_rows(void) {
    enum { V = 1000 };
    static float logits[V];
    tp_sample_scratch sc = {0};
    uint64_t rng = 3;
    tp_sampler s = {.temperature = 1, .top_p = 0.9};
    for (int j = 0; j < V; j++) logits[j] = j % 2 ? NAN : -INFINITY;
    logits[500] = 1.0f;
    for (int i = 0; i < 100; i++) CHECK(tp_sample(&s, logits, V, &rng, &sc) == 500);
    logits[600] = INFINITY, logits[800] = INFINITY;
    CHECK(tp_sample(&s, logits, V, &rng, &sc) == 600);
    // Nothing to draw from: all NaN, or all -inf behind a NaN: the first token that is not
    // NaN (0 when there is none), sampled or greedy, whatever the filters.
    tp_sampler filtered = {.temperature = 0.7, .top_p = 0.9, .top_k = 5, .min_p = 0.1};
    for (int j = 0; j < V; j++) logits[j] = NAN;
    CHECK(tp_sample(&s, logits, V, &rng, &sc) == 0 && tp_sample(&filtered, logits, V, &rng, &sc) == 0);
    for (int j = 1; j < V; j++) logits[j] = -INFINITY;
    CHECK(tp_sample(&s, logits, V, &rng, &sc) == 1 && tp_sample(&filtered, logits, V, &rng, &sc) == 1);
    const float nan_first[4] = {NAN, 1, 5, 2}, negative[4] = {-3, -1, -2, -4};
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1}, cold = {.temperature = 1e-39, .top_p = 1};
    CHECK(tp_sample(&greedy, nan_first, 4, &rng, &sc) == 2);
    CHECK(tp_sample(&cold, nan_first, 4, &rng, &sc) == 2);
    CHECK(tp_sample(&cold, negative, 4, &rng, &sc) == 1);
    tp_sample_scratch_free(&sc);
}

// The scalar rule greedy must follow: the first of the largest, NaN never, all NaN 0.
static int32_t argmax_reference(const float *x, int V) {
    int32_t best = -1;
    for (int j = 0; j < V; j++)
        if (!isnan(x[j]) && (best < 0 || x[j] > x[best])) best = j;
    return best < 0 ? 0 : best;
}

// Greedy picks against the scalar rule on rows with ties across its scan blocks, NaN,
// ±inf, signed zeros and every length from 1 to 600 (vector tails), then long rows.
static void test_greedy_first_largest(void) {
    enum { VMAX = 49157 };
    static float x[VMAX];
    tp_sample_scratch sc = {0};
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1};
    uint64_t rng = 11;
    int bad = 0, cases = 0;
    static const int longer[] = {1807, 5428, 16291, VMAX};
    for (int i = 0, V = 1; V <= VMAX; V = V < 600 ? V + 1 : longer[i++]) {
        for (int kind = 0; kind < 6; kind++, cases++) {
            for (int j = 0; j < V; j++) x[j] = (float)(int)((tp_splitmix64(&rng) >> 11) * 0x1p-53 * 40) - 20;  // many ties
            if (kind == 1)
                for (int j = 0; j < V; j++) x[j] = (tp_splitmix64(&rng) >> 11) * 0x1p-53 < 0.3 ? NAN : x[j];
            if (kind == 2)
                for (int j = 0; j < V; j++) x[j] = NAN;
            if (kind == 3)
                for (int j = 0; j < V; j++) x[j] = j % 3 ? -INFINITY : NAN;
            if (kind == 4) x[V - 1] = INFINITY, x[V / 2] = INFINITY;
            if (kind == 5)
                for (int j = 0; j < V; j++) x[j] = j % 2 ? 0.0f : -0.0f;
            if (kind == 0 && V > 300) x[257] = 99, x[V - 1] = 99;  // the max in two scan blocks
            int32_t got = tp_sample(&greedy, x, V, &rng, &sc), want = argmax_reference(x, V);
            if (got != want && bad++ < 5) fprintf(stderr, "# V %d kind %d: %d, want %d\n", V, kind, got, want);
        }
        if (V == VMAX) break;
    }
    CHECK_MSG(bad == 0, "%d of %d rows picked the wrong token", bad, cases);
    tp_sample_scratch_free(&sc);
}

int main(void) {
    RUN(test_filters_match_sorting);
    RUN(test_greedy_first_largest);
    RUN(test_degenerate_rows);
    return TEST_SUMMARY();
}
