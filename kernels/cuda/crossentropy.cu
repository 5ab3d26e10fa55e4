// crossentropy.cu — softmax cross-entropy on a chunk of logits, fused with its gradient:
// the logits are overwritten by (softmax - onehot(target)) · scale, one block per row.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

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

// One block per row: one pass finds the row's max and Σ exp(x - max) together (each thread
// its own, then rescaled to the block's max and summed in double in a fixed order), a
// second writes the gradient; the target's entry is p_t - 1 computed in double (p_t near 1
// would lose its digits in float). Rows of 4-float multiples on 16-byte boundaries (Qwen's
// 151,936) read and write float4s. Two reads and one write of the row.
__global__ void crossentropy_kernel(double *row_loss, float *logits, const int32_t *target, int V, float scale,
                                    bool vec4) {
    __shared__ double sd[32];
    __shared__ float sf[32];
    float *x = logits + (size_t)blockIdx.x * V;
    int t = target[blockIdx.x];
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = 0.0f;
        if (threadIdx.x == 0) row_loss[blockIdx.x] = 0.0;
        return;
    }
    if (t >= V) {  // callers check ids against V; keep a bad one loud, as the CPU does
        if (threadIdx.x == 0) row_loss[blockIdx.x] = NAN;
        return;
    }
    float xt = x[t];
    float m = -INFINITY;
    double s = 0;
    if (vec4) {
        const float4 *x4 = reinterpret_cast<const float4 *>(x);
        for (int j = threadIdx.x; j < V / 4; j += blockDim.x) {
            const float4 v = x4[j];
            online_add(m, s, v.x), online_add(m, s, v.y), online_add(m, s, v.z), online_add(m, s, v.w);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) online_add(m, s, x[j]);
    }
    const float mx = block_max(m, sf);
    // a thread that saw only -inf adds 0 (not 0 * exp(NaN)); a NaN sum stays NaN
    const double sum = block_sum_d(m == -INFINITY && s == 0 ? 0.0 : s * exp((double)m - (double)mx), sd);
    const float k = (float)(scale / sum);
    if (vec4) {
        float4 *x4 = reinterpret_cast<float4 *>(x);
        for (int j = threadIdx.x; j < V / 4; j += blockDim.x) {
            const float4 v = x4[j];
            float e[4] = {expf(v.x - mx), expf(v.y - mx), expf(v.z - mx), expf(v.w - mx)}, g[4];
#pragma unroll
            for (int c = 0; c < 4; c++)
                g[c] = 4 * j + c == t ? (float)(((double)e[c] / sum - 1.0) * scale) : e[c] * k;
            x4[j] = make_float4(g[0], g[1], g[2], g[3]);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float e = expf(x[j] - mx);
            x[j] = j == t ? (float)(((double)e / sum - 1.0) * scale) : e * k;
        }
    }
    if (threadIdx.x == 0) row_loss[blockIdx.x] = (double)mx + log(sum) - (double)xt;
}

extern "C" double cuda_crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale) {
    if (n <= 0) return 0;
    double *d_loss = (double *)cuda_scratch(SCRATCH_CE, sizeof(double) * (size_t)n);
    if (!d_loss) return NAN;
    const bool vec4 = V % 4 == 0 && ((uintptr_t)logits & 15) == 0;
    crossentropy_kernel<<<n, CE_THREADS, 0, cuda_stream()>>>(d_loss, logits, target, V, scale, vec4);
    CUDA_LAUNCH_CHECK();
    double *loss = (double *)malloc(sizeof(double) * (size_t)n);
    if (!loss) abort();
    cuda_download(loss, d_loss, sizeof(double) * (size_t)n);
    double total = 0;
    for (int r = 0; r < n; r++) total += loss[r];  // row order, as on the CPU
    free(loss);
    return total;
}
