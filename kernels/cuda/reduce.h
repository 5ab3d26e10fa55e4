// reduce.h — deterministic reductions shared by the CUDA ops (C++ side).
#ifndef TP_CUDA_REDUCE_H
#define TP_CUDA_REDUCE_H

// out[c] += Σ_n a[n,c] · (b ? b[n,c] · r[n] : 1) for a, b [N, C], r [N]: sums in double,
// in fixed row blocks added in a fixed order, so the bits do not depend on timing.
// (RMSNorm's weight gradient: a = dout, b = x, r = rstd; a bias gradient: b = r = NULL.)
void cuda_column_sum(float *out, const float *a, const float *b, const float *r, int N, int C);

#endif
