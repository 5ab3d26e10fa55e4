// linear.cu — out = x · W^T (+ bias) and its gradients through cuBLAS.
//
// cuBLAS is column-major; a row-major [R, K] matrix is a column-major [K, R] one, so each
// product below is written for the transposed (column-major) view of our buffers:
//   out^T [OC, N] = W^T' · x^T      : gemm(T, N, m=OC, n=N,  k=IC, A=W [IC x OC], B=x [IC x N])
//   dx^T  [IC, N] += W · dout^T     : gemm(N, N, m=IC, n=N,  k=OC, A=W [IC x OC], B=dout [OC x N])
//   dW^T  [IC, OC] += x^T · dout    : gemm(N, T, m=IC, n=OC, k=N,  A=x [IC x N],  B=dout [OC x N])
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.h"

#include <cublas_v2.h>
#include <cstring>

static cublasHandle_t handle;
static cublasComputeType_t compute = CUBLAS_COMPUTE_32F;

static const char *cublas_text(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "cuBLAS: not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "cuBLAS: allocation failed (out of device memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "cuBLAS: invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "cuBLAS: architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "cuBLAS: execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "cuBLAS: not supported";
    default: return "cuBLAS: error";
    }
}

#define CUBLAS_CHECK(call)                                                                \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) cuda_note_message(cublas_text(s_), __FILE__, __LINE__); \
    } while (0)

static bool ready(void) {
    if (handle) return true;
    cublasStatus_t s = cublasCreate(&handle);
    if (s != CUBLAS_STATUS_SUCCESS) {
        cuda_note_message(cublas_text(s), __FILE__, __LINE__);
        handle = NULL;
        return false;
    }
    CUBLAS_CHECK(cublasSetStream(handle, cuda_stream()));
    return true;
}

extern "C" int cuda_set_matmul_precision(const char *name) {
    if (!strcmp(name, "fp32")) compute = CUBLAS_COMPUTE_32F;
    else if (!strcmp(name, "tf32")) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (!strcmp(name, "bf16")) compute = CUBLAS_COMPUTE_32F_FAST_16BF;
    else return -1;
    return 0;
}

bool cuda_matmul_bf16(void) { return compute == CUBLAS_COMPUTE_32F_FAST_16BF; }

static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (!ready() || m <= 0 || n <= 0) return;
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                              CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
}

__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * OC) out[i] += bias[i % OC];
}

extern "C" void cuda_linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC,
                                    int OC) {
    if (N <= 0) return;
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, weight, IC, x, IC, 0.0f, out, OC);
    if (bias) {
        add_bias_kernel<<<cuda_blocks((long)N * OC, 256), 256, 0, cuda_stream()>>>(out, bias, N, OC);
        CUDA_LAUNCH_CHECK();
    }
}

extern "C" void cuda_linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x,
                                     const float *weight, int N, int IC, int OC) {
    if (N <= 0) return;
    if (dx) gemm(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, weight, IC, dout, OC, 1.0f, dx, IC);
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, x, IC, dout, OC, 1.0f, dweight, IC);
    if (dbias) cuda_column_sum(dbias, dout, NULL, NULL, N, OC);
}
