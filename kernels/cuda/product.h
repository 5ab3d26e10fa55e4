// product.h — a bf16 matrix product for ops that keep their own activations in bf16
// (mlp.cu), on linear.cu's cuBLASLt plans and bf16 weight copies (C++ side only).
#ifndef TP_CUDA_PRODUCT_H
#define TP_CUDA_PRODUCT_H

// One operand: fp32 data rounded to bf16 first (a weight's cached copy; an activation into
// its slot's scratch, or the copy the slot already holds when reuse says it still serves:
// the same buffer, converted by an earlier product, nothing written in between), or bf16
// data read as it is.
struct cuda_operand {
    const void *p;
    bool bf16;    // p holds bf16
    bool weight;  // fp32 weights: their cached bf16 copy
    bool reuse;   // fp32 activations: the scratch copy from the product before serves
};

// Column-major as cuBLAS counts (linear.cu's header has our buffers in that view):
// C [m x n] = op(A) op(B) + beta C (+ bias [m] on every column) with bf16 operands and
// fp32 sums, op = transpose when ta / tb. C holds bf16 when c16 (rounded to nearest even;
// beta 0 then, residual NULL; the bias added in bf16, as torch's autocast adds it), else
// fp32, with residual [m x n] (ldc == m, beta 0) added when not NULL. fp32 A goes through
// scratch slot SCRATCH_BF16_A, fp32 B through SCRATCH_BF16_B. Only in bf16 mode
// (cuda_matmul_bf16).
void cuda_product_bf16(bool ta, bool tb, int m, int n, int k, cuda_operand A, int lda, cuda_operand B, int ldb,
                       float beta, void *C, bool c16, int ldc, const float *bias, const float *residual);

// The same with a bf16 output (beta 0) and its bias bias16 [m] given in bf16 (NULL: none),
// as cuda_product_bf16 adds a bias's cached bf16 copy: for a bias the caller holds in bf16
// (the rows of a joined copy, cuda_weights_bf16_joined).
void cuda_product16_bias16(bool ta, bool tb, int m, int n, int k, cuda_operand A, int lda, cuda_operand B, int ldb,
                           void *C, int ldc, const void *bias16);

#endif
