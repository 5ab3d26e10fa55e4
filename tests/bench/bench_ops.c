// bench_ops — the model core's CPU ops (except linear) at the training benchmark's shapes:
// B=4 rows × T=512 (N=2048 tokens, one sequence per row), hidden 512, 8 query heads /
// 4 KV heads of 64, intermediate 1408, vocabulary 32000.
//
//   make bench            (or: build/release/bench/bench_ops [--runs N])
//
// Prints the median time per call over the OpenMP threads in use; a benchmark, never a test.
#include "ops.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 4, T = 512, N = B * T, C = 512, NH = 8, KVH = 4, HD = 64, F = 1408, V = 32000, CHUNK = 256 };

static unsigned long long rng = 88172645463325252ULL;
static float *random_floats(size_t n, float lo, float hi) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        p[i] = lo + (hi - lo) * (float)((rng >> 11) * (1.0 / 9007199254740992.0));
    }
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int runs = 9;

// Median milliseconds of `runs` calls of the statement.
#define TIME(label, stmt)                                                     \
    do {                                                                      \
        double t_[64];                                                        \
        stmt; /* warm up */                                                   \
        for (int r_ = 0; r_ < runs; r_++) {                                   \
            double t0_ = omp_get_wtime();                                     \
            stmt;                                                             \
            t_[r_] = (omp_get_wtime() - t0_) * 1e3;                           \
        }                                                                     \
        qsort(t_, (size_t)runs, sizeof(double), cmp_double);                  \
        printf("  %-44s %9.2f ms\n", label, t_[runs / 2]);                    \
    } while (0)

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--runs")) runs = atoi(argv[++i]);
    if (runs < 1 || runs > 64) runs = 9;
    printf("bench_ops: N=%d (B=%d × T=%d), C=%d, heads %d/%d × %d, F=%d, V=%d; %d threads, median of %d\n", N, B,
           T, C, NH, KVH, HD, F, V, omp_get_max_threads(), runs);

    float *q = random_floats((size_t)N * NH * HD, -1, 1), *k = random_floats((size_t)N * KVH * HD, -1, 1);
    float *v = random_floats((size_t)N * KVH * HD, -1, 1), *dout = random_floats((size_t)N * NH * HD, -1, 1);
    float *out = malloc(sizeof(float) * N * NH * HD), *lse = malloc(sizeof(float) * N * NH);
    float *dq = calloc((size_t)N * NH * HD, 4), *dk = calloc((size_t)N * KVH * HD, 4);
    float *dv = calloc((size_t)N * KVH * HD, 4);
    int32_t *seg = malloc(sizeof(int32_t) * N), *pos = malloc(sizeof(int32_t) * N);
    for (int n = 0; n < N; n++) seg[n] = n / T * T, pos[n] = n % T;
    float scale = 0.125f;
    TIME("attention_forward", attention_forward(out, lse, q, k, v, seg, N, NH, KVH, HD, scale));
    TIME("attention_backward",
         attention_backward(dq, dk, dv, dout, out, lse, q, k, v, seg, N, NH, KVH, HD, scale));
    TIME("attention forward + backward",
         (attention_forward(out, lse, q, k, v, seg, N, NH, KVH, HD, scale),
          attention_backward(dq, dk, dv, dout, out, lse, q, k, v, seg, N, NH, KVH, HD, scale)));

    float *inv = malloc(sizeof(float) * HD / 2);
    for (int i = 0; i < HD / 2; i++) inv[i] = 1.0f / (float)i;
    TIME("rope_forward (q)", rope_forward(q, pos, inv, N, NH, HD));
    TIME("rope_backward (q)", rope_backward(q, pos, inv, N, NH, HD));

    float *x = random_floats((size_t)N * C, -1, 1), *w = random_floats(C, 0, 1), *y = malloc(sizeof(float) * N * C);
    float *rstd = malloc(sizeof(float) * N), *dx = calloc((size_t)N * C, 4), *dw = calloc(C, 4);
    TIME("rmsnorm_forward", rmsnorm_forward(y, rstd, x, w, N, C, 1e-6f));
    TIME("rmsnorm_backward", rmsnorm_backward(dx, dw, x, y, w, rstd, N, C));
    TIME("add_inplace [N, C]", add_inplace(x, y, (long)N * C));

    int32_t *ids = malloc(sizeof(int32_t) * N);
    for (int n = 0; n < N; n++) ids[n] = (int32_t)((n * 7919L) % V);
    float *table = random_floats((size_t)V * C, -1, 1), *dtable = calloc((size_t)V * C, 4);
    TIME("embedding_forward", embedding_forward(y, ids, table, N, C));
    TIME("embedding_backward", embedding_backward(dtable, x, ids, N, C));

    float *g = random_floats((size_t)N * F, -6, 6), *u = random_floats((size_t)N * F, -1, 1);
    float *h = malloc(sizeof(float) * N * F), *dg = malloc(sizeof(float) * N * F), *du = malloc(sizeof(float) * N * F);
    TIME("swiglu_forward [N, F]", swiglu_forward(h, g, u, (long)N * F));
    TIME("swiglu_backward [N, F]", swiglu_backward(dg, du, h, g, u, (long)N * F));

    // Cross-entropy over all N tokens in chunks of CHUNK rows; the timed calls see the
    // previous call's gradients, which costs the same as logits.
    float *logits = random_floats((size_t)CHUNK * V, -10, 10);
    int32_t *target = malloc(sizeof(int32_t) * CHUNK);
    for (int r = 0; r < CHUNK; r++) target[r] = (int32_t)((r * 104729L) % V);
    double loss = 0;
    TIME("crossentropy, N rows in chunks of 256", for (int c = 0; c < N / CHUNK; c++) loss +=
                                                      crossentropy_forward_backward(logits, target, CHUNK, V, 1.0f));
    if (loss != loss) printf("  (loss NaN)\n");
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv), free(seg), free(pos);
    free(inv), free(x), free(w), free(y), free(rstd), free(dx), free(dw), free(ids), free(table), free(dtable);
    free(g), free(u), free(h), free(dg), free(du), free(logits), free(target);
    return 0;
}
