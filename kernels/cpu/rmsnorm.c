#include "ops.h"

#include <math.h>
#include <stddef.h>

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        // Accumulate in double: C can be thousands and the CPU result is the reference.
        double sum = 0;
        for (int c = 0; c < C; c++) sum += (double)row[c] * row[c];
        float s = (float)(1.0 / sqrt(sum / C + eps));
        for (int c = 0; c < C; c++) o[c] = row[c] * s * weight[c];
        if (rstd) rstd[n] = s;
    }
}

// With r = rstd[n], g = dout·weight and m = mean_c(g · x):
//   dx[n,c] += r · (g[c] - x[n,c] · r² · m)      (r depends on every x of the row)
//   dweight[c] += Σ_n dout[n,c] · x[n,c] · r
// Either output may be NULL. Sums are in double like the forward's. dweight is split by
// channel block across threads, each summing its channels over all rows in row order:
// no races, and the same bits for any number of threads.
enum { CBLOCK = 64 };

void rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x, const float *weight,
                      const float *rstd, int N, int C) {
    if (dx) {
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
        for (int n = 0; n < N; n++) {
            const float *restrict xr = x + (size_t)n * C, *restrict dr = dout + (size_t)n * C;
            float *restrict dxr = dx + (size_t)n * C;
            double dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) dot += (double)dr[c] * weight[c] * xr[c];
            float r = rstd[n];
            float kx = (float)((double)r * r * r * dot / C);
#pragma omp simd
            for (int c = 0; c < C; c++) dxr[c] += r * (dr[c] * weight[c]) - kx * xr[c];
        }
    }
    if (dweight) {
        int blocks = (C + CBLOCK - 1) / CBLOCK;
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
        for (int b = 0; b < blocks; b++) {
            int c0 = b * CBLOCK, w = C - c0 < CBLOCK ? C - c0 : CBLOCK;
            double acc[CBLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *restrict xr = x + (size_t)n * C + c0, *restrict dr = dout + (size_t)n * C + c0;
                double r = rstd[n];
#pragma omp simd
                for (int c = 0; c < w; c++) acc[c] += (double)dr[c] * xr[c] * r;
            }
            for (int c = 0; c < w; c++) dweight[c0 + c] += (float)acc[c];
        }
    }
}
