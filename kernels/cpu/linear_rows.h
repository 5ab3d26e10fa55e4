// linear_rows.h — nn.Linear forward for a few rows of x with fp32 weights, for the decode
// step on the CPU (linear_forward takes it for N <= LINEAR_ROWS_MAX).
#ifndef TP_LINEAR_ROWS_H
#define TP_LINEAR_ROWS_H

#include <stdbool.h>
#include <stdint.h>

// Up to this many rows of x linear_forward goes through linear_forward_rows: a decode
// step's batch. Past it the BLAS's blocked GEMM is as fast or faster.
enum { LINEAR_ROWS_MAX = 16 };

// out [N, OC] = x [N, IC] · W [OC, IC]^T (+ bias [OC] on every row), all fp32, W read once
// whatever N. Each output is 16 lane sums over k in order, then one fixed shuffle tree,
// then + bias: its bits do not depend on N, on the other rows of x or on the thread count.
// false (and nothing written) where the CPU lacks AVX-512 (F, BW, VL).
bool linear_forward_rows(float *out, const float *x, const float *w, const float *bias, int N, int IC, int OC);

// Whether linear_forward_rows runs here (the CPU has AVX-512).
bool linear_rows_available(void);

// Thread t of T's share of linear_forward_rows, for a caller that runs its own parallel
// region (every thread t = 0..T-1 calls it): the columns rows_share_columns gives, of
// every row, with linear_forward_rows's bits, then + residual [N, OC] on those columns
// when not NULL (an add after it). false (and nothing written) where the CPU lacks
// AVX-512.
bool linear_forward_rows_share(float *out, const float *x, const float *w, const float *bias, const float *residual,
                               int N, int IC, int OC, int t, int T);

// [*c0, *c1): the columns linear_forward_rows_share computes for thread t of T, a
// contiguous run of whole tiles of 4 (empty when there are fewer tiles than threads).
void rows_share_columns(int OC, int t, int T, int *c0, int *c1);

// out[i] := linear_forward_rows's output for row rows[i] of W [.., IC] and the one row x
// [IC], no bias, i < n: the same bits, for a few rows scattered through W. false (and
// nothing written) where the CPU lacks AVX-512.
bool linear_rows_outputs(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC);

#endif
