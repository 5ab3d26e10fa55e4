// cuda_sample_rows on n = 1, 64, 256 rows of V = 151936 logits: greedy, and temperature
// 0.6 alone, with top_k 50, top_p 0.95 or both, on flat rows (uniform in [-2, 2]: every
// token a candidate, the worst case, as a freshly initialised model gives); top_p also on
// peaked ones (normal x 8: a few thousand candidates). Each time is the median of 20 whole calls (parameter upload, the
// kernel, the token download) after 3 warm-ups, printed as
//   sample n 256 mode top_p us 123.4
// Needs a GPU; without one (or without CUDA) it says so and exits 0.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#include "ops.h"

enum { V = 151936, NMAX = 256, RUNS = 20 };

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double uniform(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double time_us(const float *d_x, const sample_params *p, int n) {
    int32_t tok[NMAX];
    double t[RUNS];
    for (int i = -3; i < RUNS; i++) {
        double t0 = now_us();
        cuda_sample_rows(tok, d_x, p, n, V);  // synchronizes: the tokens are on the host
        if (i >= 0) t[i] = now_us() - t0;
    }
    qsort(t, RUNS, sizeof *t, cmp);
    return t[RUNS / 2];
}

int main(void) {
    if (cuda_device_count() == 0) {
        printf("bench_cuda_sample: no GPU\n");
        return 0;
    }
    size_t nx = (size_t)NMAX * V;
    float *flat = malloc(nx * sizeof *flat), *peaked = malloc(nx * sizeof *peaked);
    for (size_t i = 0; i < nx; i++) {
        flat[i] = (float)(4 * uniform() - 2);
        peaked[i] = (float)(8 * sqrt(-2 * log(1 - uniform())) * cos(6.283185307179586 * uniform()));
    }
    float *d_flat = cuda_alloc(nx * sizeof *flat), *d_peaked = cuda_alloc(nx * sizeof *peaked);
    if (!d_flat || !d_peaked) return 1;
    cuda_upload(d_flat, flat, nx * sizeof *flat);
    cuda_upload(d_peaked, peaked, nx * sizeof *peaked);
    // Modes: greedy; temperature 0.6 alone (the max and the draw only), with top_k 50,
    // with top_p 0.95, with both; top_p 0.95 on the peaked rows.
    static const struct { const char *name; int greedy, top_k; float top_p; int peaked; } modes[] = {
        {"greedy", 1, 0, 1, 0}, {"sample", 0, 0, 1, 0},        {"top_k", 0, 50, 1, 0},
        {"top_p", 0, 0, 0.95f, 0}, {"top_k_top_p", 0, 50, 0.95f, 0}, {"top_p_peaked", 0, 0, 0.95f, 1},
    };
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0) printf("# %s, V %d\n", name, V);
    const int ns[3] = {1, 64, 256};
    for (int i = 0; i < 3; i++)
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            sample_params p[NMAX];
            for (int r = 0; r < NMAX; r++)
                p[r] = (sample_params){.inv_temperature = 1 / 0.6f, .top_k = modes[m].top_k, .top_p = modes[m].top_p,
                                       .u = uniform(), .greedy = modes[m].greedy};
            printf("sample n %d mode %s us %.1f\n", ns[i], modes[m].name,
                   time_us(modes[m].peaked ? d_peaked : d_flat, p, ns[i]));
        }
    char err[512];
    int rc = cuda_take_error(err, sizeof err);
    if (rc) fprintf(stderr, "bench_cuda_sample: %s\n", err);
    cuda_free(d_flat), cuda_free(d_peaked);
    free(flat), free(peaked);
    return rc ? 1 : 0;
}
#else
int main(void) {
    printf("bench_cuda_sample: built without CUDA\n");
    return 0;
}
#endif
