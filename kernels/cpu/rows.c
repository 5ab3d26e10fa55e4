#include <stddef.h>
#include <string.h>

#include "ops.h"

void gather_rows(float *out, const float *x, const int32_t *idx, int n, int C) {
#pragma omp parallel for schedule(static) if ((long)n * C > 1 << 16)
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * C, x + (size_t)idx[i] * C, (size_t)C * sizeof *out);
}

void scatter_add_rows(float *dx, const float *dout, const int32_t *idx, int n, int C) {
#pragma omp parallel for schedule(static) if ((long)n * C > 1 << 16)
    for (int i = 0; i < n; i++) {
        float *restrict d = dx + (size_t)idx[i] * C;
        const float *restrict s = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) d[c] += s[c];
    }
}

void scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * C, src + (size_t)i * C, (size_t)C * sizeof *dst);
}
