// mlp.c — the MLP block and the output head of a training step as the ops they are made
// of: on the CPU their activations are fp32, so these are the ops' own calls and bits
// (see ops.h).
#include "ops.h"

void mlp_up_forward(void *act, void *gate, void *up, const float *x, const float *w_gate, const float *w_up, int N,
                    int C, int F) {
    linear_forward_many(2, (float *[]){gate, up}, x, (const float *[]){w_gate, w_up}, (const float *[]){NULL, NULL},
                        (int[]){F, F}, N, C);
    swiglu_forward(act, gate, up, (long)N * F);
}

void mlp_down_forward(float *out, const void *act, const float *w_down, const float *residual, int N, int F, int C) {
    linear_residual_forward(out, act, w_down, NULL, residual, N, F, C);
}

void mlp_backward(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const float *x,
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
