// rmsnorm.cu — RMSNorm forward and backward, and the deterministic column sums that
// the weight and bias gradients of several ops need.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.h"

// One warp per row: rows are at most a few thousand channels, so a warp's 32 lanes
// stride the row and a shuffle tree finishes the sum.
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *x, const float *weight, int N, int C,
                                       float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C;
    float sum = 0.f;
    for (int c = lane; c < C; c += 32) sum += xr[c] * xr[c];
    sum = warp_sum(sum);
    float s = rsqrtf(sum / C + eps);
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = xr[c] * s * weight[c];
    if (rstd && lane == 0) rstd[row] = s;
}

// sum = a + b, then rmsnorm_forward_kernel's arithmetic on sum (the same bits as the two
// ops one after the other). Each lane reads back only what it wrote: sum may alias a or b.
__global__ void add_rmsnorm_forward_kernel(float *sum, float *out, float *rstd, const float *a, const float *b,
                                           const float *weight, int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *ar = a + (size_t)row * C, *br = b + (size_t)row * C;
    float *sr = sum + (size_t)row * C;
    float ss = 0.f;
    for (int c = lane; c < C; c += 32) {
        float v = ar[c] + br[c];
        sr[c] = v;
        ss += v * v;
    }
    ss = warp_sum(ss);
    float s = rsqrtf(ss / C + eps);
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = sr[c] * s * weight[c];
    if (rstd && lane == 0) rstd[row] = s;
}

// dx[n,:] += r·(dout·w) - r³·(Σ dout·w·x / C)·x, the dot product in double as on the CPU.
__global__ void rmsnorm_backward_dx_kernel(float *dx, const float *dout, const float *x, const float *weight,
                                           const float *rstd, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C, *dr = dout + (size_t)row * C;
    double dot = 0;
    for (int c = lane; c < C; c += 32) dot += (double)dr[c] * weight[c] * xr[c];
    dot = warp_sum_d(dot);
    float r = rstd[row];
    float kx = (float)((double)r * r * r * dot / C);
    float *dxr = dx + (size_t)row * C;
    for (int c = lane; c < C; c += 32) dxr[c] += r * (dr[c] * weight[c]) - kx * xr[c];
}

static unsigned row_blocks(int N) { return cuda_blocks(N, 256 / 32); }

extern "C" void cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C,
                                     float eps) {
    if (N <= 0) return;
    rmsnorm_forward_kernel<<<row_blocks(N), 256, 0, cuda_stream()>>>(out, rstd, x, weight, N, C, eps);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b,
                                         const float *weight, int N, int C, float eps) {
    if (N <= 0) return;
    add_rmsnorm_forward_kernel<<<row_blocks(N), 256, 0, cuda_stream()>>>(sum, out, rstd, a, b, weight, N, C, eps);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x,
                                      const float *weight, const float *rstd, int N, int C) {
    if (N <= 0) return;
    if (dx) {
        rmsnorm_backward_dx_kernel<<<row_blocks(N), 256, 0, cuda_stream()>>>(dx, dout, x, weight, rstd, N, C);
        CUDA_LAUNCH_CHECK();
    }
    if (dweight) cuda_column_sum(dweight, dout, x, rstd, N, C);
}

// ---- column sums ----

enum { COL_TX = 32, COL_TY = 8, ROWS_PER_PART = 256 };

// partial[p, c] = Σ over rows n of part p of a[n,c] (· b[n,c] · r[n] when b is given), in
// double. Block (32, 8): lanes take consecutive columns (coalesced), the 8 row groups are
// added in a fixed order through shared memory.
__global__ void column_partial_kernel(double *partial, const float *a, const float *b, const float *r, int N, int C) {
    __shared__ double acc[COL_TY][COL_TX];
    int c = blockIdx.x * COL_TX + threadIdx.x, p = blockIdx.y;
    int n0 = p * ROWS_PER_PART, n1 = min(N, n0 + ROWS_PER_PART);
    double s = 0;
    if (c < C)
        for (int n = n0 + threadIdx.y; n < n1; n += COL_TY) {
            double v = a[(size_t)n * C + c];
            if (b) v *= (double)b[(size_t)n * C + c] * r[n];
            s += v;
        }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int y = 1; y < COL_TY; y++) s += acc[y][threadIdx.x];
        partial[(size_t)p * C + c] = s;
    }
}

__global__ void column_finish_kernel(float *out, const double *partial, int parts, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0;
    for (int p = 0; p < parts; p++) s += partial[(size_t)p * C + c];
    out[c] += (float)s;
}

void cuda_column_sum(float *out, const float *a, const float *b, const float *r, int N, int C) {
    if (N <= 0 || C <= 0) return;
    int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART;
    double *partial = (double *)cuda_scratch(SCRATCH_COLSUM, (size_t)parts * C * sizeof(double));
    if (!partial) return;
    dim3 grid(cuda_blocks(C, COL_TX), parts), block(COL_TX, COL_TY);
    column_partial_kernel<<<grid, block, 0, cuda_stream()>>>(partial, a, b, r, N, C);
    CUDA_LAUNCH_CHECK();
    column_finish_kernel<<<cuda_blocks(C, 256), 256, 0, cuda_stream()>>>(out, partial, parts, C);
    CUDA_LAUNCH_CHECK();
}
