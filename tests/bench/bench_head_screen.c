// bench_head_screen — greedy decoding's output head: the argmax of each row of x · W^T
// through the full bf16 product (linear_forward_w16, then tp_sample's greedy scan) against the head's int8
// screen (cpu/head_screen.h), at SmolLM2-135M's head (49,152 x 576) and Qwen2.5-0.5B's
// (151,936 x 896), for 1, 8 and 64 rows, with states like a random model's and with two
// dimensions 20x the rest (as a trained model's: the screen then gives each element two
// codes). Random weights (sd 0.02).
//
//   make bench   (or: build/release/bench/bench_head_screen [--runs N])
//
// A decode step reads the whole model before the head comes round, so each call starts
// with the head out of cache (a 512 MiB buffer is written between calls). Median
// milliseconds a call of each, the ratio, the rows the screen computed exactly per token,
// and whether the tokens agree (they must: the screen's are the product's). A benchmark,
// never a test.
#include "bench_median.h"
#include "cpu/head_screen.h"
#include "cpu/linear_bf16.h"
#include "progress.h"
#include "sample.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double uniform(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
static float normalish(double sd) {  // a sum of 4 uniforms, scaled to sd
    double u = 0;
    for (int i = 0; i < 4; i++) u += uniform() - 0.5;
    return (float)(u * 1.732 * sd);
}

// The engine's greedy draw: tp_sample's (vectorised) first largest logit of each row.
static void first_max(int32_t *top, const float *logits, int N, int V) {
    static const tp_sampler greedy = {.greedy = true, .temperature = 0, .top_p = 1};
    for (int n = 0; n < N; n++) top[n] = tp_sample(&greedy, logits + (size_t)n * V, V, NULL, NULL);
}

int main(int argc, char **argv) {
    int runs = 11;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    if (runs < 1) runs = 1;
    const int shapes[][2] = {{49152, 576}, {151936, 896}}, rows[] = {1, 8, 64};
    const size_t flush_bytes = (size_t)512 << 20;
    char *flush = malloc(flush_bytes);
    double *t_full = malloc(sizeof(double) * (size_t)runs), *t_screen = malloc(sizeof(double) * (size_t)runs);
    printf("head argmax: full bf16 product vs int8 screen, head out of cache, median of %d\n", runs);
    printf("%-16s %4s %-9s %10s %10s %7s %12s %6s\n", "head", "rows", "states", "full ms", "screen ms", "ratio",
           "exact/token", "same");
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int V = shapes[c][0], IC = shapes[c][1];
        float *w = malloc(sizeof(float) * (size_t)V * IC);
        for (size_t i = 0; i < (size_t)V * IC; i++) w[i] = normalish(0.02);
        uint16_t *wp = malloc(sizeof(uint16_t) * w16_packed_elems(IC, V));
        w16_pack(wp, w, IC, V);
        double t0 = tp_now();
        head_screen *s = head_screen_new(w, V, IC);
        if (!s) {
            printf("no screen on this CPU (it needs AVX-512 VNNI)\n");
            return 0;
        }
        printf("%d x %d: screen made in %.2f s, %.1f MB\n", V, IC, tp_now() - t0, head_screen_bytes(s) / 1e6);
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
            for (int outlying = 0; outlying < 2; outlying++) {
                int N = rows[r];
                float *x = malloc(sizeof(float) * (size_t)N * IC), *logits = malloc(sizeof(float) * (size_t)N * V);
                for (size_t i = 0; i < (size_t)N * IC; i++) x[i] = normalish(1.0);
                if (outlying)
                    for (int n = 0; n < N; n++) x[(size_t)n * IC + 3] = 20, x[(size_t)n * IC + 100] = -20;
                int32_t *top_full = malloc(sizeof(int32_t) * (size_t)N);
                int32_t *top_screen = malloc(sizeof(int32_t) * (size_t)N);
                long exact = 0;
                int left = 0;
                for (int k = 0; k < runs; k++) {
                    memset(flush, k, flush_bytes);
                    double a = tp_now();
                    linear_forward_w16(logits, x, wp, NULL, N, IC, V);
                    first_max(top_full, logits, N, V);
                    t_full[k] = tp_now() - a;
                    memset(flush, k + 1, flush_bytes);
                    a = tp_now();
                    left = head_screen_argmax(s, w, x, N, top_screen);
                    t_screen[k] = tp_now() - a;
                    exact = head_screen_last_candidates(s);
                }
                double full = bench_median(t_full, runs), screen = bench_median(t_screen, runs);
                bool same = left == 0 && !memcmp(top_full, top_screen, sizeof(int32_t) * (size_t)N);
                char head[32];
                snprintf(head, sizeof head, "%d x %d", V, IC);
                printf("%-16s %4d %-9s %10.3f %10.3f %6.2fx %12.1f %6s\n", head, N, outlying ? "outlying" : "random",
                       full * 1e3, screen * 1e3, full / screen, (double)exact / N, same ? "yes" : "NO");
                free(x), free(logits), free(top_full), free(top_screen);
            }
        head_screen_free(s);
        free(w), free(wp);
    }
    free(flush), free(t_full), free(t_screen);
    return 0;
}
