// RMSNorm forward: the CPU op against a direct double-precision formula (the CUDA twin
// is compared with the CPU op in test_cuda_ops).
#include "ops.h"
#include "test.h"

static void fill(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(test_uniform() * 4 - 2);
}

static double max_rel_err(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]) / (scale > 0 ? scale : 1));
    return worst;
}

static void test_cpu_matches_formula(void) {
    const int shapes[][2] = {{1, 64}, {7, 896}, {33, 1536}, {4, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        float *x = malloc(sizeof(float) * (size_t)N * C), *w = malloc(sizeof(float) * (size_t)C);
        float *out = malloc(sizeof(float) * (size_t)N * C), *ref = malloc(sizeof(float) * (size_t)N * C);
        float *rstd = malloc(sizeof(float) * (size_t)N);
        fill(x, (size_t)N * C);
        fill(w, (size_t)C);
        for (size_t i = 0; i < (size_t)N * C; i++) out[i] = NAN;  // unwritten elements would fail
        rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
        for (int n = 0; n < N; n++) {
            double ss = 0;
            for (int c = 0; c < C; c++) ss += (double)x[n * C + c] * x[n * C + c];
            double r = 1 / sqrt(ss / C + 1e-6);
            CHECK(fabs(rstd[n] - r) <= 1e-6 * r);
            for (int c = 0; c < C; c++) ref[n * C + c] = (float)(x[n * C + c] * r * w[c]);
        }
        CHECK_MSG(max_rel_err(out, ref, (size_t)N * C) <= 1e-6, "N=%d C=%d", N, C);
        free(x), free(w), free(out), free(ref), free(rstd);
    }
}

int main(void) {
    RUN(test_cpu_matches_formula);
    return TEST_SUMMARY();
}
