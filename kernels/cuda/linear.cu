// linear.cu — out = x · W^T (+ bias) and its gradients through cuBLAS.
//
// In bf16 mode the operands are rounded to bf16 first (weights once per update, cached;
// activations per call) and cuBLAS multiplies bf16 × bf16 into fp32 with fp32 sums: the
// same numbers as cuBLAS's own FAST_16BF mode on fp32 data, which measured 3-4x slower
// (about 160 TFLOP/s on an H100 against 500+ for bf16 operands).
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
#include <cuda_bf16.h>
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

__global__ void to_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);  // round to nearest even
}

static void to_bf16(__nv_bfloat16 *out, const float *in, size_t n) {
    to_bf16_kernel<<<cuda_blocks((long)n, 256), 256, 0, cuda_stream()>>>(out, in, n);
    CUDA_LAUNCH_CHECK();
}

// bf16 copies of weights, valid while cuda_weights_version is unchanged.
enum { MAX_CACHED = 4096 };
static struct cached {
    const float *src;
    size_t n;
    __nv_bfloat16 *bf;
    unsigned long version;
} cache[MAX_CACHED];
static int n_cached;

static const __nv_bfloat16 *weight_bf16(const float *w, size_t n) {
    struct cached *c = NULL;
    for (int i = 0; i < n_cached && !c; i++)
        if (cache[i].src == w) c = &cache[i];
    if (!c && n_cached < MAX_CACHED) c = &cache[n_cached++], c->src = w, c->n = 0, c->bf = NULL, c->version = 0;
    if (!c) return NULL;
    if (c->n != n) {
        cuda_free(c->bf);
        cuda_graph_epoch_now++;  // graphs that read the old copy are stale
        c->bf = (__nv_bfloat16 *)cuda_alloc(n * sizeof(__nv_bfloat16));
        c->n = c->bf ? n : 0;
        c->version = 0;
        if (!c->bf) return NULL;  // out of memory: the caller converts into scratch instead
    }
    if (c->version != cuda_weights_version) {
        to_bf16(c->bf, w, n);
        c->version = cuda_weights_version;
    }
    return c->bf;
}

// The bf16 operand last converted into scratch B, still valid for the next product that
// reads the same buffer (linear_backward's two products share dout).
static const float *scratch_b_src;
static size_t scratch_b_n;
static unsigned long scratch_b_version;

static const __nv_bfloat16 *operand_bf16(int slot, const float *x, size_t n, bool is_weight) {
    const __nv_bfloat16 *b = is_weight ? weight_bf16(x, n) : NULL;
    if (b) return b;
    __nv_bfloat16 *s = (__nv_bfloat16 *)cuda_scratch(slot, n * sizeof(__nv_bfloat16));
    if (s) to_bf16(s, x, n);
    return s;
}

// C = op(A) op(B) (+ beta C) in bf16 operands; sizes as cuBLAS counts them.
// reuse_b: B is unchanged since the previous product converted it (same buffer, nothing
// written in between), so scratch B still holds its bf16 copy.
static void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                      bool a_weight, const float *B, int ldb, bool b_weight, float beta, float *C, int ldc,
                      bool reuse_b) {
    size_t na = (size_t)lda * (ta == CUBLAS_OP_N ? k : m), nb = (size_t)ldb * (tb == CUBLAS_OP_N ? n : k);
    const __nv_bfloat16 *a = operand_bf16(SCRATCH_BF16_A, A, na, a_weight);
    const __nv_bfloat16 *b;
    if (reuse_b && !b_weight && scratch_b_src == B && scratch_b_n == nb && scratch_b_version == cuda_weights_version) {
        b = (const __nv_bfloat16 *)cuda_scratch(SCRATCH_BF16_B, nb * sizeof(__nv_bfloat16));
    } else {
        b = operand_bf16(SCRATCH_BF16_B, B, nb, b_weight);
        scratch_b_src = b_weight ? NULL : B, scratch_b_n = nb, scratch_b_version = cuda_weights_version;
    }
    if (!a || !b) return;  // noted by cuda_scratch
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &beta, C,
                              CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// a_weight / b_weight: which operand is a weight matrix (its bf16 copy is cached).
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                 bool a_weight, const float *B, int ldb, bool b_weight, float beta, float *C, int ldc,
                 bool reuse_b) {
    if (!ready() || m <= 0 || n <= 0) return;
    if (compute == CUBLAS_COMPUTE_32F_FAST_16BF) {
        gemm_bf16(ta, tb, m, n, k, A, lda, a_weight, B, ldb, b_weight, beta, C, ldc, reuse_b);
        return;
    }
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                              CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
}

__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * OC) out[i] += bias[i % OC];
}

// ---- few rows (decode steps): a warp per output column, the bf16 weights read once ----
// cuBLAS's bf16 GEMM with N <= 8 reads the weights at ~10% of the bandwidth (H200, the
// 0.5B decode step: 2.3 ms for 1 GB). Here each warp streams one weight row with 16-byte
// loads while the N rows of x (fp32, not rounded: at least as accurate as the GEMM path)
// stay in L1/L2; lane partial sums go through the same shuffle tree for every output, so
// results are deterministic and a row's output does not depend on the batch around it.
enum { GEMV_WARPS = 8, GEMV_MAX_N = 8 };

template <int NN>
__global__ void gemv_bf16_kernel(float *__restrict__ out, const float *__restrict__ x,
                                 const __nv_bfloat16 *__restrict__ w, const float *__restrict__ bias, int IC, int OC) {
    const int o = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (o >= OC) return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)o * IC);
    float acc[NN];
#pragma unroll
    for (int n = 0; n < NN; n++) acc[n] = 0.f;
    const int chunks = IC / 8;  // 8 weights a 16-byte load
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
        uint4 raw = __ldg(wr + c);
        const __nv_bfloat162 *pair = reinterpret_cast<const __nv_bfloat162 *>(&raw);
        float2 w01 = __bfloat1622float2(pair[0]), w23 = __bfloat1622float2(pair[1]);
        float2 w45 = __bfloat1622float2(pair[2]), w67 = __bfloat1622float2(pair[3]);
#pragma unroll
        for (int n = 0; n < NN; n++) {
            const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)n * IC) + 2 * c;
            float4 a = xr[0], b = xr[1];
            float s = acc[n];
            s = fmaf(a.x, w01.x, s), s = fmaf(a.y, w01.y, s), s = fmaf(a.z, w23.x, s), s = fmaf(a.w, w23.y, s);
            s = fmaf(b.x, w45.x, s), s = fmaf(b.y, w45.y, s), s = fmaf(b.z, w67.x, s), s = fmaf(b.w, w67.y, s);
            acc[n] = s;
        }
    }
#pragma unroll
    for (int n = 0; n < NN; n++) acc[n] = warp_sum(acc[n]);
    if (lane == 0)
#pragma unroll
        for (int n = 0; n < NN; n++) out[(size_t)n * OC + o] = bias ? acc[n] + bias[o] : acc[n];
}

template <int NN>
static void launch_gemv(float *out, const float *x, const __nv_bfloat16 *w, const float *bias, int IC, int OC) {
    gemv_bf16_kernel<NN><<<cuda_blocks(OC, GEMV_WARPS), GEMV_WARPS * 32, 0, cuda_stream()>>>(out, x, w, bias, IC, OC);
    CUDA_LAUNCH_CHECK();
}

// The few-rows path when it applies (bf16 products, aligned rows); false: use the GEMM.
static bool gemv_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC) {
    if (compute != CUBLAS_COMPUTE_32F_FAST_16BF || N > GEMV_MAX_N || IC % 8 || ((uintptr_t)x & 15)) return false;
    const __nv_bfloat16 *w = weight_bf16(weight, (size_t)OC * IC);
    if (!w) return false;
    switch (N) {
    case 1: launch_gemv<1>(out, x, w, bias, IC, OC); break;
    case 2: launch_gemv<2>(out, x, w, bias, IC, OC); break;
    case 3: launch_gemv<3>(out, x, w, bias, IC, OC); break;
    case 4: launch_gemv<4>(out, x, w, bias, IC, OC); break;
    case 5: launch_gemv<5>(out, x, w, bias, IC, OC); break;
    case 6: launch_gemv<6>(out, x, w, bias, IC, OC); break;
    case 7: launch_gemv<7>(out, x, w, bias, IC, OC); break;
    default: launch_gemv<8>(out, x, w, bias, IC, OC); break;
    }
    return true;
}

// One product; reuse_x: x's bf16 copy from the previous product is still in scratch B.
// Returns whether this product left x's bf16 copy there.
static bool forward_one(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC,
                        bool reuse_x) {
    if (gemv_forward(out, x, weight, bias, N, IC, OC)) return false;
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, weight, IC, true, x, IC, false, 0.0f, out, OC, reuse_x);
    if (bias) {
        add_bias_kernel<<<cuda_blocks((long)N * OC, 256), 256, 0, cuda_stream()>>>(out, bias, N, OC);
        CUDA_LAUNCH_CHECK();
    }
    return true;
}

extern "C" void cuda_linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC,
                                    int OC) {
    if (N > 0) forward_one(out, x, weight, bias, N, IC, OC, false);
}

extern "C" void cuda_linear_forward_many(int count, float *const out[], const float *x, const float *const weight[],
                                         const float *const bias[], const int OC[], int N, int IC) {
    // x is B of every product and nothing writes it in between: one bf16 copy serves all
    bool converted = false;
    for (int i = 0; i < count && N > 0; i++)
        converted = forward_one(out[i], x, weight[i], bias[i], N, IC, OC[i], converted);
}

extern "C" void cuda_linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x,
                                     const float *weight, int N, int IC, int OC) {
    if (N <= 0) return;
    // dout is B of both products: converted to bf16 once (dx, written by the first, is not dout).
    if (dx) gemm(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, weight, IC, true, dout, OC, false, 1.0f, dx, IC, false);
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, x, IC, false, dout, OC, false, 1.0f, dweight, IC, dx != NULL);
    if (dbias) cuda_column_sum(dbias, dout, NULL, NULL, N, OC);
}
