// bench_linear_bf16 — the decode step's matrix products with bf16 weights against fp32:
// linear_forward (cpu/linear_rows.h up to 16 rows, then tp_sgemm: oneDNN where installed)
// against linear_forward_w16 at
// SmolLM2-135M's shapes (hidden 576, KV 192, MLP 1536, vocabulary 49152) for 1, 8 and 64
// rows.
//
//   make bench   (or: build/release/bench/bench_linear_bf16 [--runs N] [--hot])
//
// A decode step reads every weight of the model once (540 MB in fp32), so no matrix is in
// cache when its turn comes: each call here takes the next of enough copies of the
// weights to span 768 MiB, three times the L3 of the machine it was written on. --hot
// uses one copy (cache-resident up to the L2/L3 sizes). Median microseconds per call,
// GB/s of weights read, GFLOP/s (2·N·IC·OC), and fp32's time over w16's; then the sum
// over one decode step's products. No bias: SmolLM2's projections have none.
// A benchmark, never a test.
#include "bench_median.h"
#include "cpu/gemm.h"
#include "cpu/linear_bf16.h"
#include "ops.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int shapes[][2] = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152}};
// Calls per decode step: 30 layers of q, o (576->576), k, v (576->192), gate, up
// (576->1536) and down (1536->576), then the tied vocabulary head.
static const int per_step[] = {60, 60, 60, 30, 1};
static const int rows[] = {1, 8, 64};
enum { NSHAPES = 5, NROWS = 3, NMAX = 64, MAXRUNS = 201 };
static const size_t SPAN = (size_t)768 << 20;

static int runs = 31;
static int hot;

static unsigned long long rng = 88172645463325252ULL;
static void fill(float *p, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        p[i] = lo + (hi - lo) * (float)((rng >> 11) * (1.0 / 9007199254740992.0));
    }
}

// `copies` copies of one matrix of `bytes`, side by side; calls take them in turn.
struct copies {
    char *base;
    size_t bytes;
    int count, next;
};

static struct copies make_copies(const void *one, size_t bytes) {
    struct copies c = {NULL, bytes, hot ? 1 : (int)((SPAN + bytes - 1) / bytes), 0};
    c.base = malloc(bytes * (size_t)c.count);
    if (!c.base) {
        fprintf(stderr, "bench_linear_bf16: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < c.count; i++) memcpy(c.base + bytes * (size_t)i, one, bytes);
    return c;
}

static const void *take(struct copies *c) {
    const void *p = c->base + c->bytes * (size_t)c->next;
    c->next = (c->next + 1) % c->count;
    return p;
}

enum { FP32, W16, NKERNELS };
static const char *const names[NKERNELS] = {"fp32", "w16"};

// Median seconds per call of kernel k.
static double time_kernel(int k, struct copies *w, float *out, const float *x, int N, int IC, int OC) {
    double t[MAXRUNS];
    for (int r = -2; r < runs; r++) {  // two warm-up calls
        const void *wp = take(w);
        double t0 = omp_get_wtime();
        if (k == FP32) linear_forward(out, x, wp, NULL, N, IC, OC);
        else linear_forward_w16(out, x, wp, NULL, N, IC, OC);
        if (r >= 0) t[r] = omp_get_wtime() - t0;
    }
    return bench_median(t, runs);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hot")) hot = 1;
    }
    if (runs < 1 || runs > MAXRUNS) runs = 31;
    const char *weights = hot ? "hot (one copy, cache-resident when it fits)" : "cold (768 MiB of copies)";
    printf("bench_linear_bf16: %d threads, median of %d calls, weights %s;\nfp32 = linear_forward (linear_rows to 16 "
           "rows, then %s)\n",
           omp_get_max_threads(), runs, weights, tp_sgemm_backend());
    printf("%-11s %2s", "IC->OC", "N");
    for (int k = 0; k < NKERNELS; k++) printf(" | %-4s %8s %5s %7s", names[k], "us", "GB/s", "GFLOP/s");
    printf(" | fp32/w16\n");

    float *x = malloc(sizeof(float) * NMAX * 1536), *out = malloc(sizeof(float) * NMAX * 49152);
    fill(x, (size_t)NMAX * 1536, -1, 1);
    double step[NROWS][NKERNELS] = {{0}};
    for (int s = 0; s < NSHAPES; s++) {
        int IC = shapes[s][0], OC = shapes[s][1];
        size_t nw = (size_t)IC * OC;
        float *w32 = malloc(sizeof(float) * nw);
        size_t np = w16_packed_elems(IC, OC);
        uint16_t *w16 = malloc(sizeof(uint16_t) * np);
        fill(w32, nw, -0.05f, 0.05f);
        w16_pack(w16, w32, IC, OC);
        struct copies c32 = make_copies(w32, sizeof(float) * nw), c16 = make_copies(w16, sizeof(uint16_t) * np);
        free(w32), free(w16);
        for (int r = 0; r < NROWS; r++) {
            int N = rows[r];
            double sec[NKERNELS];
            printf("%4d->%-5d %2d", IC, OC, N);
            for (int k = 0; k < NKERNELS; k++) {
                sec[k] = time_kernel(k, k == FP32 ? &c32 : &c16, out, x, N, IC, OC);
                step[r][k] += per_step[s] * sec[k];
                double gbs = (double)nw * (k == FP32 ? 4 : 2) / sec[k] / 1e9, gflops = 2.0 * N * nw / sec[k] / 1e9;
                printf(" | %-4s %8.1f %5.1f %7.1f", "", sec[k] * 1e6, gbs, gflops);
            }
            printf(" | %8.2f\n", sec[FP32] / sec[W16]);
            fflush(stdout);
        }
        free(c32.base), free(c16.base);
    }
    printf("one decode step's products (30 layers and the head):");
    for (int r = 0; r < NROWS; r++)
        printf("%s N=%d fp32 %.2f ms, w16 %.2f ms (%.2fx)", r ? ";" : "", rows[r], step[r][FP32] * 1e3,
               step[r][W16] * 1e3, step[r][FP32] / step[r][W16]);
    printf("\n");
    free(x), free(out);
    return 0;
}
