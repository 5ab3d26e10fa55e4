// rmsnorm.cu — RMSNorm forward and backward, and the deterministic column sums that
// the weight and bias gradients of several ops need.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.h"
#include "cuda/act16.h"

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

// Element reads and writes for fp32 and bf16 rows (bf16: rounded to nearest even).
__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void put(float *p, float x) { *p = x; }
__device__ __forceinline__ void put(bf16 *p, float x) { *p = __float2bfloat16(x); }
__device__ __forceinline__ void put4(float *p, float4 x) { *reinterpret_cast<float4 *>(p) = x; }
__device__ __forceinline__ void put4(bf16 *p, float4 x) {
    __nv_bfloat162 a = __floats2bfloat162_rn(x.x, x.y), b = __floats2bfloat162_rn(x.z, x.w);
    uint2 u;
    u.x = *reinterpret_cast<unsigned *>(&a), u.y = *reinterpret_cast<unsigned *>(&b);
    *reinterpret_cast<uint2 *>(p) = u;
}

// One block per row, the row in registers: each thread loads K float4s (all its loads in
// flight at once), the sum of squares goes through a fixed tree (lanes by shuffles, then
// the warps' sums in warp order), and the row is scaled from the registers. The block
// size depends on C alone, so the bits do not depend on N. Decode steps normalise one
// row: a warp striding it (the old kernel) waited for every load in turn (20 us a row).
// sum = a + b when b is given (written to sum, which may alias a or b: every thread reads
// its elements before it writes them), else the row is a.
// out: fp32, or bf16 (the attention block's bf16 activations; 8-byte aligned).
template <int K, typename TO>
__global__ void rmsnorm_rows_kernel(float *sum, TO *out, float *rstd, const float *a, const float *b,
                                    const float *__restrict__ weight, int C, float eps) {
    __shared__ float warp_ss[32];
    const int C4 = C / 4, warps = blockDim.x / 32, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t row = blockIdx.x;
    const bool pdl_late = pdl_trigger();
    pdl_wait(pdl_late);
    const float4 *a4 = reinterpret_cast<const float4 *>(a + row * C);
    const float4 *b4 = b ? reinterpret_cast<const float4 *>(b + row * C) : NULL;
    float4 v[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = threadIdx.x + k * blockDim.x;
        v[k] = c < C4 ? a4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        if (b4 && c < C4) {
            float4 y = b4[c];
            v[k].x += y.x, v[k].y += y.y, v[k].z += y.z, v[k].w += y.w;
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        ss += v[k].x * v[k].x, ss += v[k].y * v[k].y, ss += v[k].z * v[k].z, ss += v[k].w * v[k].w;
        int c = threadIdx.x + k * blockDim.x;
        if (b4 && sum && c < C4) reinterpret_cast<float4 *>(sum + row * C)[c] = v[k];
    }
    ss = warp_sum(ss);
    if (lane == 0) warp_ss[warp] = ss;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; w++) total += warp_ss[w];
    const float s = rsqrtf(total / C + eps);
    const float4 *w4 = reinterpret_cast<const float4 *>(weight);
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = threadIdx.x + k * blockDim.x;
        if (c < C4) {
            float4 wv = w4[c], r;
            r.x = v[k].x * s * wv.x, r.y = v[k].y * s * wv.y, r.z = v[k].z * s * wv.z, r.w = v[k].w * s * wv.w;
            put4(out + row * C + 4 * c, r);
        }
    }
    if (rstd && threadIdx.x == 0) rstd[row] = s;
}

// Rows whose width is not a multiple of 4 (or unaligned): one warp per row, as before.
// x and out fp32 or bf16 (Qwen3's per-head norms of bf16 q and k: rows of head_dim).
template <typename TI, typename TO>
__global__ void rmsnorm_forward_kernel(TO *out, float *rstd, const TI *x, const float *weight, int N, int C,
                                       float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const TI *xr = x + (size_t)row * C;
    float sum = 0.f;
    for (int c = lane; c < C; c += 32) sum += as_float(xr[c]) * as_float(xr[c]);
    sum = warp_sum(sum);
    float s = rsqrtf(sum / C + eps);
    TO *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) put(o + c, as_float(xr[c]) * s * weight[c]);
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

static bool misaligned16(const void *p) { return ((uintptr_t)p & 15) != 0; }

// The block-per-row kernel when the rows allow it (C a multiple of 4, 16-byte aligned
// rows, C <= 4 * 1024 * 4); false: the caller uses the warp-per-row kernel.
template <typename TO>
static bool rows_kernel(float *sum, TO *out, float *rstd, const float *a, const float *b, const float *weight, int N,
                        int C, float eps) {
    if (C % 4 || ((uintptr_t)out & (4 * sizeof(TO) - 1)) || misaligned16(weight) || (sum && misaligned16(sum)))
        return false;
    const int C4 = C / 4;
    int K = (C4 + 1023) / 1024;
    if (K == 3) K = 4;
    if (C4 == 0 || K > 4) return false;
    if (misaligned16(a) || (b && misaligned16(b))) {
        if (!b || !sum) return false;
        // the sum into (aligned) sum first, then the norm of sum: the bits of add + rmsnorm
        if (sum == b) {
            cuda_add_inplace(sum, a, (long)N * C);  // b + a: the same float sums as a + b
        } else {
            if (sum != a) cuda_copy(sum, a, (size_t)N * C * sizeof(float));
            cuda_add_inplace(sum, b, (long)N * C);
        }
        a = sum, b = NULL, sum = NULL;
    }
    const int per = (C4 + K - 1) / K, threads = (per + 31) / 32 * 32;
    auto kernel = K == 1   ? rmsnorm_rows_kernel<1, TO>
                  : K == 2 ? rmsnorm_rows_kernel<2, TO>
                           : rmsnorm_rows_kernel<4, TO>;
    cuda_launch_dependent(kernel, dim3(N), dim3(threads), 0, sum, out, rstd, a, b, weight, C, eps);
    return true;
}

// A row's gradient into dx: fp32 dx is added to; bf16 dx (Qwen3's per-head norms, whose
// gradient only the q and k products read) is written, rounded.
__device__ __forceinline__ void add_or_write(float *p, float v) { *p += v; }
__device__ __forceinline__ void add_or_write(bf16 *p, float v) { *p = __float2bfloat16(v); }

// dx[n,:] += r·(dout·w) - r³·(Σ dout·w·x / C)·x (TD bf16: written), the dot product in
// double as on the CPU. x fp32 or bf16.
template <typename TX, typename TD>
__global__ void rmsnorm_backward_dx_kernel(TD *dx, const float *dout, const TX *x, const float *weight,
                                           const float *rstd, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const TX *xr = x + (size_t)row * C;
    const float *dr = dout + (size_t)row * C;
    double dot = 0;
    for (int c = lane; c < C; c += 32) dot += (double)dr[c] * weight[c] * as_float(xr[c]);
    dot = warp_sum_d(dot);
    float r = rstd[row];
    float kx = (float)((double)r * r * r * dot / C);
    TD *dxr = dx + (size_t)row * C;
    for (int c = lane; c < C; c += 32) add_or_write(dxr + c, r * (dr[c] * weight[c]) - kx * as_float(xr[c]));
}

static unsigned row_blocks(int N) { return cuda_blocks(N, 256 / 32); }

// Four consecutive elements (fp32: 16-byte aligned; bf16: 8-byte aligned).
__device__ __forceinline__ float4 load4(const float *p) { return *reinterpret_cast<const float4 *>(p); }
__device__ __forceinline__ float4 load4(const bf16 *p) {
    uint2 u = *reinterpret_cast<const uint2 *>(p);
    float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.x));
    float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}

enum { NORM_BACKWARD_THREADS = 512, NORM_BACKWARD_PARTS = 1024 };

// The backward of a part of rows_per_part rows (the last part fewer), a block a part, a
// row at a time in registers (K float4s a thread, as rmsnorm_rows_kernel): dx[n] += the
// dx kernel's arithmetic (TD bf16: written; its double dot product summed in a fixed order:
// a thread's floats, lanes, warps in warp order), and, when partial is given, the part's sums of
// dout·x·rstd in double into partial[part, C], added in part order by
// column_finish_kernel. Reading dout and x once here replaces the dx kernel's pass and
// the column sums' second pass over both (the weight gradient of every norm of a step).
template <int K, typename TX, typename TD>
__global__ void __launch_bounds__(NORM_BACKWARD_THREADS)
    rmsnorm_backward_rows_kernel(TD *dx, double *partial, const float *dout, const TX *x, const float *weight,
                                 const float *rstd, int N, int C, int rows_per_part) {
    __shared__ double warp_dot[2][32];  // two rows' turns: a row's writes never meet the last row's reads
    const int C4 = C / 4, warps = blockDim.x / 32, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int n0 = blockIdx.x * rows_per_part, n1 = min(N, n0 + rows_per_part);
    float4 w[K];
    double col[K][4];
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = threadIdx.x + k * blockDim.x;
        w[k] = c < C4 ? load4(weight + 4 * c) : make_float4(0.f, 0.f, 0.f, 0.f);
        col[k][0] = col[k][1] = col[k][2] = col[k][3] = 0;
    }
    for (int n = n0, turn = 0; n < n1; n++, turn ^= 1) {
        const size_t row = (size_t)n * C;
        float4 d[K] = {}, xv[K] = {}, o[K] = {};  // (a thread past C4 uses none of them)
        double dot = 0;
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c >= C4) continue;
            d[k] = load4(dout + row + 4 * c), xv[k] = load4(x + row + 4 * c);
            if (sizeof(TD) == sizeof(float)) o[k] = load4(dx + row + 4 * c);
            dot += (double)d[k].x * w[k].x * xv[k].x, dot += (double)d[k].y * w[k].y * xv[k].y;
            dot += (double)d[k].z * w[k].z * xv[k].z, dot += (double)d[k].w * w[k].w * xv[k].w;
        }
        dot = warp_sum_d(dot);
        if (lane == 0) warp_dot[turn][warp] = dot;
        __syncthreads();
        double total = 0;
        for (int i = 0; i < warps; i++) total += warp_dot[turn][i];
        const float r = rstd[n];
        const float kx = (float)((double)r * r * r * total / C);
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c >= C4) continue;
            o[k].x += r * (d[k].x * w[k].x) - kx * xv[k].x, o[k].y += r * (d[k].y * w[k].y) - kx * xv[k].y;
            o[k].z += r * (d[k].z * w[k].z) - kx * xv[k].z, o[k].w += r * (d[k].w * w[k].w) - kx * xv[k].w;
            put4(dx + row + 4 * c, o[k]);
            if (!partial) continue;
            col[k][0] += (double)d[k].x * ((double)xv[k].x * r), col[k][1] += (double)d[k].y * ((double)xv[k].y * r);
            col[k][2] += (double)d[k].z * ((double)xv[k].z * r), col[k][3] += (double)d[k].w * ((double)xv[k].w * r);
        }
    }
    if (!partial) return;
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int c = threadIdx.x + k * blockDim.x;
        if (c >= C4) continue;
        double *p = partial + (size_t)blockIdx.x * C + 4 * c;
        p[0] = col[k][0], p[1] = col[k][1], p[2] = col[k][2], p[3] = col[k][3];
    }
}

__global__ void column_finish_kernel(float *out, const double *partial, int parts, int C);

// The one-pass backward when the rows allow it (C a multiple of 4 and at most 4 *
// NORM_BACKWARD_THREADS float4s, dout and weight 16-byte aligned, x and dx aligned to 4 of
// their elements); false: the caller takes the dx kernel and the column sums. The parts' size
// depends on N and C alone (at least 16 rows; at most NORM_BACKWARD_PARTS parts, times 512 /
// the block's threads), so the bits do not depend on the card.
template <typename TX, typename TD>
static bool backward_rows(TD *dx, float *dweight, const float *dout, const TX *x, const float *weight,
                          const float *rstd, int N, int C) {
    if (!dx || C % 4 || ((uintptr_t)dx & (4 * sizeof(TD) - 1)) || misaligned16(dout) || misaligned16(weight) ||
        ((uintptr_t)x & (4 * sizeof(TX) - 1)))
        return false;
    const int C4 = C / 4, K = (C4 + NORM_BACKWARD_THREADS - 1) / NORM_BACKWARD_THREADS;
    if (C4 == 0 || K > 4) return false;
    // at most NORM_BACKWARD_PARTS blocks of 512 threads' worth: narrow rows (Qwen3's per-head
    // norms, C = 128: a warp a block) get more blocks, not longer parts
    const int per = (C4 + K - 1) / K, threads = (per + 31) / 32 * 32;
    const int cap = NORM_BACKWARD_PARTS * (NORM_BACKWARD_THREADS / threads);
    const int rows = max(16, (N + cap - 1) / cap), parts = (N + rows - 1) / rows;
    double *partial = NULL;
    if (dweight) {
        partial = (double *)cuda_scratch(SCRATCH_COLSUM, (size_t)parts * C * sizeof(double));
        if (!partial) return false;  // out of memory (noted): the two kernels, whose scratch is smaller
    }
    auto kernel = K == 1   ? rmsnorm_backward_rows_kernel<1, TX, TD>
                  : K == 2 ? rmsnorm_backward_rows_kernel<2, TX, TD>
                  : K == 3 ? rmsnorm_backward_rows_kernel<3, TX, TD>
                           : rmsnorm_backward_rows_kernel<4, TX, TD>;
    kernel<<<parts, threads, 0, cuda_stream()>>>(dx, partial, dout, x, weight, rstd, N, C, rows);
    CUDA_LAUNCH_CHECK();
    if (dweight) {
        column_finish_kernel<<<cuda_blocks(C, 256), 256, 0, cuda_stream()>>>(dweight, partial, parts, C);
        CUDA_LAUNCH_CHECK();
    }
    return true;
}

extern "C" void cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C,
                                     float eps) {
    if (N <= 0 || rows_kernel(NULL, out, rstd, x, NULL, weight, N, C, eps)) return;
    rmsnorm_forward_kernel<float, float><<<row_blocks(N), 256, 0, cuda_stream()>>>(out, rstd, x, weight, N, C, eps);
    CUDA_LAUNCH_CHECK();
}

void cuda_rmsnorm_forward16(void *out, float *rstd, const void *x, bool x16, const float *weight, int N, int C,
                            float eps) {
    if (N <= 0) return;
    bf16 *o = (bf16 *)out;
    if (x16) {
        rmsnorm_forward_kernel<bf16, bf16>
            <<<row_blocks(N), 256, 0, cuda_stream()>>>(o, rstd, (const bf16 *)x, weight, N, C, eps);
    } else {
        if (rows_kernel(NULL, o, rstd, (const float *)x, NULL, weight, N, C, eps)) return;
        rmsnorm_forward_kernel<float, bf16>
            <<<row_blocks(N), 256, 0, cuda_stream()>>>(o, rstd, (const float *)x, weight, N, C, eps);
    }
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b,
                                         const float *weight, int N, int C, float eps) {
    if (N <= 0 || rows_kernel(sum, out, rstd, a, b, weight, N, C, eps)) return;
    add_rmsnorm_forward_kernel<<<row_blocks(N), 256, 0, cuda_stream()>>>(sum, out, rstd, a, b, weight, N, C, eps);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x,
                                      const float *weight, const float *rstd, int N, int C) {
    if (N <= 0 || backward_rows(dx, dweight, dout, x, weight, rstd, N, C)) return;
    if (dx) {
        rmsnorm_backward_dx_kernel<float, float>
            <<<row_blocks(N), 256, 0, cuda_stream()>>>(dx, dout, x, weight, rstd, N, C);
        CUDA_LAUNCH_CHECK();
    }
    if (dweight) cuda_column_sum(dweight, dout, x, rstd, N, C);
}

template <typename TA, typename TB>
static void column_sum(float *out, const TA *a, const TB *b, const float *r, int N, int C, int ld);

void cuda_rmsnorm16_backward(void *dx, float *dweight, const float *dout, const void *x, const float *weight,
                             const float *rstd, int N, int C) {
    const bf16 *x16 = (const bf16 *)x;
    bf16 *dx16 = (bf16 *)dx;
    if (N <= 0 || backward_rows(dx16, dweight, dout, x16, weight, rstd, N, C)) return;
    if (dx) {
        rmsnorm_backward_dx_kernel<bf16, bf16>
            <<<row_blocks(N), 256, 0, cuda_stream()>>>(dx16, dout, x16, weight, rstd, N, C);
        CUDA_LAUNCH_CHECK();
    }
    if (dweight) column_sum(dweight, dout, x16, rstd, N, C, C);
}

// ---- column sums ----

enum { COL_TX = 32, COL_TY = 8, ROWS_PER_PART = 256 };

// partial[p, c] = Σ over rows n of part p of a[n,c] (· b[n,c] · r[n] when b is given), in
// double; rows ld elements apart. Block (32, 8): lanes take consecutive columns
// (coalesced), the 8 row groups are added in a fixed order through shared memory.
template <typename TA, typename TB>
__global__ void column_partial_kernel(double *partial, const TA *a, const TB *b, const float *r, int N, int C,
                                      int ld) {
    __shared__ double acc[COL_TY][COL_TX];
    int c = blockIdx.x * COL_TX + threadIdx.x, p = blockIdx.y;
    int n0 = p * ROWS_PER_PART, n1 = min(N, n0 + ROWS_PER_PART);
    double s = 0;
    if (c < C)
        for (int n = n0 + threadIdx.y; n < n1; n += COL_TY) {
            double v = as_float(a[(size_t)n * ld + c]);
            if (b) v *= (double)as_float(b[(size_t)n * ld + c]) * r[n];
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

template <typename TA, typename TB>
static void column_sum(float *out, const TA *a, const TB *b, const float *r, int N, int C, int ld) {
    if (N <= 0 || C <= 0) return;
    int parts = (N + ROWS_PER_PART - 1) / ROWS_PER_PART;
    double *partial = (double *)cuda_scratch(SCRATCH_COLSUM, (size_t)parts * C * sizeof(double));
    if (!partial) return;
    dim3 grid(cuda_blocks(C, COL_TX), parts), block(COL_TX, COL_TY);
    column_partial_kernel<TA, TB><<<grid, block, 0, cuda_stream()>>>(partial, a, b, r, N, C, ld);
    CUDA_LAUNCH_CHECK();
    column_finish_kernel<<<cuda_blocks(C, 256), 256, 0, cuda_stream()>>>(out, partial, parts, C);
    CUDA_LAUNCH_CHECK();
}

void cuda_column_sum(float *out, const float *a, const float *b, const float *r, int N, int C) {
    column_sum(out, a, b, r, N, C, C);
}

void cuda_column_sum16(float *out, const void *a, int N, int C, int ld) {
    column_sum(out, (const bf16 *)a, (const float *)NULL, NULL, N, C, ld);
}
