// optim.cu — AdamW and the gradient norm on the device, with the CPU's arithmetic.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"

#include <cstdlib>

// torch's single-tensor AdamW in float: decay first, then the moments, then the step.
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float decay_factor, float b1,
                             float b2, float step_size, float bc2_sqrt, float eps) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float pi = p[i] * decay_factor;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi, v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

extern "C" void cuda_adamw_span(float *p, const float *g, float *m, float *v, size_t n, float decay_factor, float b1,
                                float b2, float step_size, float bc2_sqrt, float eps) {
    if (!n) return;
    cuda_weights_changed();
    adamw_kernel<<<cuda_blocks((long)n, 256), 256, 0, cuda_stream()>>>(p, g, m, v, n, decay_factor, b1, b2, step_size,
                                                                       bc2_sqrt, eps);
    CUDA_LAUNCH_CHECK();
}

enum { SQ_BLOCK = 1 << 16, SQ_THREADS = 512 };

// part[b] = Σ x[i]² over block b's fixed range, in double: per-thread strided sums, then a
// shared-memory tree in a fixed order.
__global__ void sum_squares_kernel(double *part, const float *x, size_t n) {
    __shared__ double s[SQ_THREADS];
    size_t i0 = (size_t)blockIdx.x * SQ_BLOCK, i1 = i0 + SQ_BLOCK < n ? i0 + SQ_BLOCK : n;
    double acc = 0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += SQ_THREADS) acc += (double)x[i] * x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int w = SQ_THREADS / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = s[0];
}

extern "C" double cuda_sum_squares(const float *x, size_t n) {
    if (!n) return 0;
    size_t nb = (n + SQ_BLOCK - 1) / SQ_BLOCK;
    double *d_part = (double *)cuda_scratch(SCRATCH_NORM, nb * sizeof(double));
    if (!d_part) return 0;
    sum_squares_kernel<<<(unsigned)nb, SQ_THREADS, 0, cuda_stream()>>>(d_part, x, n);
    CUDA_LAUNCH_CHECK();
    double *part = (double *)malloc(nb * sizeof(double));
    if (!part) abort();
    cuda_download(part, d_part, nb * sizeof(double));
    double sum = 0;
    for (size_t b = 0; b < nb; b++) sum += part[b];
    free(part);
    return sum;
}
