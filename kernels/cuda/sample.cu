// sample.cu — the next token of n sequences from their logits, one block per row; the
// contract is sample_rows' in ops.h, and kernels/cpu/sample_rows.c is the twin.
//
// Nothing is sorted: near-uniform logits (a freshly initialised model) make every one of
// 152k tokens a candidate. Thresholds come from radix selection on an order-preserving
// uint32 key of z = logit · inv_temperature, 8 bits per pass from the top:
//   top-k: the k-th largest key, from histograms of candidate counts;
//   top-p: the largest key whose mass at and above it reaches top_p x the mass kept so
//          far, from histograms of mass.
// Masses are integers, w = exp(z - mx) (in double) x 2^40 rounded to uint64, so every sum
// is exact and independent of order: the same bits for any schedule, no floating-point
// atomics. Every w is at most 1, so 152k of them sum below 2^58.
// Fixed-point resolution: each mass is off by at most 2^-41 (4.5e-13 of the best token's
// mass; a candidate below mx - 28.4 rounds to 0 and is never drawn), so a whole row is off
// by at most V x 2^-41 relative to masses of order 1 .. V. That moves a threshold or a draw
// only when top_p x mass, or u x kept mass, lands within ~1e-12 (relative) of a boundary
// between two tokens: a draw differs from the CPU twin's with probability ~1e-12 per row.
//
// Per row (block of 1024 threads): one pass for the max, up to 4 + 4 selection passes
// (each reads the row, four 16-byte loads in flight per thread; exp only for candidates
// that still match the key prefix), then the draw: the kept mass of 1024 contiguous
// segments (a warp streams its 32 segments in coalesced 32-token chunks, 8 in flight), a
// block scan of them, and one warp walking the segment where u x kept mass falls, 32
// tokens at a time, in index order. One SM per row is instruction-bound (IPC ~2.8 under
// ncu): on a flat row the double exp of every candidate (twice with top-p) and the three
// shared atomics per candidate of top-p's first mass histogram take most of the time.
// Histograms live in shared memory as one column per lane ([bin][lane] cells, 32-bit):
// a lane only ever adds to its own column, so the lanes of a warp never collide, even on
// a flat row where every candidate has the same top key byte, and different warps meet
// only in native 32-bit shared atomics (64-bit ones are compare-and-swap loops). A mass
// goes in as three 14-bit slices, so a cell (at most V/32 adds) cannot overflow for V < 8M.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "ops.h"

#include <climits>
#include <cmath>
#include <cstring>

typedef unsigned long long u64;

enum { SAMPLE_THREADS = 1024, SAMPLE_WARPS = SAMPLE_THREADS / 32, BINS = 256, UNROLL = 4 };
enum { CELLS = BINS * 32, SLICE = 14 };                    // one histogram: [BINS][32 lanes]
static const size_t HIST_BYTES = sizeof(uint32_t) * 3 * CELLS;  // three slices of a mass
static const unsigned FULL = 0xffffffffu;

struct SampleShared {
    u64 bins[BINS];           // the block's histogram of one pass
    u64 part[SAMPLE_WARPS];   // per-warp partials of a scan
    u64 need, above, total, carry;
    float pf[SAMPLE_WARPS];
    int pi[SAMPLE_WARPS];
    uint32_t prefix;
    int off, seg;
};

// Order-preserving: a < b as floats iff key(a) < key(b). -0 becomes +0 (they compare equal).
__device__ __forceinline__ uint32_t z_key(float z) {
    uint32_t u = __float_as_uint(z == 0.0f ? 0.0f : z);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_z(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// z exactly as the CPU twin computes it: a float product, never fused into anything.
__device__ __forceinline__ float scaled(const float *x, long j, float it) { return __fmul_rn(x[j], it); }

// Calls f(j, x[j]) for every j < V of a row, each thread on its share: 16-byte loads with
// UNROLL of them in flight when the row is 16-byte aligned (a single block per row is
// bound by the latency of its loads, not by bandwidth), else 4-byte ones.
template <typename F> __device__ __forceinline__ void for_row(const float *x, int V, F f) {
    int t = threadIdx.x;
    if (((size_t)x & 15) == 0) {
        const float4 *x4 = (const float4 *)x;
        int V4 = V / 4;
        for (int base = 0; base < V4; base += UNROLL * SAMPLE_THREADS) {
            float4 v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                int q = base + u * SAMPLE_THREADS + t;
                v[u] = q < V4 ? x4[q] : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                int q = base + u * SAMPLE_THREADS + t;
                if (q < V4) f(4 * q, v[u].x), f(4 * q + 1, v[u].y), f(4 * q + 2, v[u].z), f(4 * q + 3, v[u].w);
            }
        }
        for (int j = 4 * V4 + t; j < V; j += SAMPLE_THREADS) f(j, x[j]);
    } else {
        for (int base = 0; base < V; base += UNROLL * SAMPLE_THREADS) {
            float v[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                int j = base + u * SAMPLE_THREADS + t;
                v[u] = j < V ? x[j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                if (base + u * SAMPLE_THREADS + t < V) f(base + u * SAMPLE_THREADS + t, v[u]);
        }
    }
}

// w = exp(z - mx) in double, exactly 1 for the best token (also when mx is ±inf).
__device__ __forceinline__ double row_mass(float z, float mx) {
    return z == mx ? 1.0 : exp(__dsub_rn((double)z, (double)mx));
}
// round(w x 2^40) for w in [0, 1]: one fused multiply-add puts it in the low mantissa bits
// of 2^52 + w 2^40 (rounded to nearest even, as __double2ull_rn would, without the
// conversion unit's quarter-rate throughput).
__device__ __forceinline__ u64 fixed_mass(double w) {
    return (u64)__double_as_longlong(__fma_rn(w, 0x1p40, 0x1p52)) - 0x4330000000000000ull;
}

__device__ __forceinline__ u64 warp_incl_scan(u64 v) {
    int lane = threadIdx.x % 32;
    for (int o = 1; o < 32; o *= 2) {
        u64 t = __shfl_up_sync(FULL, v, o);
        if (lane >= o) v += t;
    }
    return v;
}
__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// Adds one candidate to the histogram hist [3][BINS][32] (counts: slice 0 only), in
// this lane's column.
template <bool MASS>
__device__ __forceinline__ void hist_add(uint32_t *hist, unsigned bin, u64 w) {
    uint32_t *c = hist + bin * 32 + threadIdx.x % 32;
    if (MASS) {
        atomicAdd(c, (uint32_t)(w & ((1u << SLICE) - 1)));
        atomicAdd(c + CELLS, (uint32_t)((w >> SLICE) & ((1u << SLICE) - 1)));
        atomicAdd(c + 2 * CELLS, (uint32_t)(w >> (2 * SLICE)));
    } else {
        atomicAdd(c, 1u);
    }
}

// Radix selection over the candidates z >= zmin of row x [V]: the largest key K such that
// the weight of the candidates with key >= K reaches need (weight 1 when !MASS: K is the
// top_k-th largest; the fixed-point mass when MASS: need = top_p x the candidates' mass).
// Returns false (uniformly) when the rule keeps every candidate anyway.
template <bool MASS>
__device__ bool select_key(uint32_t *key_out, const float *x, int V, float it, float zmin, float mx, int top_k,
                           float top_p, SampleShared &sh, uint32_t *hist /* [3][BINS][32] */) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    uint32_t prefix = 0;
    for (int level = 0; level < 4; level++) {
        int shift = 24 - 8 * level;
        uint32_t hi = level == 0 ? 0u : 0xffffffffu << (shift + 8);  // the bits fixed so far
        for (int i = threadIdx.x; i < (MASS ? 3 : 1) * CELLS; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for_row(x, V, [&](int, float xj) {
            float z = __fmul_rn(xj, it);
            uint32_t key = z_key(z);
            if (z >= zmin && (key & hi) == prefix)  // NaN never counts
                hist_add<MASS>(hist, (key >> shift) & 255u, MASS ? fixed_mass(row_mass(z, mx)) : 0);
        });
        __syncthreads();
        for (int b = threadIdx.x; b < BINS; b += blockDim.x) {
            u64 s = 0;
            for (int i = 0; i < 32; i++) {
                const uint32_t *c = hist + b * 32 + (i + b) % 32;  // rotated: no bank conflicts
                s += MASS ? c[0] + ((u64)c[CELLS] << SLICE) + ((u64)c[2 * CELLS] << (2 * SLICE)) : c[0];
            }
            sh.bins[b] = s;
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l holds bins 255-8l down to 248-8l; the exclusive scan over lanes is the
            // weight of all higher bins.
            u64 s = 0;
            for (int i = 0; i < 8; i++) s += sh.bins[255 - 8 * lane - i];
            u64 incl = warp_incl_scan(s);
            u64 need, above = 0;
            bool off = false;
            if (level == 0) {
                u64 total = __shfl_sync(FULL, incl, 31);
                if (MASS) {
                    double t = ceil((double)top_p * (double)total);
                    need = t < 1.0 ? 1 : t >= (double)total ? total : (u64)t;
                } else {
                    need = (u64)top_k;
                }
                off = total == 0 || (!MASS && need >= total);
                if (lane == 0) sh.need = need, sh.off = off;
            } else {
                need = sh.need, above = sh.above;
            }
            // Invariant: above < need <= above + (this level's total), so exactly one lane
            // holds the bin where the running weight reaches need.
            u64 cum = above + (incl - s);
            __syncwarp();  // every lane has read sh.above before the finder rewrites it
            if (!off && cum < need && cum + s >= need) {
                for (int i = 0; i < 8; i++) {
                    int d = 255 - 8 * lane - i;
                    u64 b = sh.bins[d];
                    if (cum + b >= need) {
                        sh.prefix = prefix | ((uint32_t)d << shift);
                        sh.above = cum;
                        break;
                    }
                    cum += b;
                }
            }
        }
        __syncthreads();
        if (sh.off) return false;
        prefix = sh.prefix;
    }
    *key_out = prefix;
    return true;
}

// (v, i) := the better of (v, i) and (ov, oi): a larger value, then a smaller index;
// i == INT_MAX is "nothing yet". A total order, so any combining order gives one answer.
__device__ __forceinline__ void argmax_merge(float &v, int &i, float ov, int oi) {
    if (oi != INT_MAX && (i == INT_MAX || ov > v || (ov == v && oi < i))) v = ov, i = oi;
}

__device__ int block_argmax(const float *x, int V, SampleShared &sh) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float v = -INFINITY;
    int i = INT_MAX;
    for_row(x, V, [&](int j, float xj) {
        if (!isnan(xj)) argmax_merge(v, i, xj, j);
    });
    for (int o = 16; o > 0; o /= 2) argmax_merge(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
    if (lane == 0) sh.pf[warp] = v, sh.pi[warp] = i;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? sh.pf[lane] : -INFINITY;
        i = lane < (int)(blockDim.x / 32) ? sh.pi[lane] : INT_MAX;
        for (int o = 16; o > 0; o /= 2) argmax_merge(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
    }
    return i == INT_MAX ? 0 : i;  // meaningful in warp 0; all NaN gives 0, as on the CPU
}

__device__ float block_max_z(const float *x, int V, float it, SampleShared &sh) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float m = -INFINITY;
    for_row(x, V, [&](int, float xj) { m = fmaxf(m, __fmul_rn(xj, it)); });  // fmaxf drops NaN
    m = warp_max(m);
    if (lane == 0) sh.pf[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = lane < (int)(blockDim.x / 32) ? sh.pf[lane] : -INFINITY;
        m = warp_max(m);
        if (lane == 0) sh.pf[0] = m;
    }
    __syncthreads();
    return sh.pf[0];
}

// The fixed-point mass of token z if it is kept (0 if not): the tests of the CPU twin.
__device__ __forceinline__ u64 kept_mass(float z, float thr, float mx, double min_p) {
    if (!(z >= thr)) return 0;
    double w = row_mass(z, mx);
    if (!(min_p <= 0) && z != mx && !(w >= min_p)) return 0;
    return fixed_mass(w);
}

// token [n], logits [n, V], params [n]; grid n, block SAMPLE_THREADS, HIST_BYTES dynamic.
__global__ void __launch_bounds__(SAMPLE_THREADS, 1)
    sample_kernel(int32_t *token, const float *logits, const sample_params *params, int V) {
    extern __shared__ uint32_t hist[];
    __shared__ SampleShared sh;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const float *x = logits + (size_t)blockIdx.x * V;
    const sample_params p = params[blockIdx.x];
    if (p.greedy) {
        int t = block_argmax(x, V, sh);
        if (threadIdx.x == 0) token[blockIdx.x] = t;
        return;
    }
    float it = p.inv_temperature;
    float mx = block_max_z(x, V, it, sh);
    float thr = __fsub_rn(mx, 30.0f);  // below it a token's mass is < e^-30 of the best's
    uint32_t key;
    if (p.top_k > 0 && p.top_k < V && select_key<false>(&key, x, V, it, thr, mx, p.top_k, 0, sh, hist))
        thr = key_z(key);
    if (p.top_p < 1 && select_key<true>(&key, x, V, it, thr, mx, 0, p.top_p, sh, hist)) thr = key_z(key);
    double min_p = p.min_p;

    // The draw. Segment s = [s L, s L + L) of the row, L a multiple of 32; warp w sums
    // segments 32w .. 32w+31, so thread t ends up holding segment t's kept mass.
    int L = 32 * ((V + 32 * SAMPLE_THREADS - 1) / (32 * SAMPLE_THREADS));
    int C = L / 32, nchunks = 32 * C;  // chunks of 32 tokens per segment, per warp
    long r0 = (long)warp * 32 * L;     // the warp's 32 segments are one range
    u64 mine = 0, acc = 0;
    for (int c0 = 0; c0 < nchunks; c0 += 8) {
        float z[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            long j = r0 + (long)(c0 + u) * 32 + lane;
            z[u] = c0 + u < nchunks && j < V ? scaled(x, j, it) : NAN;  // NaN is never kept
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int c = c0 + u;  // the same in every lane: the shuffles below are warp-uniform
            if (c >= nchunks) break;
            acc += kept_mass(z[u], thr, mx, min_p);
            if ((c + 1) % C == 0) {  // the last chunk of segment c / C
                u64 sum = warp_sum_u64(acc);
                if (lane == c / C) mine = sum;
                acc = 0;
            }
        }
    }
    if (threadIdx.x == 0) sh.seg = 0, sh.carry = 0;
    u64 incl = warp_incl_scan(mine);
    if (lane == 31) sh.part[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        u64 v = sh.part[lane], iv = warp_incl_scan(v);
        sh.part[lane] = iv - v;
        if (lane == 31) sh.total = iv;
    }
    __syncthreads();
    incl += sh.part[warp];
    u64 K = sh.total;  // the kept mass; the best token alone brings 2^40
    if (K == 0) {      // no candidate at all (every logit NaN)
        if (threadIdx.x == 0) token[blockIdx.x] = 0;
        return;
    }
    // The first token whose running mass R exceeds u K: for integers, R > u K iff R > floor(u K).
    double uk = p.u * (double)K;
    u64 T = uk <= 0 ? 0 : uk >= (double)K ? K - 1 : (u64)uk;
    if (T > K - 1) T = K - 1;
    if (incl - mine <= T && T < incl) sh.seg = threadIdx.x, sh.carry = incl - mine;
    __syncthreads();
    if (warp == 0) {
        long j0 = (long)sh.seg * L, j1 = j0 + L < V ? j0 + L : V;
        u64 carry = sh.carry;
        long found = -1;
        for (long base = j0; base < j1 && found < 0; base += 32) {  // found is the same in every lane
            long j = base + lane;
            u64 w = j < j1 ? kept_mass(scaled(x, j, it), thr, mx, min_p) : 0;
            u64 run = warp_incl_scan(w);
            unsigned hit = __ballot_sync(FULL, carry + run > T);
            if (hit) found = base + __ffs(hit) - 1;
            carry += __shfl_sync(FULL, run, 31);
        }
        if (lane == 0) token[blockIdx.x] = (int32_t)(found >= 0 ? found : j1 - 1);
    }
}

// Pinned host staging for the parameters and tokens (grown, never shrunk): the copies
// then run as DMA without the driver's bounce buffer, which halves a small call's overhead.
// Each call synchronizes before returning, so the buffer is free again by the next one.
static char *staging;
static size_t staging_bytes;

static char *staging_buffer(size_t bytes) {
    if (staging_bytes >= bytes) return staging;
    if (staging) CUDA_CHECK(cudaFreeHost(staging));
    staging = NULL, staging_bytes = 0;
    if (cudaHostAlloc((void **)&staging, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();  // no pinned memory: the caller copies from pageable memory
        staging = NULL;
        return NULL;
    }
    staging_bytes = bytes;
    return staging;
}

extern "C" void cuda_sample_rows(int32_t *token, const float *logits, const struct sample_params *params, int n,
                                 int V) {
    if (n <= 0) return;
    size_t pbytes = sizeof(sample_params) * (size_t)n, tbytes = sizeof(int32_t) * (size_t)n;
    char *buf = (char *)cuda_scratch(SCRATCH_SAMPLE, pbytes + tbytes);
    if (!buf) {
        for (int i = 0; i < n; i++) token[i] = 0;  // the error is noted; keep the ids valid
        return;
    }
    static bool smem_set;
    allow_smem(sample_kernel, HIST_BYTES, &smem_set);
    int32_t *d_token = (int32_t *)(buf + pbytes);  // pbytes is a multiple of 8
    char *host = staging_buffer(pbytes + tbytes);
    // Not cuda_upload: that would mark the weights as rewritten (and drop their bf16 copies).
    if (host) {
        memcpy(host, params, pbytes);
        CUDA_CHECK(cudaMemcpyAsync(buf, host, pbytes, cudaMemcpyHostToDevice, cuda_stream()));
    } else {
        CUDA_CHECK(cudaMemcpy(buf, params, pbytes, cudaMemcpyHostToDevice));
    }
    sample_kernel<<<n, SAMPLE_THREADS, HIST_BYTES, cuda_stream()>>>(d_token, logits, (const sample_params *)buf, V);
    CUDA_LAUNCH_CHECK();
    if (host) {
        CUDA_CHECK(cudaMemcpyAsync(host + pbytes, d_token, tbytes, cudaMemcpyDeviceToHost, cuda_stream()));
        CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
        memcpy(token, host + pbytes, tbytes);
    } else {
        CUDA_CHECK(cudaMemcpy(token, d_token, tbytes, cudaMemcpyDeviceToHost));
    }
}
