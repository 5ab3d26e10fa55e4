// gemm.h — single-precision matrix multiply for the CPU ops, on the fastest library
// found at run time (see tests/bench/GEMM.md for the measurements behind the choice).
//
// The library is loaded with dlopen on the first call, so the program links no BLAS: oneDNN
// (libdnnl2), else OpenBLAS's OpenMP build with its core type set from the CPU's features,
// else a plain OpenMP loop. TP_SGEMM=onednn|openblas|fallback forces one (benchmarks,
// bisecting); a forced library that cannot be loaded is an error.
#ifndef TP_GEMM_H
#define TP_GEMM_H

#include <stdbool.h>

// C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, row-major; lda/ldb/ldc = row strides.
// op(A) = A [M, K] (lda >= K), or A^T with A stored [K, M] (lda >= M) when trans_a;
// op(B) = B [K, N] (ldb >= N), or B^T with B stored [N, K] (ldb >= K) when trans_b.
// beta = 0 overwrites C (its old contents, NaN included, are ignored); beta = 1 accumulates.
// Threads: the caller's OpenMP team size (omp_get_max_threads()); one thread when called
// inside a parallel region, so the library never oversubscribes the cores.
// Bad dimensions or strides are a programming error: the program dies with a message.
void tp_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

// The library-free loop tp_sgemm falls back to (same contract, no shape checks); exposed so
// tests and the benchmark can run it on machines that have a library.
void tp_sgemm_fallback(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc);

// The backend in use, e.g. "onednn 2.6.3 (avx512_core_bf16 kernels, OpenMP)", for logs and benchmarks.
// Loads the library if no tp_sgemm call has yet.
const char *tp_sgemm_backend(void);

#endif
