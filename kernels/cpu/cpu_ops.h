// cpu_ops.h — helpers shared by the CPU ops, not part of the op interface.
#ifndef TP_CPU_OPS_H
#define TP_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

// Hot loops are also compiled for AVX2 and AVX-512 and chosen at run time: the build
// targets plain x86-64 (SSE2), a quarter of what current CPUs do per cycle, and CI
// machines differ, so no -march=native. In ISO C mode GCC fuses no multiply-add and the
// loops sum in a fixed order, so every variant gives the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

// sum a[k] * b[k] over k < K, in 16 partial sums (a fixed order that vectorises without
// -ffast-math).
float dot16(const float *a, const float *b, int K);

// x [n] := exp(x - shift), vectorisable (glibc's expf is a scalar call); 1.7 ulp at worst.
void exp_shift_inplace(float *x, float shift, long n);

// The largest of x [n] ignoring NaN; -inf when there is none (n = 0, all NaN).
float max_not_nan(const float *x, long n);

// sum of x [n] in double, in 8 interleaved partial sums (the tail into the first): a
// fixed order that vectorises, 8x shorter dependency chain than one running sum.
double sum_in_double(const float *x, long n);

// Requests every line of rows rows[0..n) of W [.., IC] (fp32): rows scattered through a
// large matrix, seldom cached, whose misses then overlap (one row after another took 1-2
// us a row).
void prefetch_rows_of(const float *w, const int32_t *rows, int n, int IC);

// out [N, OC] += residual [N, OC] in columns c0..c1-1 only (add_inplace's bits): the
// residual of the columns one thread's share of a product wrote.
void add_columns(float *out, const float *residual, int N, int OC, int c0, int c1);

// Rows n0..n1-1 of rmsnorm_forward (no rstd): the same bits, on the calling thread (a
// share of the rows for a caller that runs its own parallel region).
void rmsnorm_forward_rows(float *out, const float *x, const float *weight, int C, float eps, int n0, int n1);

// Columns c0..c1-1 of every row of swiglu_forward on [N, F]: the same bits (each element
// is computed alone), on the calling thread.
void swiglu_forward_columns(float *out, const float *gate, const float *up, int N, int F, int c0, int c1);

// The attention and MLP blocks and training head of ops.h with their activations stored
// in bf16 (2-byte ln, q, k, v, att, ln2, gate, up, act, their gradients that are stored,
// and logits), rounded where a GPU with bf16 products rounds them; the products stay fp32
// (kernels/cpu/attn.c, mlp.c; tp_backend_cpu_act16).
void attn_forward_bf16(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                       const float *norm2, const attn_batch *b);
void attn_backward_bf16(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                        const attn_scratch *s, const attn_batch *b);
void mlp_up_forward_bf16(void *act, void *gate, void *up, const void *x, const float *w_gate, const float *w_up,
                         int N, int C, int F);
void mlp_down_forward_bf16(float *out, const void *act, const float *w_down, const float *residual, int N, int F,
                           int C);
void mlp_backward_bf16(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x,
                       const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                       const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F);
double head_loss_backward_bf16(float *dx, float *dw, const float *x, const float *w, const int32_t *target,
                               void *logits, int n, int C, int V, float scale);
// x [n] rounded to bf16 in place (values bf16 holds exactly), stored into h when not NULL;
// and a new fp32 array of h's n values (free it).
void act_round_bf16(float *x, uint16_t *h, size_t n);
float *act_widen_bf16(const void *h, size_t n);

#endif
