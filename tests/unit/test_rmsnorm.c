// RMSNorm forward: the CPU op against a direct double-precision formula, and the
// CUDA twin against the CPU op when a GPU is present.
#include "ops.h"
#include "test.h"
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#include <cuda_runtime_api.h>
#endif

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

static void test_cuda_matches_cpu(void) {
#ifndef TP_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found)");
#else
    if (cuda_device_count() == 0) SKIP("no GPU on this machine");
    const int N = 257, C = 896;
    size_t n = (size_t)N * C;
    float *x = malloc(n * 4), *w = malloc((size_t)C * 4), *ref = malloc(n * 4), *got = malloc(n * 4);
    float *rstd_ref = malloc((size_t)N * 4), *rstd_got = malloc((size_t)N * 4);
    fill(x, n);
    fill(w, (size_t)C);
    rmsnorm_forward(ref, rstd_ref, x, w, N, C, 1e-6f);
    float *dx, *dw, *dout, *drstd;
    CHECK(cudaMalloc((void **)&dx, n * 4) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dw, (size_t)C * 4) == cudaSuccess);
    CHECK(cudaMalloc((void **)&dout, n * 4) == cudaSuccess);
    CHECK(cudaMalloc((void **)&drstd, (size_t)N * 4) == cudaSuccess);
    cudaMemcpy(dx, x, n * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dw, w, (size_t)C * 4, cudaMemcpyHostToDevice);
    cudaMemset(dout, 0xff, n * 4);  // NaN poison: an unwritten element fails the comparison
    char err[256];
    CHECK_MSG(cuda_rmsnorm_forward(dout, drstd, dx, dw, N, C, 1e-6f, err, sizeof err) == 0, "%s", err);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(got, dout, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(rstd_got, drstd, (size_t)N * 4, cudaMemcpyDeviceToHost);
    double e = max_rel_err(got, ref, n);
    CHECK_MSG(e <= 1e-5, "max relative error %.3g", e);
    CHECK(max_rel_err(rstd_got, rstd_ref, (size_t)N) <= 1e-5);
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0) printf("# cuda rmsnorm on %s: max rel err %.3g\n", name, e);
    cudaFree(dx), cudaFree(dw), cudaFree(dout), cudaFree(drstd);
    free(x), free(w), free(ref), free(got), free(rstd_ref), free(rstd_got);
#endif
}

int main(void) {
    RUN(test_cpu_matches_formula);
    RUN(test_cuda_matches_cpu);
    return TEST_SUMMARY();
}
