// The few-rows fp32 linear forward (kernels/cpu/linear_rows.h), which linear_forward takes
// for N <= LINEAR_ROWS_MAX: against sums in double at the decode step's shapes and odd ones
// (IC and OC tails, every N to LINEAR_ROWS_MAX, with and without bias) into NaN-poisoned
// outputs, NaN after every input; bits independent of the thread count and of the other
// rows of x; linear_forward's switch to the BLAS above LINEAR_ROWS_MAX.
#include "cpu/linear_rows.h"
#include "ops.h"
#include "test.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

enum { PAD = 32 };

static float *floats(size_t n, double lo, double hi) {
    float *p = malloc(sizeof(float) * (n + PAD));
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * test_uniform());
    for (int i = 0; i < PAD; i++) p[n + i] = NAN;  // a read past the end shows
    return p;
}

// Worst |out - ref| / (sum of |terms|) over the outputs: the error relative to what fp32
// summation can promise; INFINITY for an unwritten (NaN) output.
static double check(const float *out, const float *x, const float *w, const float *b, int N, int IC, int OC) {
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0, m = fabs(s);
            for (int k = 0; k < IC; k++) {
                double t = (double)x[(size_t)n * IC + k] * w[(size_t)o * IC + k];
                s += t, m += fabs(t);
            }
            float got = out[(size_t)n * OC + o];
            if (!isfinite(got)) return INFINITY;
            worst = fmax(worst, fabs(got - s) / (m > 0 ? m : 1));
        }
    return worst;
}

static void test_shapes(void) {
    if (!linear_forward_rows(NULL, NULL, NULL, NULL, 0, 0, 0)) {
        printf("# skip: no AVX-512 here (linear_forward uses the BLAS)\n");
        return;
    }
    static const int ICs[] = {576, 1536, 1, 15, 17, 100}, OCs[] = {576, 192, 1, 3, 5, 49152 / 16};
    for (int i = 0; i < 6; i++)
        for (int o = 0; o < 6; o++) {
            int IC = ICs[i], OC = OCs[o];
            float *w = floats((size_t)IC * OC, -0.5, 0.5), *b = floats((size_t)OC, -1, 1);
            float *x = floats((size_t)LINEAR_ROWS_MAX * IC, -1, 1), *out = malloc(sizeof(float) * LINEAR_ROWS_MAX * OC);
            for (int N = 1; N <= LINEAR_ROWS_MAX; N += (i + o) % 2 ? 1 : 5) {
                for (int bias = 0; bias < 2; bias++) {
                    for (int j = 0; j < N * OC; j++) out[j] = NAN;
                    CHECK(linear_forward_rows(out, x, w, bias ? b : NULL, N, IC, OC));
                    double err = check(out, x, w, bias ? b : NULL, N, IC, OC);
                    CHECK_MSG(err <= 1e-6, "N=%d IC=%d OC=%d bias=%d: error %.3g", N, IC, OC, bias, err);
                }
            }
            free(w), free(b), free(x), free(out);
        }
}

// 1, 2 and 3 threads give the same bits; so do N rows at once and each row's place in
// every smaller batch (a row's output does not depend on the others).
static void test_bits(void) {
    if (!linear_forward_rows(NULL, NULL, NULL, NULL, 0, 0, 0)) return;
    const int IC = 1000, OC = 1003, N = LINEAR_ROWS_MAX;
    float *w = floats((size_t)IC * OC, -0.5, 0.5), *b = floats((size_t)OC, -1, 1), *x = floats((size_t)N * IC, -1, 1);
    float *all = malloc(sizeof(float) * N * OC), *part = malloc(sizeof(float) * N * OC);
    int saved = omp_get_max_threads();
    for (int t = 1; t <= 3; t++) {
        omp_set_num_threads(t);
        linear_forward_rows(t == 1 ? all : part, x, w, b, N, IC, OC);
        if (t > 1) CHECK_MSG(!memcmp(all, part, sizeof(float) * N * OC), "1 vs %d threads", t);
    }
    omp_set_num_threads(saved);
    for (int n = 1; n < N; n++) {
        linear_forward_rows(part, x + (size_t)(N - n) * IC, w, b, n, IC, OC);
        CHECK_MSG(!memcmp(part, all + (size_t)(N - n) * OC, sizeof(float) * n * OC), "the last %d rows alone differ", n);
    }
    free(w), free(b), free(x), free(all), free(part);
}

// The shares of T threads (called one after another here) cover the columns in
// contiguous runs of whole tiles of 4 and write, between them, linear_forward_rows's bits,
// then + residual on each one's own columns: an add after the product, bit for bit.
static void test_share(void) {
    if (!linear_rows_available()) {
        printf("# skip: no AVX-512 here\n");
        return;
    }
    static const int shapes[][2] = {{576, 1536}, {17, 33}, {100, 9}, {40, 3}}, Ts[] = {1, 2, 3, 5, 40};
    for (int sh = 0; sh < 4; sh++)
        for (int N = 1; N <= LINEAR_ROWS_MAX; N += 7) {
            int IC = shapes[sh][0], OC = shapes[sh][1];
            size_t no = (size_t)N * OC;
            float *w = floats((size_t)IC * OC, -0.5, 0.5), *b = N & 1 ? floats((size_t)OC, -1, 1) : NULL;
            float *x = floats((size_t)N * IC, -1, 1), *res = floats(no, -2, 2);
            float *want = malloc(sizeof(float) * no), *got = malloc(sizeof(float) * no);
            CHECK(linear_forward_rows(want, x, w, b, N, IC, OC));
            for (int k = 0; k < 5; k++)
                for (int with_res = 0; with_res < 2; with_res++) {
                    int T = Ts[k], next = 0;
                    bool runs = true, same = true;
                    for (size_t i = 0; i < no; i++) got[i] = NAN;
                    for (int t = 0; t < T; t++) {
                        int c0, c1;
                        rows_share_columns(OC, t, T, &c0, &c1);
                        runs = runs && c0 == next && c1 >= c0 && (c1 == OC || c1 % 4 == 0);
                        next = c1;
                        CHECK(linear_forward_rows_share(got, x, w, b, with_res ? res : NULL, N, IC, OC, t, T));
                    }
                    for (size_t i = 0; i < no; i++) {
                        float v = with_res ? want[i] + res[i] : want[i];
                        same = same && !memcmp(&got[i], &v, sizeof v);
                    }
                    CHECK_MSG(runs && next == OC, "OC=%d T=%d: the shares' columns are not contiguous runs", OC, T);
                    CHECK_MSG(same, "N=%d IC=%d OC=%d T=%d residual=%d: other bits than linear_forward_rows", N, IC,
                              OC, T, with_res);
                }
            free(w), free(b), free(x), free(res), free(want), free(got);
        }
}

// linear_forward: the rows kernel's bits up to LINEAR_ROWS_MAX rows, the BLAS's after.
static void test_linear_forward_switch(void) {
    if (!linear_forward_rows(NULL, NULL, NULL, NULL, 0, 0, 0)) return;
    const int IC = 300, OC = 70, N = LINEAR_ROWS_MAX + 1;
    float *w = floats((size_t)IC * OC, -0.5, 0.5), *x = floats((size_t)N * IC, -1, 1);
    float *a = malloc(sizeof(float) * N * OC), *r = malloc(sizeof(float) * N * OC);
    linear_forward(a, x, w, NULL, LINEAR_ROWS_MAX, IC, OC);
    linear_forward_rows(r, x, w, NULL, LINEAR_ROWS_MAX, IC, OC);
    CHECK(!memcmp(a, r, sizeof(float) * LINEAR_ROWS_MAX * OC));
    linear_forward(a, x, w, NULL, N, IC, OC);
    CHECK(check(a, x, w, NULL, N, IC, OC) <= 1e-6);
    free(w), free(x), free(a), free(r);
}

int main(void) {
    RUN(test_shapes);
    RUN(test_bits);
    RUN(test_share);
    RUN(test_linear_forward_switch);
    return TEST_SUMMARY();
}
