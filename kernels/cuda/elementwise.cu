// elementwise.cu — the ops that touch each element once: embedding, RoPE, SwiGLU,
// residual add, row gather/scatter.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/act16.h"
#include "cuda/rope.h"

#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

enum { THREADS = 256 };

// ---- embedding ----

__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table, int N, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    long n = i / C, c = i % C;
    out[i] = table[(size_t)ids[n] * C + c];
}

extern "C" void cuda_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    if (N <= 0) return;
    embedding_forward_kernel<<<cuda_blocks((long)N * C, THREADS), THREADS, 0, cuda_stream()>>>(out, ids, table, N, C);
    CUDA_LAUNCH_CHECK();
}

// One block column per distinct token id: its rows of dout are added in increasing n,
// the same order as the CPU, with no atomics (an id may appear thousands of times).
// order [N] lists token positions grouped by id; start [U+1] bounds id u's group.
__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int32_t *uniq, const int32_t *start,
                                          const int32_t *order, int C) {
    int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *row = dtable + (size_t)uniq[u] * C + c;
    float acc = *row;
    for (int k = start[u]; k < start[u + 1]; k++) acc += dout[(size_t)order[k] * C + c];
    *row = acc;
}

// The grouping is a counting sort of the ids on the host: N ids are a few KB to copy,
// and a stable sort keeps positions in increasing order within a group.
extern "C" void cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    if (N <= 0) return;
    int32_t *h_ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)N * 3 + sizeof(int32_t));
    if (!h_ids) abort();
    cuda_download(h_ids, ids, sizeof(int32_t) * (size_t)N);
    int32_t max_id = 0;
    for (int n = 0; n < N; n++) max_id = h_ids[n] > max_id ? h_ids[n] : max_id;
    int32_t *count = (int32_t *)calloc((size_t)max_id + 2, sizeof(int32_t));
    if (!count) abort();
    for (int n = 0; n < N; n++) count[h_ids[n] + 1]++;
    for (int32_t v = 0; v <= max_id; v++) count[v + 1] += count[v];  // count[v]: first slot of id v
    int32_t *order = h_ids + N, *packed = h_ids + 2 * N;  // packed: uniq [U], then start [U+1]
    int32_t *fill = (int32_t *)malloc(sizeof(int32_t) * ((size_t)max_id + 1));
    if (!fill) abort();
    memcpy(fill, count, sizeof(int32_t) * ((size_t)max_id + 1));
    for (int n = 0; n < N; n++) order[fill[h_ids[n]]++] = n;
    int U = 0;
    for (int32_t v = 0; v <= max_id; v++)
        if (count[v + 1] > count[v]) U++;
    int32_t *dev = (int32_t *)cuda_scratch(SCRATCH_EMBEDDING, sizeof(int32_t) * ((size_t)N + 2 * (size_t)U + 1));
    if (dev) {
        int32_t *uniq = packed, *start = (int32_t *)malloc(sizeof(int32_t) * ((size_t)U + 1));
        if (!start) abort();
        int u = 0;
        for (int32_t v = 0; v <= max_id; v++)
            if (count[v + 1] > count[v]) uniq[u] = v, start[u] = count[v], u++;
        start[U] = N;
        // device layout: order [N] | uniq [U] | start [U+1]
        cuda_upload(dev, order, sizeof(int32_t) * (size_t)N);
        cuda_upload(dev + N, uniq, sizeof(int32_t) * (size_t)U);
        cuda_upload(dev + N + U, start, sizeof(int32_t) * ((size_t)U + 1));
        dim3 grid(U, cuda_blocks(C, THREADS));
        embedding_backward_kernel<<<grid, THREADS, 0, cuda_stream()>>>(dtable, dout, dev + N, dev + N + U, dev, C);
        CUDA_LAUNCH_CHECK();
        // The uploads above are synchronous, but the kernel reads scratch: nothing may
        // reuse the host arrays after this point, and they are freed only now.
        free(start);
    }
    free(fill), free(count), free(h_ids);
}

// ---- RoPE ----

// One thread per (token, head, i < HD/2), rotating as rope.h does.
__device__ __forceinline__ float as_float(float x) { return x; }
__device__ __forceinline__ float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void put(float *p, float x) { *p = x; }
__device__ __forceinline__ void put(__nv_bfloat16 *p, float x) { *p = __float2bfloat16(x); }

// x fp32, or bf16 (the attention block's bf16 q and k: fp32 arithmetic, rounded as stored).
template <typename T>
__global__ void rope_kernel(T *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD, float sign) {
    int half = HD / 2;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * H * half) return;
    int f = (int)(i % half);
    long nh = i / half;
    int n = (int)(nh / H);
    T *x1 = x + nh * HD + f, *x2 = x1 + half;
    float a1 = as_float(*x1), a2 = as_float(*x2);
    rope_rotate(a1, a2, rope_angle_of(pos[n], inv_freq[f], sign));
    put(x1, a1);
    put(x2, a2);
}

template <typename T>
static void rope(T *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD, float sign) {
    long n = (long)N * H * (HD / 2);
    if (n <= 0) return;
    rope_kernel<T><<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream()>>>(x, pos, inv_freq, N, H, HD, sign);
    CUDA_LAUNCH_CHECK();
}

void cuda_rope16_forward(void *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD) {
    rope((__nv_bfloat16 *)x, pos, inv_freq, N, H, HD, 1.0f);
}

// A thread a unit of a token's row of qkv: four pairs (x[f + j], x[f + j + HD/2]) of a q or k
// head, rotated (two 8-byte loads, two stores), or eight elements of v copied (16 bytes).
// Units in order: q's NH·HD/8, k's KVH·HD/8, v's KVH·HD/8.
__global__ void qkv_split_rope_kernel(__nv_bfloat16 *q, __nv_bfloat16 *k, __nv_bfloat16 *v, const __nv_bfloat16 *qkv,
                                      const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HD) {
    const int Q = NH * HD, KV = KVH * HD, L = Q + 2 * KV, half = HD / 2, pair_units = HD / 8;
    const int units = (NH + 2 * KVH) * pair_units;
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * units) return;
    const int n = (int)(i / units), u = (int)(i % units);
    const __nv_bfloat16 *row = qkv + (size_t)n * L;
    if (u >= (NH + KVH) * pair_units) {  // v
        const int at = (u - (NH + KVH) * pair_units) * 8;
        *reinterpret_cast<uint4 *>(v + (size_t)n * KV + at) = *reinterpret_cast<const uint4 *>(row + Q + KV + at);
        return;
    }
    const bool is_q = u < NH * pair_units;
    const int h = (is_q ? u : u - NH * pair_units) / pair_units, f = (u % pair_units) * 4;
    const __nv_bfloat16 *src = row + (is_q ? 0 : Q) + h * HD + f;
    __nv_bfloat16 *dst = (is_q ? q + (size_t)n * Q : k + (size_t)n * KV) + h * HD + f;
    uint2 lo = *reinterpret_cast<const uint2 *>(src), hi = *reinterpret_cast<const uint2 *>(src + half);
    __nv_bfloat16 *x1 = reinterpret_cast<__nv_bfloat16 *>(&lo), *x2 = reinterpret_cast<__nv_bfloat16 *>(&hi);
    const int p = pos[n];
    for (int j = 0; j < 4; j++) {
        float a1 = __bfloat162float(x1[j]), a2 = __bfloat162float(x2[j]);
        rope_rotate(a1, a2, rope_angle_of(p, inv_freq[f + j], 1.0f));
        x1[j] = __float2bfloat16(a1), x2[j] = __float2bfloat16(a2);
    }
    *reinterpret_cast<uint2 *>(dst) = lo;
    *reinterpret_cast<uint2 *>(dst + half) = hi;
}

bool cuda_qkv_split_rope16(void *q, void *k, void *v, const void *qkv, const int32_t *pos, const float *inv_freq,
                           int N, int NH, int KVH, int HD) {
    const uintptr_t any = (uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)qkv;
    if (HD % 8 || any % 16) return false;
    const long n = (long)N * (NH + 2 * KVH) * (HD / 8);
    if (n <= 0) return true;
    qkv_split_rope_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream()>>>(
        (__nv_bfloat16 *)q, (__nv_bfloat16 *)k, (__nv_bfloat16 *)v, (const __nv_bfloat16 *)qkv, pos, inv_freq, N, NH,
        KVH, HD);
    CUDA_LAUNCH_CHECK();
    return true;
}

// A warp a head of q or k of one token's row of qkv, a lane the elements c = lane + 32 j
// (rmsnorm_forward_kernel's order for its sum of squares and its butterfly), so with HD a
// multiple of 64 a lane holds both halves of each of its pairs (c and c + HD/2). Each value
// is rounded as the norm stores it, then rotated and rounded as RoPE stores it. The
// block's warps then copy v's row.
template <int J>  // J = HD / 32
__global__ void qkv_split_norm_rope_kernel(__nv_bfloat16 *q_raw, __nv_bfloat16 *k_raw, float *q_rstd, float *k_rstd,
                                           __nv_bfloat16 *q, __nv_bfloat16 *k, __nv_bfloat16 *v,
                                           const __nv_bfloat16 *qkv, const float *q_norm, const float *k_norm,
                                           float eps, const int32_t *pos, const float *inv_freq, int NH, int KVH,
                                           bool v16) {
    constexpr int HD = 32 * J;
    const int n = blockIdx.x, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int Q = NH * HD, KV = KVH * HD;
    const __nv_bfloat16 *row = qkv + (size_t)n * (Q + 2 * KV);
    const int p = pos[n];
    for (int h = threadIdx.x / 32; h < NH + KVH; h += warps) {
        const bool is_q = h < NH;
        const int head = is_q ? h : h - NH;
        const size_t at = is_q ? (size_t)n * Q + head * HD : (size_t)n * KV + head * HD;
        const __nv_bfloat16 *src = row + (is_q ? 0 : Q) + head * HD;
        __nv_bfloat16 *raw = (is_q ? q_raw : k_raw) + at;
        float x[J], sum = 0.f;
#pragma unroll
        for (int j = 0; j < J; j++) {
            const __nv_bfloat16 b = src[lane + 32 * j];
            raw[lane + 32 * j] = b;
            x[j] = __bfloat162float(b);
            sum += x[j] * x[j];
        }
        sum = warp_sum(sum);
        const float s = rsqrtf(sum / HD + eps);
        if (lane == 0) (is_q ? q_rstd : k_rstd)[(size_t)n * (is_q ? NH : KVH) + head] = s;
        const float *w = is_q ? q_norm : k_norm;
#pragma unroll
        for (int j = 0; j < J; j++) x[j] = __bfloat162float(__float2bfloat16(x[j] * s * w[lane + 32 * j]));
        __nv_bfloat16 *dst = (is_q ? q : k) + at;
#pragma unroll
        for (int j = 0; j < J / 2; j++) {  // the pair (f, f + HD/2), f = lane + 32 j
            const int f = lane + 32 * j;
            float a1 = x[j], a2 = x[j + J / 2];
            rope_rotate(a1, a2, rope_angle_of(p, inv_freq[f], 1.0f));
            dst[f] = __float2bfloat16(a1), dst[f + HD / 2] = __float2bfloat16(a2);
        }
    }
    if (v16) {  // 16 bytes at a time
        for (int u = threadIdx.x; u < KV / 8; u += blockDim.x)
            reinterpret_cast<uint4 *>(v + (size_t)n * KV)[u] = reinterpret_cast<const uint4 *>(row + Q + KV)[u];
    } else {
        for (int u = threadIdx.x; u < KV; u += blockDim.x) v[(size_t)n * KV + u] = row[Q + KV + u];
    }
}

bool cuda_qkv_split_norm_rope16(void *q_raw, void *k_raw, float *q_rstd, float *k_rstd, void *q, void *k, void *v,
                                const void *qkv, const float *q_norm, const float *k_norm, float eps,
                                const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HD) {
    if (HD != 64 && HD != 128 && HD != 256) return false;
    if (N <= 0) return true;
    const int warps = NH + KVH < 8 ? NH + KVH : 8;
    const bool v16 = !(((uintptr_t)v | (uintptr_t)qkv) % 16);  // (rows of Q + 2 KV and KV: multiples of 8 here)
    auto kernel = HD == 64 ? qkv_split_norm_rope_kernel<2>
                  : HD == 128 ? qkv_split_norm_rope_kernel<4>
                              : qkv_split_norm_rope_kernel<8>;
    kernel<<<N, 32 * warps, 0, cuda_stream()>>>((__nv_bfloat16 *)q_raw, (__nv_bfloat16 *)k_raw, q_rstd, k_rstd,
                                                (__nv_bfloat16 *)q, (__nv_bfloat16 *)k, (__nv_bfloat16 *)v,
                                                (const __nv_bfloat16 *)qkv, q_norm, k_norm, eps, pos, inv_freq, NH,
                                                KVH, v16);
    CUDA_LAUNCH_CHECK();
    return true;
}

extern "C" void cuda_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD) {
    rope(x, pos, inv_freq, N, H, HD, 1.0f);
}

extern "C" void cuda_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int H, int HD) {
    rope(dx, pos, inv_freq, N, H, HD, -1.0f);
}

// ---- bf16 <-> fp32 ----

__global__ void round_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}
// Four at a time (a 16-byte load, an 8-byte store): the same bits, fewer instructions a byte.
__global__ void round_bf16_x4_kernel(__nv_bfloat16 *out, const float *in, size_t n4) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 x = reinterpret_cast<const float4 *>(in)[i];
    __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
    uint2 u;
    u.x = *reinterpret_cast<unsigned *>(&lo), u.y = *reinterpret_cast<unsigned *>(&hi);
    reinterpret_cast<uint2 *>(out)[i] = u;
}
__global__ void widen_bf16_kernel(float *out, const __nv_bfloat16 *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(in[i]);
}

void cuda_round_bf16(void *out, const float *in, size_t n) {
    if (n == 0) return;
    if (n % 4 == 0 && ((uintptr_t)in & 15) == 0 && ((uintptr_t)out & 7) == 0)
        round_bf16_x4_kernel<<<cuda_blocks((long)(n / 4), THREADS), THREADS, 0, cuda_stream()>>>(
            (__nv_bfloat16 *)out, in, n / 4);
    else
        round_bf16_kernel<<<cuda_blocks((long)n, THREADS), THREADS, 0, cuda_stream()>>>((__nv_bfloat16 *)out, in, n);
    CUDA_LAUNCH_CHECK();
}
__global__ void round_bf16_rows_kernel(__nv_bfloat16 *out, long ld, const float *in, long rows, int cols) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    out[i / cols * ld + i % cols] = __float2bfloat16(in[i]);
}
void cuda_round_bf16_rows(void *out, long ld, const float *in, long rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    if (ld == cols) {
        cuda_round_bf16(out, in, (size_t)rows * cols);
        return;
    }
    round_bf16_rows_kernel<<<cuda_blocks(rows * cols, THREADS), THREADS, 0, cuda_stream()>>>((__nv_bfloat16 *)out, ld,
                                                                                           in, rows, cols);
    CUDA_LAUNCH_CHECK();
}
void cuda_widen_bf16(float *out, const void *in, size_t n) {
    if (n == 0) return;
    widen_bf16_kernel<<<cuda_blocks((long)n, THREADS), THREADS, 0, cuda_stream()>>>(out, (const __nv_bfloat16 *)in, n);
    CUDA_LAUNCH_CHECK();
}

// ---- SwiGLU ----

__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    out[i] = g * (1.0f / (1.0f + expf(-g))) * up[i];
}

__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                       long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], d = dout[i], sig = 1.0f / (1.0f + expf(-g));
    dup[i] = d * g * sig;
    dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
}

extern "C" void cuda_swiglu_forward(float *out, const float *gate, const float *up, long n) {
    if (n <= 0) return;
    swiglu_forward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream()>>>(out, gate, up, n);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                     long n) {
    if (n <= 0) return;
    swiglu_backward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream()>>>(dgate, dup, dout, gate, up, n);
    CUDA_LAUNCH_CHECK();
}

// ---- residual add, gather, scatter, scale ----

__global__ void add_kernel(float *x, const float *y, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" void cuda_add_inplace(float *x, const float *y, long n) {
    if (n <= 0) return;
    add_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream()>>>(x, y, n);
    CUDA_LAUNCH_CHECK();
}

__global__ void gather_kernel(float *out, const float *x, const int32_t *idx, int n, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * C) return;
    out[i] = x[(size_t)idx[i / C] * C + i % C];
}

__global__ void scatter_add_kernel(float *dx, const float *dout, const int32_t *idx, int n, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * C) return;
    dx[(size_t)idx[i / C] * C + i % C] += dout[i];  // idx distinct: no two threads share a target
}

extern "C" void cuda_gather_rows(float *out, const float *x, const int32_t *idx, int n, int C) {
    if (n <= 0) return;
    gather_kernel<<<cuda_blocks((long)n * C, THREADS), THREADS, 0, cuda_stream()>>>(out, x, idx, n, C);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_scatter_add_rows(float *dx, const float *dout, const int32_t *idx, int n, int C) {
    if (n <= 0) return;
    scatter_add_kernel<<<cuda_blocks((long)n * C, THREADS), THREADS, 0, cuda_stream()>>>(dx, dout, idx, n, C);
    CUDA_LAUNCH_CHECK();
}

__global__ void scale_kernel(float *x, size_t n, float s) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

extern "C" void cuda_scale(float *x, size_t n, float s) {
    if (!n) return;
    scale_kernel<<<cuda_blocks((long)n, THREADS), THREADS, 0, cuda_stream()>>>(x, n, s);
    CUDA_LAUNCH_CHECK();
}
