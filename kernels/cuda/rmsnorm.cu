// RMSNorm forward on the GPU: one warp per row, fp32 accumulation.
#include "cuda/cuda_ops.h"

#include <cstdio>
#include <cuda_runtime.h>

static int report(cudaError_t e, char *err, int cap) {
    if (e == cudaSuccess) return 0;
    if (err && cap > 0) snprintf(err, (size_t)cap, "%s", cudaGetErrorString(e));
    return -1;
}

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" int cuda_device_describe(char *buf, int cap) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return -1;
    snprintf(buf, (size_t)cap, "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1 << 30));
    return 0;
}

__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *x, const float *weight, int N, int C,
                                       float eps) {
    int warps_per_block = blockDim.x / 32;
    int row = blockIdx.x * warps_per_block + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C;
    float sum = 0.f;
    for (int c = lane; c < C; c += 32) sum += xr[c] * xr[c];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    float s = rsqrtf(sum / C + eps);
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = xr[c] * s * weight[c];
    if (rstd && lane == 0) rstd[row] = s;
}

extern "C" int cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C,
                                    float eps, char *err, int err_cap) {
    const int block = 256, rows_per_block = block / 32;
    int grid = (N + rows_per_block - 1) / rows_per_block;
    if (grid > 0) rmsnorm_forward_kernel<<<grid, block>>>(out, rstd, x, weight, N, C, eps);
    return report(cudaGetLastError(), err, err_cap);
}
