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
