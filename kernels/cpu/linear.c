// linear.c — nn.Linear forward and backward on tp_sgemm (W in [OC, IC] layout); the
// forward of a decode step's few rows on cpu/linear_rows.h.
#include "cpu/gemm.h"
#include "cpu/linear_rows.h"
#include "ops.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

// out [N, OC] = x [N, IC] · W [OC, IC]^T (+ bias [OC] on every row)
void linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (N <= LINEAR_ROWS_MAX && linear_forward_rows(out, x, weight, bias, N, IC, OC)) return;
    if (bias) {  // the bias rows first, then the product accumulates onto them (beta = 1)
#pragma omp parallel for schedule(static) if ((long)N * OC > 1 << 16)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, sizeof(float) * (size_t)OC);
    }
    tp_sgemm(false, true, N, OC, IC, 1.0f, x, IC, weight, IC, bias ? 1.0f : 0.0f, out, OC);
}

enum { BIAS_BLOCK = 256 };

// dbias [OC] += sum over n of dout [N, OC]. Blocks of columns per thread, rows summed in
// order in double, so the result does not depend on the thread count.
static void bias_grad(float *dbias, const float *dout, int N, int OC) {
    int blocks = (OC + BIAS_BLOCK - 1) / BIAS_BLOCK;
#pragma omp parallel for schedule(static) if ((long)N * OC > 1 << 16)
    for (int b = 0; b < blocks; b++) {
        int o0 = b * BIAS_BLOCK, w = OC - o0 < BIAS_BLOCK ? OC - o0 : BIAS_BLOCK;
        double acc[BIAS_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = dout + (size_t)n * OC + o0;
            for (int o = 0; o < w; o++) acc[o] += row[o];
        }
        for (int o = 0; o < w; o++) dbias[o0 + o] += (float)acc[o];
    }
}

// dx [N, IC] += dout [N, OC] · W [OC, IC]; dW [OC, IC] += dout^T · x [N, IC]; dbias [OC] += sum_n dout.
void linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x, const float *weight,
                     int N, int IC, int OC) {
    if (N <= 0 || OC <= 0 || IC <= 0) return;
    if (dx) tp_sgemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dx, IC);
    if (dweight) tp_sgemm(true, false, OC, IC, N, 1.0f, dout, OC, x, IC, 1.0f, dweight, IC);
    if (dbias) bias_grad(dbias, dout, N, OC);
}

void linear_backward_many(int count, float *dx, float *const dweight[], float *const dbias[],
                          const float *const dout[], const float *x, const float *const weight[], const int OC[],
                          int N, int IC) {
    if (N <= 0 || IC <= 0) return;
    bool written = false;  // dx: the first product writes (beta = 0), the others add
    for (int i = 0; i < count; i++) {
        if (OC[i] <= 0) continue;
        const float beta = written ? 1.0f : 0.0f;
        if (dx) tp_sgemm(false, false, N, IC, OC[i], 1.0f, dout[i], OC[i], weight[i], IC, beta, dx, IC);
        written = true;
        linear_backward(NULL, dweight[i], dbias ? dbias[i] : NULL, dout[i], x, weight[i], N, IC, OC[i]);
    }
    if (dx && !written) memset(dx, 0, sizeof(float) * (size_t)N * IC);
}

void linear_forward_many(int count, float *const out[], const float *x, const float *const weight[],
                         const float *const bias[], const int OC[], int N, int IC) {
    for (int i = 0; i < count; i++) linear_forward(out[i], x, weight[i], bias[i], N, IC, OC[i]);
}

void rmsnorm_linear_forward_many(int count, float *const out[], float *ln, const float *x, const float *norm_weight,
                                 float eps, const float *const weight[], const float *const bias[], const int OC[],
                                 int N, int IC) {
    if (norm_weight) rmsnorm_forward(ln, NULL, x, norm_weight, N, IC, eps), x = ln;
    linear_forward_many(count, out, x, weight, bias, OC, N, IC);
}

void rmsnorm_linear_swiglu_forward(float *act, float *gate, float *up, float *ln, const float *x,
                                   const float *norm_weight, float eps, const float *w_gate, const float *w_up, int N,
                                   int IC, int F) {
    float *const out[2] = {gate, up};
    const float *const w[2] = {w_gate, w_up}, *const b[2] = {NULL, NULL};
    const int OC[2] = {F, F};
    rmsnorm_linear_forward_many(2, out, ln, x, norm_weight, eps, w, b, OC, N, IC);
    swiglu_forward(act, gate, up, (long)N * F);
}

void linear_residual_forward(float *out, const float *x, const float *weight, const float *bias, const float *residual,
                             int N, int IC, int OC) {
    linear_forward(out, x, weight, bias, N, IC, OC);
    add_inplace(out, residual, (long)N * OC);
}
