// crossentropy.c — softmax cross-entropy over a chunk of logits, fused with its gradient:
// the logits are overwritten by dloss/dlogits, so the [n, V] buffer is the only one.
#include "cpu_ops.h"
#include "ops.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

enum { LANES = 16, ROWS = 64 };

// One row: x [V] := (softmax(x) - onehot(t)) · scale; returns -log softmax(x)[t].
// Passes over the row: max, exp(x - max) in place, their sum (in double), one multiply
// per element; the row (128 KiB at V = 32k) stays in L2 after the first. A target past
// the vocabulary gives NaN (callers check ids against V; this keeps a bad one loud
// instead of reading out of bounds).
VECTOR_CLONES static double row_loss(float *x, int t, int V, float scale) {
    if (t < 0) {
        memset(x, 0, sizeof(float) * (size_t)V);
        return 0;
    }
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
    double xt = t < V ? x[t] : NAN;

    exp_shift_inplace(x, m, V);
    double acc[LANES] = {0};
    int j = 0;
    for (; j + LANES <= V; j += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) acc[l] += x[j + l];
    for (; j < V; j++) acc[0] += x[j];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    double sum = acc[0];

    float k = (float)(scale / sum);
    // p_t - 1 in double: p_t near 1 would otherwise lose its digits to the subtraction.
    float gt = t < V ? (float)((x[t] / sum - 1.0) * scale) : 0;
#pragma omp simd
    for (int i = 0; i < V; i++) x[i] *= k;
    if (t < V) x[t] = gt;
    return m + log(sum) - xt;
}

// Rows go to threads in groups of ROWS whose losses are added in row order, so the total
// is the same for any number of threads.
double crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale) {
    double total = 0;
    for (int r0 = 0; r0 < n; r0 += ROWS) {
        int rows = n - r0 < ROWS ? n - r0 : ROWS;
        double loss[ROWS];
#pragma omp parallel for schedule(static) if (rows > 1 && (long)rows * V > 1 << 15)
        for (int r = 0; r < rows; r++) loss[r] = row_loss(logits + (size_t)(r0 + r) * V, target[r0 + r], V, scale);
        for (int r = 0; r < rows; r++) total += loss[r];
    }
    return total;
}
