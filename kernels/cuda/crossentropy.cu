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

// The row's max, Σ exp(x - max) in double, then one write per element; the target's
// entry is p_t - 1 computed in double (p_t near 1 would lose its digits in float).
__global__ void crossentropy_kernel(double *row_loss, float *logits, const int32_t *target, int V, float scale) {
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
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m, sf);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(x[j] - m);
    double sum = block_sum_d(s, sd);
    float k = (float)(scale / sum);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float e = expf(x[j] - m);
        x[j] = j == t ? (float)(((double)e / sum - 1.0) * scale) : e * k;
    }
    if (threadIdx.x == 0) row_loss[blockIdx.x] = (double)m + log(sum) - (double)xt;
}

extern "C" double cuda_crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale) {
    if (n <= 0) return 0;
    double *d_loss = (double *)cuda_scratch(SCRATCH_CE, sizeof(double) * (size_t)n);
    if (!d_loss) return NAN;
    crossentropy_kernel<<<n, CE_THREADS, 0, cuda_stream()>>>(d_loss, logits, target, V, scale);
    CUDA_LAUNCH_CHECK();
    double *loss = (double *)malloc(sizeof(double) * (size_t)n);
    if (!loss) abort();
    cuda_download(loss, d_loss, sizeof(double) * (size_t)n);
    double total = 0;
    for (int r = 0; r < n; r++) total += loss[r];  // row order, as on the CPU
    free(loss);
    return total;
}
