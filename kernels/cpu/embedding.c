// embedding.c — token embedding lookup and its scatter-add gradient.
#include "ops.h"

#include <stddef.h>
#include <string.h>

// ids must lie in [0, V): V is not passed, so the caller (which read them) checks.
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, sizeof(float) * (size_t)C);
}

// Tokens repeat, so threads split the channels, not the tokens: each thread adds every
// token's slice of its channels in token order. No two threads write the same float, and
// the sums come out the same for any number of threads.
enum { CBLOCK = 64 };

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    int blocks = (C + CBLOCK - 1) / CBLOCK;
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
    for (int b = 0; b < blocks; b++) {
        int c0 = b * CBLOCK, w = C - c0 < CBLOCK ? C - c0 : CBLOCK;
        for (int n = 0; n < N; n++) {
            float *restrict dst = dtable + (size_t)ids[n] * C + c0;
            const float *restrict src = dout + (size_t)n * C + c0;
#pragma omp simd
            for (int c = 0; c < w; c++) dst[c] += src[c];
        }
    }
}
