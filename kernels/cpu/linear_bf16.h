// linear_bf16.h — nn.Linear forward with bf16 weights, for the decode step on the CPU.
//
// Decoding a few rows is bound by reading the weights (a 135M-parameter model reads 540 MB
// of fp32 weights per step); bf16 halves that. Each weight row is read from memory once
// per call whatever N, so N = 1..64 rows cost little more than one.
#ifndef TP_LINEAR_BF16_H
#define TP_LINEAR_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// dst [n] := src [n] rounded to bf16: round to nearest, ties to even; NaN stays a (quiet)
// NaN with its sign, ±inf stays ±inf, finite values past bf16's range become ±inf,
// subnormals are rounded like any other value (no flush to zero).
void weights_to_bf16(uint16_t *dst, const float *src, size_t n);

// Elements of W [OC, IC] packed for linear_forward_w16: OC rounded up to a multiple of 32, times IC.
size_t w16_packed_elems(int IC, int OC);

// dst [w16_packed_elems(IC, OC)] := W [OC, IC] rounded to bf16 (as weights_to_bf16) and
// packed in panels of 32 output columns, [ceil(OC/32)][IC][32]: line k of panel p holds
// the weights of input k for outputs 32p + c at lane 2c (c < 16) or 2(c - 16) + 1, zeros
// past OC. A panel is one stream through memory, and a line widens to two vectors of 16
// consecutive outputs with one instruction each.
void w16_pack(uint16_t *dst, const float *w, int IC, int OC);

// out [N, OC] = x [N, IC] · W [OC, IC]^T (+ bias [OC] on every row, when not NULL), W
// packed by w16_pack, x and out fp32 (out is overwritten). Weights are widened exactly
// (bf16 -> fp32 is a shift) and every product and sum is fp32, so the result is
// linear_forward's on the widened weights to fp32 rounding (1e-6 relative to the output's
// scale in the tests). Each output is one sum over k in order, then + bias: the bits do
// not depend on N, on the other rows of x, or on the thread count. AVX-512 (F, BW, VL)
// when the CPU has it (fused multiply-adds), else plain C (the same contract; a multiply
// then an add, so its bits differ from the AVX-512 path's).
void linear_forward_w16(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC, int OC);

// Thread t of T's share of linear_forward_w16, for a caller that runs its own parallel
// region (every thread t = 0..T-1 calls it; nothing here waits for the others): the
// columns w16_share_columns gives, of every row, the same bits as linear_forward_w16,
// then + residual [N, OC] on those columns when not NULL (the bits of an add after it).
// A decode step runs a layer's products and the small operations between them in one
// region this way, each thread on the columns it computed.
void linear_forward_w16_share(float *out, const float *x, const uint16_t *wp, const float *bias,
                              const float *residual, int N, int IC, int OC, int t, int T);

// [*c0, *c1): the output columns linear_forward_w16_share computes for thread t of T, a
// contiguous run of whole panels (empty when there are fewer panels than threads).
void w16_share_columns(int OC, int t, int T, int *c0, int *c1);

// out[i] := the output linear_forward_w16 gives on the AVX-512 path for output row
// rows[i] of W [OC, IC] (fp32, rounded to bf16 here as w16_pack rounds it) and the one row
// x [IC], no bias, i < n: the same bits (one fused multiply-add a k, in order from 0), for
// a few rows without reading the packed panels. false (and nothing written) where the CPU
// lacks AVX-512 (the plain-C path's bits differ).
bool linear_w16_outputs(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC);

// The plain-C path linear_forward_w16 takes on CPUs without AVX-512; exposed so tests can
// run it on machines that have AVX-512.
void linear_forward_w16_portable(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC,
                                 int OC);

#endif
