// sample_rows (kernels/cpu/sample_rows.c), the CPU twin the cuda sampler is tested
// against: greedy ties, the kept set of each rule worked out by hand on ten logits, the
// draw's frequencies over a fine grid of u against the renormalised probabilities,
// temperature, the mx - 30 cut, and rows sampled together equal to rows sampled alone.
#include "ops.h"
#include "test.h"

#include <stdint.h>

enum { GRID = 100000 };

static sample_params plain(void) {
    return (sample_params){.inv_temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0, .u = 0, .greedy = 0};
}

static int sample1(const float *x, int V, sample_params p) {
    int32_t t = -1;
    sample_rows(&t, x, &p, 1, V);
    return t;
}

static void test_greedy_ties(void) {
    float x[3][8] = {{0.5f, 2, -1, 3, 0, 3, 1, 3}, {-INFINITY, -INFINITY, -7, -7, -8, -INFINITY, -7, -9},
                     {NAN, 1, 1, NAN, 1, 0, 0, 0}};
    int want[3] = {3, 2, 1};
    sample_params p[3];
    for (int i = 0; i < 3; i++) p[i] = plain(), p[i].greedy = 1, p[i].u = 0.99, p[i].inv_temperature = -1;
    int32_t t[3];
    sample_rows(t, &x[0][0], p, 3, 8);
    for (int i = 0; i < 3; i++) CHECK_MSG(t[i] == want[i], "row %d: token %d, want %d", i, t[i], want[i]);
    // A long row: the first of the maxima wins wherever they are.
    enum { V = 151936 };
    float *y = malloc(sizeof(float) * V);
    for (int j = 0; j < V; j++) y[j] = (float)(4 * test_uniform() - 2);
    y[150001] = y[70000] = y[40000] = 2.5f;
    CHECK(sample1(y, V, p[0]) == 40000);
    free(y);
}

// Frequencies of each token over u = (i + 0.5) / GRID against prob [V] (0 for tokens that
// must never come out).
static void check_draws(const char *what, const float *x, int V, sample_params p, const double *prob) {
    int count[16] = {0};
    for (int i = 0; i < GRID; i++) {
        p.u = (i + 0.5) / GRID;
        int t = sample1(x, V, p);
        if (t >= 0 && t < V) count[t]++;
        else CHECK_MSG(0, "%s: token %d out of range", what, t);
    }
    for (int j = 0; j < V; j++) {
        double f = (double)count[j] / GRID;
        if (prob[j] == 0) CHECK_MSG(count[j] == 0, "%s: dropped token %d drawn %d times", what, j, count[j]);
        else CHECK_MSG(fabs(f - prob[j]) <= 1e-3, "%s: token %d frequency %.5f, want %.5f", what, j, f, prob[j]);
    }
}

// prob [V] := exp(z_j - max) over the listed tokens, renormalised; 0 elsewhere.
static void renormalised(double *prob, const float *x, int V, float it, const int *kept, int n) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < V; j++) mx = fmax(mx, (double)(x[j] * it)), prob[j] = 0;
    for (int i = 0; i < n; i++) sum += prob[kept[i]] = exp((double)(x[kept[i]] * it) - mx);
    for (int i = 0; i < n; i++) prob[kept[i]] /= sum;
}

// Ten logits; sorted: 3.0 (1), 3.0 (3), 2.5 (6), 2.0 (2), 1.5 (8), 1.0 (0), 0.5 (4),
// 0.0 (7), -0.5 (9), -1.0 (5). Masses e^(z-3): 1, 1, .6065, .3679, .2231, .1353, .0821,
// .0498, .0302, .0183; all ten: 3.5132.
static const float ten[10] = {1.0f, 3.0f, 2.0f, 3.0f, 0.5f, -1.0f, 2.5f, 0.0f, 1.5f, -0.5f};

static void test_rules_by_hand(void) {
    double prob[10];
    sample_params p = plain();
    const int all[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    renormalised(prob, ten, 10, 1, all, 10);
    check_draws("no rule", ten, 10, p, prob);

    p = plain(), p.top_k = 3;  // the three largest
    renormalised(prob, ten, 10, 1, (const int[]){1, 3, 6}, 3);
    check_draws("top_k 3", ten, 10, p, prob);
    p.top_k = 1;  // the largest value, both tokens that have it
    renormalised(prob, ten, 10, 1, (const int[]){1, 3}, 2);
    check_draws("top_k 1 (tie)", ten, 10, p, prob);
    p.top_k = 10;  // == V: off
    renormalised(prob, ten, 10, 1, all, 10);
    check_draws("top_k V", ten, 10, p, prob);

    // top_p 0.7: target 2.459; running 2 (3.0s), 2.6065 (2.5) reaches it.
    p = plain(), p.top_p = 0.7f;
    renormalised(prob, ten, 10, 1, (const int[]){1, 3, 6}, 3);
    check_draws("top_p 0.7", ten, 10, p, prob);
    // top_p 0.9: target 3.1619; 2.9744 (2.0) does not reach it, 3.1975 (1.5) does.
    p.top_p = 0.9f;
    renormalised(prob, ten, 10, 1, (const int[]){1, 3, 6, 2, 8}, 5);
    check_draws("top_p 0.9", ten, 10, p, prob);
    p.top_p = 0;  // only the best value survives
    renormalised(prob, ten, 10, 1, (const int[]){1, 3}, 2);
    check_draws("top_p 0", ten, 10, p, prob);

    // min_p 0.3: masses .6065 and .3679 stay, .2231 goes.
    p = plain(), p.min_p = 0.3f;
    renormalised(prob, ten, 10, 1, (const int[]){1, 3, 6, 2}, 4);
    check_draws("min_p 0.3", ten, 10, p, prob);

    // All three: top_k 5 keeps values >= 1.5 (mass 3.1975); top_p 0.85 of that is 2.7179,
    // reached at 2.0 (2.9744), dropping 8; min_p 0.4 then drops 2 (.3679).
    p = plain(), p.top_k = 5, p.top_p = 0.85f, p.min_p = 0.4f;
    renormalised(prob, ten, 10, 1, (const int[]){1, 3, 6}, 3);
    check_draws("top_k 5 + top_p 0.85 + min_p 0.4", ten, 10, p, prob);
    // top_p after top_k, not after min_p: with top_k 3 the mass is 2.6065 and 0.8 of it
    // (2.0852) needs 2.5 too; min_p 0.7 then keeps the two 3.0s only.
    p = plain(), p.top_k = 3, p.top_p = 0.8f, p.min_p = 0.7f;
    renormalised(prob, ten, 10, 1, (const int[]){1, 3}, 2);
    check_draws("top_k 3 + top_p 0.8 + min_p 0.7", ten, 10, p, prob);

    // The draw is in index order: u just above 0 gives the first kept token.
    p = plain(), p.top_k = 3, p.u = 0;
    CHECK(sample1(ten, 10, p) == 1);
    p.u = 0.999999;
    CHECK(sample1(ten, 10, p) == 6);
}

static void test_temperature(void) {
    double prob[10];
    const int all[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    sample_params p = plain();
    // Temperature 0.5 sharpens (e^(2x)), 2 flattens (e^(x/2)).
    p.inv_temperature = 2;
    renormalised(prob, ten, 10, 2, all, 10);
    check_draws("temperature 0.5", ten, 10, p, prob);
    CHECK(prob[1] > 0.35);  // sharper than at T = 1 (1 / 3.5132 = 0.285)
    p.inv_temperature = 0.5f;
    renormalised(prob, ten, 10, 0.5f, all, 10);
    check_draws("temperature 2", ten, 10, p, prob);
    CHECK(prob[1] < 0.25);
    // Rules act on z = x / T: top_p 0.7 at T = 0.5 has target 0.7 x 2.5817 = 1.8072; the
    // two 3.0s bring 2 already, so 2.5 (e^-1 = .3679) goes.
    p.inv_temperature = 2, p.top_p = 0.7f;
    renormalised(prob, ten, 10, 2, (const int[]){1, 3}, 2);
    check_draws("temperature 0.5 top_p 0.7", ten, 10, p, prob);
}

// mx - 30: a token 31 nats below the best is dropped, one 29 below is kept. Its mass
// (e^-29 = 2.5e-13) is invisible on a grid, so the draw uses u next to 1, where only a
// kept last token can come out.
static void test_far_below_dropped(void) {
    sample_params p = plain();
    p.u = 1 - 1e-15;
    float a[2] = {0, -31}, b[2] = {0, -29}, c[3] = {5, -26.5f, 5};
    CHECK(sample1(a, 2, p) == 0);
    CHECK(sample1(b, 2, p) == 1);
    p.inv_temperature = 2;  // the cut is on z: -29 becomes -58
    CHECK(sample1(b, 2, p) == 0);
    // u = 0.5 of the two 5s puts the target exactly at the first one's running mass, so a
    // kept middle token, however light, would be the one drawn.
    p.inv_temperature = 1, p.u = 0.5;
    CHECK(sample1(c, 3, p) == 2);  // -26.5 is 31.5 below 5: dropped
    c[1] = -24.5f;
    CHECK(sample1(c, 3, p) == 1);  // 29.5 below: kept
}

// Rows sampled together (threads over rows) give what each row gives alone.
static void test_rows_independent(void) {
    enum { N = 40, V = 3000 };
    float *x = malloc(sizeof(float) * N * V);
    sample_params p[N];
    for (int i = 0; i < N * V; i++) x[i] = (float)(6 * test_uniform() - 3);
    for (int i = 0; i < N; i++) {
        p[i] = plain();
        p[i].inv_temperature = (float)(1 / (0.6 + 0.6 * test_uniform()));
        p[i].top_k = (int[]){0, 1, 20, 50}[i % 4];
        p[i].top_p = (float[]){1, 0.9f, 0.95f}[i % 3];
        p[i].min_p = i % 5 == 0 ? 0.05f : 0;
        p[i].greedy = i % 7 == 0;
        p[i].u = test_uniform();
    }
    int32_t t[N];
    sample_rows(t, x, p, N, V);
    for (int i = 0; i < N; i++) {
        int one = sample1(x + (size_t)i * V, V, p[i]);
        CHECK_MSG(t[i] == one && t[i] >= 0 && t[i] < V, "row %d: %d together, %d alone", i, t[i], one);
    }
    free(x);
}

int main(void) {
    RUN(test_greedy_ties);
    RUN(test_rules_by_hand);
    RUN(test_temperature);
    RUN(test_far_below_dropped);
    RUN(test_rows_independent);
    return TEST_SUMMARY();
}
