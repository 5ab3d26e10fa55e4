// reduce.h — deterministic reductions shared by the CUDA ops (C++ side).
#ifndef TP_CUDA_REDUCE_H
#define TP_CUDA_REDUCE_H

// out[c] += Σ_n a[n,c] · (b ? b[n,c] · r[n] : 1) for a, b [N, C], r [N]: sums in double,
// in fixed row blocks added in a fixed order, so the bits do not depend on timing.
// (RMSNorm's weight gradient: a = dout, b = x, r = rstd; a bias gradient: b = r = NULL.)
void cuda_column_sum(float *out, const float *a, const float *b, const float *r, int N, int C);
// out[c] += Σ_n a[n,c] for a [N, C] in bf16, rows ld elements apart (a bias gradient from a
// bf16 gradient, perhaps a part of a wider one's rows), the same way.
void cuda_column_sum16(float *out, const void *a, int N, int C, int ld);

#endif
