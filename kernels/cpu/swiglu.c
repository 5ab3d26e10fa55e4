// swiglu.c — the Llama/Qwen MLP's gate: out = silu(gate) * up, silu(g) = g · sigmoid(g).
#include "cpu_ops.h"
#include "ops.h"

enum { CHUNK = 1 << 12 };  // elements per OpenMP work item: 16 KiB a tensor, in L1

// sigmoid(g) = 1 / (1 + exp(-g)); exp(-g) is computed into the output first (an exp
// that overflows to inf gives sigmoid 0, as it should).
VECTOR_CLONES static void forward_chunk(float *restrict out, const float *restrict gate, const float *restrict up,
                                        long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) out[i] = -gate[i];
    exp_shift_inplace(out, 0, n);
#pragma omp simd
    for (long i = 0; i < n; i++) out[i] = gate[i] * (1.0f / (1.0f + out[i])) * up[i];
}

// d silu(g)/dg = sig + g sig (1 - sig)
VECTOR_CLONES static void backward_chunk(float *restrict dgate, float *restrict dup, const float *restrict dout,
                                         const float *restrict gate, const float *restrict up, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) dgate[i] = -gate[i];
    exp_shift_inplace(dgate, 0, n);
#pragma omp simd
    for (long i = 0; i < n; i++) {
        float g = gate[i], d = dout[i], sig = 1.0f / (1.0f + dgate[i]);
        dup[i] = d * g * sig;
        dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

void swiglu_forward(float *out, const float *gate, const float *up, long n) {
    long chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (long c = 0; c < chunks; c++) {
        long i = c * CHUNK;
        forward_chunk(out + i, gate + i, up + i, n - i < CHUNK ? n - i : CHUNK);
    }
}

void swiglu_forward_columns(float *out, const float *gate, const float *up, int N, int F, int c0, int c1) {
    for (int n = 0; n < N && c0 < c1; n++) {
        size_t at = (size_t)n * F + (size_t)c0;
        forward_chunk(out + at, gate + at, up + at, c1 - c0);
    }
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n) {
    long chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (long c = 0; c < chunks; c++) {
        long i = c * CHUNK;
        backward_chunk(dgate + i, dup + i, dout + i, gate + i, up + i, n - i < CHUNK ? n - i : CHUNK);
    }
}
