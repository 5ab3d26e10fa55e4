// bench_sample — one row's draw by the CPU sampler (libcore/sample.h) at SmolLM2's and
// Qwen's vocabulary sizes, unfiltered and with each filter, on logits spread evenly over
// 8 nats (every token a top-p candidate: the worst case for a sort). Median of 15 draws.
//   build/release/bench/bench_sample
// A benchmark, never a test.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_median.h"
#include "progress.h"
#include "sample.h"

int main(void) {
    static const int vocab[] = {49152, 151936};
    static const tp_sampler cases[] = {{.temperature = 1, .top_p = 1},
                                       {.temperature = 0.7, .top_p = 0.95},
                                       {.temperature = 1, .top_p = 1, .top_k = 50},
                                       {.temperature = 1, .top_p = 1, .min_p = 0.1}};
    static const char *names[] = {"temperature 1", "T 0.7, top-p 0.95", "top-k 50", "min-p 0.1"};
    enum { RUNS = 15 };
    for (int v = 0; v < 2; v++) {
        int V = vocab[v];
        float *logits = malloc(sizeof(float) * (size_t)V);
        uint64_t s = 1, rng = 5;
        for (int j = 0; j < V; j++) s = s * 6364136223846793005ull + 1, logits[j] = (float)((s >> 40) % 100000) * 8e-5f - 4;
        tp_sample_scratch sc = {0};
        for (int c = 0; c < 4; c++) {
            double t[RUNS];
            long sum = 0;
            for (int r = 0; r < RUNS; r++) {
                double t0 = tp_now();
                sum += tp_sample(&cases[c], logits, V, &rng, &sc);
                t[r] = tp_now() - t0;
            }
            printf("sample V %6d %-18s %7.3f ms a row (checksum %ld)\n", V, names[c], bench_median(t, RUNS) * 1e3, sum % 1000);
        }
        tp_sample_scratch_free(&sc);
        free(logits);
    }
    return 0;
}
