// crossentropy.cu — softmax cross-entropy on a chunk of logits, fused with its gradient:
// the logits are overwritten by (softmax - onehot(target)) · scale, one block per row.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/product.h"

#include <cuda_bf16.h>
#include <cmath>
#include <cstdlib>

enum { CE_THREADS = 1024 };

// Sum over the block in a fixed order: each warp's shuffle tree, then warp 0 adds the
// warp sums in warp order. Every thread gets the result.
__device__ double block_sum_d(double v, double *shared /* [32] */) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum_d(v);
    __syncthreads();  // shared may still be read from a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / 32 ? shared[lane] : 0.0;
        v = warp_sum_d(v);
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

__device__ float block_max(float v, float *shared /* [32] */) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / 32 ? shared[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

// x into this thread's running max m and sum s = Σ exp(x_i - m) (double): when x raises
// the max, the sum so far is rescaled to the new one (rarely, after the first few).
__device__ __forceinline__ void online_add(float &m, double &s, float x) {
    if (x > m) {
        s = s * exp((double)m - (double)x) + 1.0;  // m = -inf at first: s = 0 * 0 + 1
        m = x;
    } else if (!(x == -INFINITY && m == -INFINITY)) {  // (that would be exp(NaN); its term is 0)
        s += (double)expf(x - m);  // a NaN x makes s NaN, and the loss NaN, as on the CPU
    }
}

// Logits of either storage type, as floats.
__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <typename T> union pack16 {  // 16 bytes: 4 floats or 8 bf16
    uint4 v;
    T e[16 / sizeof(T)];
};

// One block per row: one pass finds the row's max and Σ exp(x - max) together (each thread
// its own, then rescaled to the block's max and summed in double in a fixed order), a
// second writes the gradient; the target's entry is p_t - 1 computed in double (p_t near 1
// would lose its digits in float). Rows of 16-byte multiples on 16-byte boundaries (Qwen's
// 151,936) read and write 16 bytes at a time. Two reads and one write of the row. T: float,
// or bf16 (the values read as they are, the gradient rounded to nearest even).
template <typename T>
__global__ void crossentropy_kernel(double *row_loss, T *logits, const int32_t *target, int V, float scale, bool vec) {
    constexpr int W = 16 / sizeof(T);
    __shared__ double sd[32];
    __shared__ float sf[32];
    T *x = logits + (size_t)blockIdx.x * V;
    int t = target[blockIdx.x];
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = from_float<T>(0.0f);
        if (threadIdx.x == 0) row_loss[blockIdx.x] = 0.0;
        return;
    }
    if (t >= V) {  // callers check ids against V; keep a bad one loud, as the CPU does
        if (threadIdx.x == 0) row_loss[blockIdx.x] = NAN;
        return;
    }
    float xt = as_float(x[t]);
    float m = -INFINITY;
    double s = 0;
    uint4 *xv = reinterpret_cast<uint4 *>(x);
    if (vec) {
        for (int j = threadIdx.x; j < V / W; j += blockDim.x) {
            pack16<T> p;
            p.v = xv[j];
#pragma unroll
            for (int c = 0; c < W; c++) online_add(m, s, as_float(p.e[c]));
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) online_add(m, s, as_float(x[j]));
    }
    const float mx = block_max(m, sf);
    // a thread that saw only -inf adds 0 (not 0 * exp(NaN)); a NaN sum stays NaN
    const double sum = block_sum_d(m == -INFINITY && s == 0 ? 0.0 : s * exp((double)m - (double)mx), sd);
    const float k = (float)(scale / sum);
    if (vec) {
        for (int j = threadIdx.x; j < V / W; j += blockDim.x) {
            pack16<T> p, g;
            p.v = xv[j];
#pragma unroll
            for (int c = 0; c < W; c++) {
                const float e = expf(as_float(p.e[c]) - mx);
                g.e[c] = from_float<T>(W * j + c == t ? (float)(((double)e / sum - 1.0) * scale) : e * k);
            }
            xv[j] = g.v;
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float e = expf(as_float(x[j]) - mx);
            x[j] = from_float<T>(j == t ? (float)(((double)e / sum - 1.0) * scale) : e * k);
        }
    }
    if (threadIdx.x == 0) row_loss[blockIdx.x] = (double)mx + log(sum) - (double)xt;
}

// The loss of n rows of logits (T: float or bf16), their gradient left in their place.
template <typename T> static double crossentropy(T *logits, const int32_t *target, int n, int V, float scale) {
    if (n <= 0) return 0;
    double *d_loss = (double *)cuda_scratch(SCRATCH_CE, sizeof(double) * (size_t)n);
    if (!d_loss) return NAN;
    const bool vec = (V * sizeof(T)) % 16 == 0 && ((uintptr_t)logits & 15) == 0;
    crossentropy_kernel<T><<<n, CE_THREADS, 0, cuda_stream()>>>(d_loss, logits, target, V, scale, vec);
    CUDA_LAUNCH_CHECK();
    double *loss = (double *)malloc(sizeof(double) * (size_t)n);
    if (!loss) abort();
    cuda_download(loss, d_loss, sizeof(double) * (size_t)n);
    double total = 0;
    for (int r = 0; r < n; r++) total += loss[r];  // row order, as on the CPU
    free(loss);
    return total;
}

extern "C" double cuda_crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale) {
    return crossentropy(logits, target, n, V, scale);
}

// ---- the head of a training step: product, loss and the two gradient products ----
// With bf16 activations (cuda_act16) the logits are written by the product in bf16, the
// loss reads them and leaves the gradient there in bf16, and both gradient products read
// it as it is: per logit 2 + 2 + 2 bytes written and 2 + 2 + 2 read, where fp32 logits
// took 4 + 4 written, 4 + 4 read, and a rounding pass (4 read, 2 written) before each
// gradient product read its bf16 copy. (linear.cu's header has the column-major view.)
extern "C" double cuda_head_loss_backward(float *dx, float *dw, const float *x, const float *w, const int32_t *target,
                                          void *logits, int n, int C, int V, float scale) {
    if (n <= 0) return 0;
    if (!cuda_act16()) {
        float *z = (float *)logits;
        cuda_linear_forward(z, x, w, NULL, n, C, V);
        cuda_profile_part("linear_forward");
        const double loss = crossentropy(z, target, n, V, scale);
        cuda_profile_part("crossentropy");
        float *const dws[1] = {dw};
        const float *const dz[1] = {z}, *const ws[1] = {w};
        const int ocs[1] = {V};
        cuda_linear_backward_many(1, dx, dws, NULL, dz, x, ws, ocs, n, C);
        cuda_profile_part("linear_backward");
        return loss;
    }
    const cuda_operand weight = {w, false, true, false}, z16 = {logits, true, false, false};
    // logits^T [V, n] = w^T' x^T;  dx^T [C, n] = w dz^T;  dw^T [C, V] += x^T dz
    cuda_product_bf16(true, false, V, n, C, weight, C, cuda_operand{x, false, false, false}, C, 0.0f, logits, true, V,
                      NULL, NULL);
    cuda_profile_part("linear_forward");
    const double loss = crossentropy((__nv_bfloat16 *)logits, target, n, V, scale);
    cuda_profile_part("crossentropy");
    cuda_product_bf16(false, false, C, n, V, weight, C, z16, V, 0.0f, dx, false, C, NULL, NULL);
    cuda_product_bf16(false, true, C, V, n, cuda_operand{x, false, false, false}, C, z16, V, 1.0f, dw, false, C, NULL,
                      NULL);
    cuda_profile_part("linear_backward");
    return loss;
}
