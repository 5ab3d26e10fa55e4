// optim_ops.c — the optimizer's elementwise work on the CPU: AdamW over one tensor,
// the sum of squares behind the gradient norm, and scaling.
#include "ops.h"

#include <math.h>
#include <stdlib.h>

// The update of n parameters; the arithmetic order follows torch's single-tensor AdamW in
// float: decay first, then the moments, then the step with bias corrections.
void adamw_span(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                float grad_scale, float decay_factor, float b1, float b2, float step_size, float bc2_sqrt, float eps) {
#pragma omp parallel for schedule(static) if (n > 1 << 15)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;  // what scale_inplace would have stored
        float pi = p[i] * decay_factor;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi, v[i] = vi;
        p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

void adamw_ranges(float *p, const float *g, float *m, float *v, const adamw_range *ranges, int count,
                  float grad_scale, float decay_factor, float b1, float b2, float step_size, float bc2_sqrt,
                  float eps) {
    for (int i = 0; i < count; i++) {
        const size_t o = ranges[i].offset;
        adamw_span(p + o, g + o, m + o, v + o, ranges[i].n, grad_scale, ranges[i].decay ? decay_factor : 1.0f, b1,
                   b2, step_size, bc2_sqrt, eps);
    }
}

// Sum of squares in fixed blocks added in a fixed order: the same bits for any thread
// count and every run (an OpenMP reduction may combine partial sums in any order).
double sum_squares(const float *g, size_t n) {
    enum { BLOCK = 1 << 16 };
    size_t nb = (n + BLOCK - 1) / BLOCK;
    double *part = calloc(nb ? nb : 1, sizeof *part);
    if (!part) abort();
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
        size_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
        double s = 0;
        for (size_t i = b * BLOCK; i < end; i++) s += (double)g[i] * g[i];
        part[b] = s;
    }
    double sum = 0;
    for (size_t b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}

void scale_inplace(float *x, size_t n, float s) {
#pragma omp parallel for schedule(static) if (n > 1 << 15)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}
