// mlp.c — the MLP block and the output head of a training step as the ops they are made
// of: on the CPU their activations are fp32, so these are the ops' own calls and bits
// (see ops.h).
#include "cpu/cpu_ops.h"
#include "error.h"
#include "ops.h"
#include "tensor.h"

#include <stdlib.h>

void mlp_up_forward(void *act, void *gate, void *up, const void *x, const float *w_gate, const float *w_up, int N,
                    int C, int F) {
    linear_forward_many(2, (float *[]){gate, up}, x, (const float *[]){w_gate, w_up}, (const float *[]){NULL, NULL},
                        (int[]){F, F}, N, C);
    swiglu_forward(act, gate, up, (long)N * F);
}

void mlp_down_forward(float *out, const void *act, const float *w_down, const float *residual, int N, int F, int C) {
    linear_residual_forward(out, act, w_down, NULL, residual, N, F, C);
}

void mlp_backward(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x,
                  const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                  const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F) {
    linear_backward_many(1, dact, (float *[]){dw_down}, NULL, (const float *[]){dout}, act, (const float *[]){w_down},
                         (int[]){C}, N, F);
    swiglu_backward(dgate, dup, dact, gate, up, (long)N * F);
    linear_backward_many(2, dx, (float *[]){dw_gate, dw_up}, NULL, (const float *[]){dgate, dup}, x,
                         (const float *[]){w_gate, w_up}, (int[]){F, F}, N, C);
}

double head_loss_backward(float *dx, float *dw, const float *x, const float *w, const int32_t *target, void *logits,
                          int n, int C, int V, float scale) {
    linear_forward(logits, x, w, NULL, n, C, V);
    double loss = crossentropy_forward_backward(logits, target, n, V, scale);
    linear_backward_many(1, dx, (float *[]){dw}, NULL, (const float *[]){logits}, x, (const float *[]){w}, (int[]){V},
                         n, C);
    return loss;
}

// ---- the same ops with their activations stored in bf16, as a GPU with bf16 products keeps them ----
// The products stay fp32 here; what is rounded (to nearest even) is the storage, where the
// GPU rounds it: each [N, F] tensor, and the logits and their gradient, as they are written,
// and every later use reads the rounded values. tp_backend_cpu_act16 runs the model through
// these, so the model's handling of 2-byte activations (sizes, the head's chunks) is tested
// on any machine, and its loss and gradients against fp32 within bf16 tolerance.

void act_round_bf16(float *x, uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint16_t b = tp_f32_to_bf16(x[i]);
        x[i] = tp_bf16_to_f32(b);
        if (h) h[i] = b;
    }
}

float *act_widen_bf16(const void *h, size_t n) {
    float *x = tp_xmalloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = tp_bf16_to_f32(((const uint16_t *)h)[i]);
    return x;
}

static float *floats(size_t n) { return tp_xmalloc((n ? n : 1) * sizeof(float)); }

void mlp_up_forward_bf16(void *act, void *gate, void *up, const void *x16, const float *w_gate, const float *w_up,
                         int N, int C, int F) {
    size_t n = (size_t)N * F;
    float *g = floats(n), *u = floats(n), *a = floats(n), *x = act_widen_bf16(x16, (size_t)N * C);
    linear_forward_many(2, (float *[]){g, u}, x, (const float *[]){w_gate, w_up}, (const float *[]){NULL, NULL},
                        (int[]){F, F}, N, C);
    act_round_bf16(g, gate, n), act_round_bf16(u, up, n);
    swiglu_forward(a, g, u, (long)n);
    act_round_bf16(a, act, n);
    free(g), free(u), free(a), free(x);
}

void mlp_down_forward_bf16(float *out, const void *act, const float *w_down, const float *residual, int N, int F,
                           int C) {
    float *a = act_widen_bf16(act, (size_t)N * F);
    linear_residual_forward(out, a, w_down, NULL, residual, N, F, C);
    free(a);
}

void mlp_backward_bf16(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x16,
                       const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                       const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F) {
    size_t n = (size_t)N * F;
    float *a = act_widen_bf16(act, n), *g = act_widen_bf16(gate, n), *u = act_widen_bf16(up, n);
    float *da = floats(n), *dg = floats(n), *du = floats(n), *x = act_widen_bf16(x16, (size_t)N * C);
    linear_backward_many(1, da, (float *[]){dw_down}, NULL, (const float *[]){dout}, a, (const float *[]){w_down},
                         (int[]){C}, N, F);
    act_round_bf16(da, dact, n);
    swiglu_backward(dg, du, da, g, u, (long)n);
    act_round_bf16(dg, dgate, n), act_round_bf16(du, dup, n);
    linear_backward_many(2, dx, (float *[]){dw_gate, dw_up}, NULL, (const float *[]){dg, du}, x,
                         (const float *[]){w_gate, w_up}, (int[]){F, F}, N, C);
    free(a), free(g), free(u), free(da), free(dg), free(du), free(x);
}

double head_loss_backward_bf16(float *dx, float *dw, const float *x, const float *w, const int32_t *target,
                               void *logits, int n, int C, int V, float scale) {
    size_t nz = (size_t)n * V;
    float *z = floats(nz);
    linear_forward(z, x, w, NULL, n, C, V);
    act_round_bf16(z, NULL, nz);
    double loss = crossentropy_forward_backward(z, target, n, V, scale);
    act_round_bf16(z, logits, nz);
    linear_backward_many(1, dx, (float *[]){dw}, NULL, (const float *[]){z}, x, (const float *[]){w}, (int[]){V}, n,
                         C);
    free(z);
    return loss;
}
