#include "cpu_ops.h"
#include "ops.h"

#include <math.h>
#include <stddef.h>

// sum of row[c]^2 in double (C can be thousands and the CPU result is the reference), in
// 8 interleaved partial sums: a fixed order that vectorises. One running sum was a chain
// of C dependent adds, 1 us a row at C = 576: 7 us of every norm of a batch-8 decode step.
VECTOR_CLONES static double row_sum_squares(const float *row, int C) {
    double part[8] = {0};
    int c = 0;
    for (; c + 8 <= C; c += 8)
        for (int l = 0; l < 8; l++) part[l] += (double)row[c + l] * row[c + l];
    for (; c < C; c++) part[c % 8] += (double)row[c] * row[c];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// One row: out = row * rstd * weight.
static void norm_row(float *o, float *rstd, const float *row, const float *weight, int C, float eps) {
    double sum = row_sum_squares(row, C);
    float s = (float)(1.0 / sqrt(sum / C + eps));
    for (int c = 0; c < C; c++) o[c] = row[c] * s * weight[c];
    if (rstd) *rstd = s;
}

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
    for (int n = 0; n < N; n++)
        norm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, x + (size_t)n * C, weight, C, eps);
}

void rmsnorm_forward_rows(float *out, const float *x, const float *weight, int C, float eps, int n0, int n1) {
    for (int n = n0; n < n1; n++) norm_row(out + (size_t)n * C, NULL, x + (size_t)n * C, weight, C, eps);
}

void add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b, const float *weight,
                         int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C > 1 << 16)
    for (int n = 0; n < N; n++) {
        float *s = sum + (size_t)n * C;
        const float *ar = a + (size_t)n * C, *br = b + (size_t)n * C;
        for (int c = 0; c < C; c++) s[c] = ar[c] + br[c];
        norm_row(out + (size_t)n * C, rstd ? rstd + n : NULL, s, weight, C, eps);
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
