// decode.cu — the kernels of KV-cache generation: new keys and values into the cache
// (scatter_rows) and the attention of new tokens against it (attention_decode).
//
// attention_decode reads the whole cache of every sequence once per step, so it is
// bound by memory bandwidth: the design keeps each cache byte read from DRAM once and
// spends the rest on registers and shared memory.
//
// One block of 4 warps per (token i, kv head, group of <= 8 query heads, key chunk). The
// query heads of a kv head share its keys and values, so a block computes all of them
// at once: per tile of 32 keys, lane j loads key j (float4 loads of its row) and takes
// its dot product with every query head of the group (q in shared memory, read as
// broadcasts), then an online softmax per head in fp32 (the max over the tile by warp
// shuffles), then P·V with lanes owning HD/32 dims each and the probabilities read as
// float4 broadcasts from a per-warp [G][32] buffer. The warps of a block take every 4th
// tile of the chunk, each with its own (max, sum, acc); they are merged through shared
// memory in warp order at the end.
//
// Per tile, the first value rows are loaded before the scores are computed, so their
// latency overlaps the keys': each warp keeps 16-32 KB in flight.
//
// Key chunks (flash-decoding): with few (token, kv head) pairs the blocks would not fill
// the GPU, so each sequence's keys are split into up to nsplit chunks (a multiple of 128
// keys each, the size a function of len[i] and nsplit alone); every chunk's block
// writes its partial (max, sum, acc) to scratch, and the last of a (token, head group)'s
// chunk blocks to finish (an atomic counter per pair) merges them in chunk order — a
// second merge kernel cost a launch and a round trip per layer (5 us of a 14 us
// attention at batch 1). nsplit depends only on n, KVH, NH and the GPU, so the result
// is deterministic for those (a token's result may differ in the last bits when n changes).
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/rope.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

namespace {

constexpr int WARPS = 4;               // per block; warp w takes key tiles w, w + 4, ...
constexpr int VALUE_REGS = 80;         // registers for value rows and accumulators, see value_batch
constexpr int BLOCKS_PER_SM = 4;       // split over keys until there are this many blocks per SM
constexpr int THREADS = WARPS * 32;
constexpr int CHUNK_ALIGN = THREADS;   // keys per chunk come in multiples of one tile per warp
constexpr int MAX_G = 8;               // query heads per block
constexpr int MAX_SPLIT = 1024;
constexpr int MAX_PAIRS = 4096;        // (token, head group) counters: split only below 4 blocks an SM
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// Keys per chunk of a sequence of len keys split nsplit ways (a multiple of CHUNK_ALIGN).
__device__ __forceinline__ int chunk_keys(int len, int nsplit) {
    int per = (len + nsplit - 1) / nsplit;
    return (per + CHUNK_ALIGN - 1) / CHUNK_ALIGN * CHUNK_ALIGN;
}

// The HD/32 dims a lane owns in P·V: groups of VW consecutive floats, lane-interleaved
// so a warp's loads of one row are coalesced: element c*VW + e of lane is dim
// (c*32 + lane)*VW + e.
template <int HD> struct Dims {
    static constexpr int DPL = HD / 32;
    static constexpr int VW = DPL % 4 == 0 ? 4 : DPL % 2 == 0 ? 2 : 1;
};

template <int HD> __device__ __forceinline__ void load_dims(float (&r)[HD / 32], const float *row, int lane) {
    constexpr int VW = Dims<HD>::VW;
#pragma unroll
    for (int c = 0; c < HD / 32 / VW; c++) {
        const float *p = row + (c * 32 + lane) * VW;
        if constexpr (VW == 4) {
            float4 t = __ldg(reinterpret_cast<const float4 *>(p));
            r[c * 4] = t.x, r[c * 4 + 1] = t.y, r[c * 4 + 2] = t.z, r[c * 4 + 3] = t.w;
        } else if constexpr (VW == 2) {
            float2 t = __ldg(reinterpret_cast<const float2 *>(p));
            r[c * 2] = t.x, r[c * 2 + 1] = t.y;
        } else {
            r[c] = __ldg(p);
        }
    }
}

template <int HD> __device__ __forceinline__ void store_dims(float *row, const float (&r)[HD / 32], int lane) {
    constexpr int VW = Dims<HD>::VW;
#pragma unroll
    for (int c = 0; c < HD / 32 / VW; c++)
#pragma unroll
        for (int e = 0; e < VW; e++) row[(c * 32 + lane) * VW + e] = r[c * VW + e];
}

// Value rows loaded at once in P·V: 32 (a whole tile) while they and the accumulators
// fit in VALUE_REGS registers, else 16 or 8 (more spills: the keys' loads are hoisted too).
template <int HD, int G> __host__ __device__ constexpr int value_batch() {
    return (32 + G) * (HD / 32) <= VALUE_REGS ? 32 : (16 + G) * (HD / 32) <= VALUE_REGS ? 16 : 8;
}

// Rows 0 .. VB-1 from row (stride floats apart) into vv, zeros from row `valid` on.
template <int HD, int VB>
__device__ __forceinline__ void load_values(float (&vv)[VB][HD / 32], const float *row, size_t stride, int valid,
                                            int lane) {
#pragma unroll
    for (int e = 0; e < VB; e++) {
        if (e < valid) {
            load_dims<HD>(vv[e], row + e * stride, lane);
        } else {
#pragma unroll
            for (int d = 0; d < HD / 32; d++) vv[e][d] = 0;
        }
    }
}

// Shared memory of one block, in floats: the main loop's q [G][HD] and p [WARPS][G][32],
// reused after it for the warps' acc [WARPS][G][HD]; then (max, sum) [WARPS][G][2].
template <int HD, int G> struct Smem {
    static constexpr int LOOP = G * HD + WARPS * G * 32;
    static constexpr int MERGE = WARPS * G * HD;
    static constexpr int UNION = cmax(LOOP, MERGE);
    static constexpr int TOTAL = UNION + WARPS * G * 2;
};

// The chunk blocks of (token i, heads h0 .. h0+nh-1) have written their partials; the
// block that arrives last (of nc, the chunks holding keys) merges them in chunk order into
// out and resets the counter for the next launch. The fences order each block's partials
// before its arrival and the merger's reads (L2, past L1) after every arrival.
__device__ void merge_if_last(float *__restrict__ out, const float *part_acc, const float *part_ml,
                              int *__restrict__ arrived, int i, int h0, int nh, int NH, int HD, int nsplit, int nc,
                              int pair) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(&arrived[pair], 1) == nc - 1;
        if (last) arrived[pair] = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int x = threadIdx.x; x < nh * HD; x += THREADS) {
        const int h = x / HD, d = x % HD;
        const size_t row = (size_t)i * NH + h0 + h;
        const float *ml = part_ml + row * nsplit * 2, *acc = part_acc + row * nsplit * HD;
        float M = -INFINITY, L = 0, A = 0;
        for (int c = 0; c < nc; c++) M = fmaxf(M, __ldcg(ml + c * 2));
        for (int c = 0; c < nc; c++) {
            const float f = expf(__ldcg(ml + c * 2) - M);
            L += __ldcg(ml + c * 2 + 1) * f;
            A += __ldcg(acc + (size_t)c * HD + d) * f;
        }
        out[row * HD + d] = A / L;
    }
}

// grid (n, KVH * HG, nsplit), THREADS threads. Block (i, y, c): kv head y / HG, query
// heads kvh*group + (y % HG)*G .. + nh - 1 (nh <= G), keys of chunk c of token i.
// nsplit == 1: writes out [n, NH, HD]. Otherwise writes part_acc [n, NH, nsplit, HD]
// (unnormalized, relative to the chunk's max) and part_ml [n, NH, nsplit, 2] (max, sum)
// for the chunks that hold keys, and the last chunk block of the pair merges them into
// out; arrived [n * KVH * HG] counts the pair's blocks (zero before, zero again after).
// Minimum 1 block per SM, said explicitly: ptxas then keeps more of a tile's loads in
// flight (HD 64, G 8: 246 registers, not 182), which was 1.2x faster on an H200 than the
// extra resident blocks the default allows.
template <int HD, int G>
__global__ void __launch_bounds__(THREADS, 1) decode_kernel(float *__restrict__ out, float *__restrict__ part_acc,
                                                         float *__restrict__ part_ml, int *__restrict__ arrived,
                                                         const float *__restrict__ q,
                                                         const float *__restrict__ k, const float *__restrict__ v,
                                                         const int32_t *__restrict__ row0,
                                                         const int32_t *__restrict__ len, int NH, int KVH, int HG,
                                                         int nsplit, float scale) {
    __shared__ __align__(16) float smem[Smem<HD, G>::TOTAL];
    constexpr int DPL = HD / 32, VB = value_batch<HD, G>();
    const int i = blockIdx.x, kvh = blockIdx.y / HG, hg = blockIdx.y % HG, c = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = NH / KVH, h0 = kvh * group + hg * G, nh = min(G, group - hg * G);
    const bool pdl_late = pdl_trigger();
    pdl_wait(pdl_late);
    const int n_len = len[i], chunk = chunk_keys(n_len, nsplit);
    const int begin = c * chunk, end = min(n_len, begin + chunk);
    const size_t kv_stride = (size_t)KVH * HD;
    const float *kbase = k + (size_t)row0[i] * kv_stride + (size_t)kvh * HD;
    const float *vbase = v + (size_t)row0[i] * kv_stride + (size_t)kvh * HD;

    if (begin >= end) {  // a chunk past this token's keys: nothing to merge (whole block returns)
        if (c == 0)  // len <= 0: the CPU twin writes zeros
            for (int x = threadIdx.x; x < nh * HD; x += THREADS) out[((size_t)i * NH + h0) * HD + x] = 0;
        return;
    }

    float *sq = smem;                      // [G][HD]
    float *sp = smem + G * HD + warp * G * 32;  // this warp's [G][32]
    const float *qi = q + ((size_t)i * NH + h0) * HD;
    for (int x = threadIdx.x; x < G * HD; x += THREADS) sq[x] = x < nh * HD ? qi[x] : 0.0f;
    __syncthreads();

    float m[G], l[G], acc[G][DPL];
#pragma unroll
    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY, l[h] = 0;
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[h][d] = 0;
    }

    const float4 *sq4 = reinterpret_cast<const float4 *>(sq);
    for (int t0 = begin + warp * 32; t0 < end; t0 += THREADS) {
        const int cnt = min(32, end - t0);  // keys in this tile
        // The first VB value rows are loaded before the scores need them: their latency
        // overlaps the keys' (with HD <= 64 that is the whole tile: one round trip).
        float vv[VB][DPL];
        load_values<HD, VB>(vv, vbase + (size_t)t0 * kv_stride, kv_stride, cnt, lane);
        // Scores: lane j owns key t0 + j, whole dot products (no shuffles); a batch of
        // 8 float4 is one 128-byte line of the key's row.
        const int j = t0 + lane;
        float s[G];
#pragma unroll
        for (int h = 0; h < G; h++) s[h] = 0;
        if (j < end) {
            const float4 *kr = reinterpret_cast<const float4 *>(kbase + (size_t)j * kv_stride);
#pragma unroll
            for (int b = 0; b < HD / 4; b += 8) {
                float4 kk[8];
#pragma unroll
                for (int e = 0; e < 8; e++) kk[e] = __ldg(kr + b + e);
#pragma unroll
                for (int e = 0; e < 8; e++)
#pragma unroll
                    for (int h = 0; h < G; h++) {
                        float4 qq = sq4[h * (HD / 4) + b + e];
                        s[h] += qq.x * kk[e].x + qq.y * kk[e].y + qq.z * kk[e].z + qq.w * kk[e].w;
                    }
            }
        }
        // Online softmax: lane 0's key is always in range, so the new max is finite.
#pragma unroll
        for (int h = 0; h < G; h++) {
            float sc = j < end ? s[h] * scale : -INFINITY;
            float mn = fmaxf(m[h], warp_max(sc));
            float corr = expf(m[h] - mn);  // 0 on the first tile (m = -inf)
            float p = expf(sc - mn);       // 0 past the end
            l[h] = l[h] * corr + p;        // this lane's share of the sum, added up at the end
            m[h] = mn;
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[h][d] *= corr;
            sp[h * 32 + lane] = p;
        }
        __syncwarp();
        // P·V, VB value rows at a time, the probabilities as float4 broadcasts.
#pragma unroll
        for (int jb = 0; jb < 32; jb += VB) {
            if (jb >= cnt) break;
            if (jb > 0) load_values<HD, VB>(vv, vbase + (size_t)(t0 + jb) * kv_stride, kv_stride, cnt - jb, lane);
#pragma unroll
            for (int h = 0; h < G; h++)
#pragma unroll
                for (int e4 = 0; e4 < VB; e4 += 4) {
                    float4 p4 = *reinterpret_cast<const float4 *>(sp + h * 32 + jb + e4);
                    const float pe[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
                    for (int e = 0; e < 4; e++)
#pragma unroll
                        for (int d = 0; d < DPL; d++) acc[h][d] += pe[e] * vv[e4 + e][d];
                }
        }
        __syncwarp();  // sp is rewritten by the next tile
    }

    // Merge the warps in warp order. A warp without keys has m = -inf, l = 0, acc = 0.
#pragma unroll
    for (int h = 0; h < G; h++) l[h] = warp_sum(l[h]);
    __syncthreads();  // every warp is done with q and p: their space becomes acc
    float *sacc = smem;                               // [WARPS][G][HD]
    float *sml = smem + Smem<HD, G>::UNION;           // [WARPS][G][2]
#pragma unroll
    for (int h = 0; h < G; h++) store_dims<HD>(sacc + (warp * G + h) * HD, acc[h], lane);
    if (lane == 0)
#pragma unroll
        for (int h = 0; h < G; h++) sml[(warp * G + h) * 2] = m[h], sml[(warp * G + h) * 2 + 1] = l[h];
    __syncthreads();
    for (int x = threadIdx.x; x < nh * HD; x += THREADS) {
        const int h = x / HD, d = x % HD;
        float M = -INFINITY, L = 0, A = 0;
        for (int w = 0; w < WARPS; w++) M = fmaxf(M, sml[(w * G + h) * 2]);
        for (int w = 0; w < WARPS; w++) {
            float mw = sml[(w * G + h) * 2];
            float f = mw == -INFINITY ? 0.0f : expf(mw - M);
            L += sml[(w * G + h) * 2 + 1] * f;
            A += sacc[(w * G + h) * HD + d] * f;
        }
        const size_t row = (size_t)i * NH + h0 + h;  // (token, query head)
        if (nsplit == 1) {
            out[row * HD + d] = A / L;
        } else {
            part_acc[(row * nsplit + c) * HD + d] = A;
            if (d == 0) part_ml[(row * nsplit + c) * 2] = M, part_ml[(row * nsplit + c) * 2 + 1] = L;
        }
    }
    if (nsplit > 1)
        merge_if_last(out, part_acc, part_ml, arrived, i, h0, nh, NH, HD, nsplit, (n_len + chunk - 1) / chunk,
                      i * gridDim.y + blockIdx.y);
}

// Chunks per sequence: enough blocks for BLOCKS_PER_SM per SM (at 200-250 registers a
// thread, 2 are resident at a time; more chunks cost more partial results than they
// gain: on an H200, 4 beat 8 and 16 for n 64..512, len 512..2048).
int sm_count(void) {
    static int sms;
    if (!sms) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        if (sms <= 0) sms = 132;
    }
    return sms;
}

int pick_split(int n, int KVH, int HG) {
    long base = (long)n * KVH * HG, target = (long)BLOCKS_PER_SM * sm_count();
    if (base >= target) return 1;
    long s = (target + base - 1) / base;
    return (int)(s < MAX_SPLIT ? s : MAX_SPLIT);
}

// The merge counters: MAX_PAIRS ints, zeroed once when first allocated (each merge leaves
// its counter at zero again). Only split launches use them, and those have fewer than
// BLOCKS_PER_SM blocks an SM of pairs.
int *arrival_counters(long pairs) {
    static int *zeroed;
    if (pairs > MAX_PAIRS) {
        cuda_note_message("attention_decode: too many (token, head group) pairs to split", __FILE__, __LINE__);
        return NULL;
    }
    int *p = (int *)cuda_scratch(SCRATCH_DECODE_COUNT, MAX_PAIRS * sizeof(int));
    if (p && p != zeroed) {
        CUDA_CHECK(cudaMemsetAsync(p, 0, MAX_PAIRS * sizeof(int), cuda_stream()));
        zeroed = p;
    }
    return p;
}

template <int HD, int G>
void launch_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                   const int32_t *len, int n, int NH, int KVH, float scale) {
    const int group = NH / KVH, HG = (group + G - 1) / G;
    const int nsplit = pick_split(n, KVH, HG);
    float *part_acc = NULL, *part_ml = NULL;
    int *arrived = NULL;
    if (nsplit > 1) {
        size_t rows = (size_t)n * NH * nsplit;
        part_acc = (float *)cuda_scratch(SCRATCH_DECODE, sizeof(float) * rows * (HD + 2));
        if (!part_acc || !(arrived = arrival_counters((long)n * KVH * HG))) return;
        part_ml = part_acc + rows * HD;
    }
    dim3 grid((unsigned)n, (unsigned)(KVH * HG), (unsigned)nsplit);
    cuda_launch_dependent(decode_kernel<HD, G>, grid, dim3(THREADS), 0, out, part_acc, part_ml, arrived, q, k, v, row0,
                          len, NH, KVH, HG, nsplit, scale);
}

// G: the query heads per block rounded up to 1, 2, 4 or 8 (the extra heads compute on
// zeros and are not written). With few sequences (n * KVH * 4 <= SMs: one sequence, a
// handful) one head a block: the work of a step is then a few tiles, and a warp that
// scores and sums its tile for all query heads of its kv head is a chain of ~2,800
// dependent instructions (H100, n 1, 7 heads: 14 us, its SMs idle 90% of it), while
// one head a block spreads it over 7x the warps (the keys and values are read from L2
// by each head's block). Depends on n and the shape alone: graphs stay valid.
template <int HD>
void launch_hd(float *out, const float *q, const float *k, const float *v, const int32_t *row0, const int32_t *len,
               int n, int NH, int KVH, float scale) {
    int g = NH / KVH < MAX_G ? NH / KVH : MAX_G;
    if ((long)n * KVH * 4 <= sm_count() && (long)n * NH <= MAX_PAIRS / 2) g = 1;
    if (g <= 1) launch_decode<HD, 1>(out, q, k, v, row0, len, n, NH, KVH, scale);
    else if (g <= 2) launch_decode<HD, 2>(out, q, k, v, row0, len, n, NH, KVH, scale);
    else if (g <= 4) launch_decode<HD, 4>(out, q, k, v, row0, len, n, NH, KVH, scale);
    else launch_decode<HD, 8>(out, q, k, v, row0, len, n, NH, KVH, scale);
}

bool misaligned(const void *p) { return ((uintptr_t)p & 15) != 0; }

// ---- any head dim up to 256 (the tiny test models have 8 or 16) or unaligned buffers ----
// One warp per (token, query head), keys 32 at a time: lane j scores key t0 + j, an online
// softmax over the tile, then P·V with lane owning dims lane, lane + 32, ... Simple rather
// than fast: real models take the kernel above. grid ceil(n*NH / WARPS), THREADS threads.
__global__ void decode_any_kernel(float *__restrict__ out, const float *__restrict__ q, const float *__restrict__ k,
                                  const float *__restrict__ v, const int32_t *__restrict__ row0,
                                  const int32_t *__restrict__ len, int n, int NH, int KVH, int HD, float scale) {
    __shared__ float sp[WARPS][32];
    const long row = (long)blockIdx.x * WARPS + threadIdx.x / 32;  // (token, query head)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= (long)n * NH) return;
    const int i = (int)(row / NH), h = (int)(row % NH), kvh = h / (NH / KVH), n_len = len[i];
    const size_t kv_stride = (size_t)KVH * HD;
    const float *qi = q + (size_t)row * HD;
    const float *kb = k + (size_t)row0[i] * kv_stride + (size_t)kvh * HD;
    const float *vb = v + (size_t)row0[i] * kv_stride + (size_t)kvh * HD;
    float m = -INFINITY, l = 0, acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int t0 = 0; t0 < n_len; t0 += 32) {
        const int j = t0 + lane;
        float s = -INFINITY;
        if (j < n_len) {
            float dot = 0;
            for (int d = 0; d < HD; d++) dot += qi[d] * kb[(size_t)j * kv_stride + d];
            s = dot * scale;
        }
        const float mn = fmaxf(m, warp_max(s));  // finite: key t0 is in range
        const float corr = expf(m - mn), p = j < n_len ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(p);
        m = mn;
#pragma unroll
        for (int r = 0; r < 8; r++) acc[r] *= corr;
        sp[warp][lane] = p;
        __syncwarp();
        const int cnt = min(32, n_len - t0);
        for (int e = 0; e < cnt; e++) {
            const float pe = sp[warp][e];
            const float *vr = vb + (size_t)(t0 + e) * kv_stride;
#pragma unroll
            for (int r = 0; r < 8; r++)
                if (lane + 32 * r < HD) acc[r] += pe * vr[lane + 32 * r];
        }
        __syncwarp();  // sp is rewritten by the next tile
    }
#pragma unroll
    for (int r = 0; r < 8; r++)
        if (lane + 32 * r < HD) out[(size_t)row * HD + lane + 32 * r] = n_len > 0 ? acc[r] / l : 0.0f;
}

// ---- scatter_rows: one block per row, float4 copies when the rows allow ----

template <bool VEC>
__global__ void scatter_rows_kernel(float *__restrict__ dst, const float *__restrict__ src,
                                    const int32_t *__restrict__ idx, int C) {
    const int i = blockIdx.x;
    float *d = dst + (size_t)idx[i] * C;
    const float *s = src + (size_t)i * C;
    if (VEC) {
        for (int c = threadIdx.x; c < C / 4; c += blockDim.x)
            reinterpret_cast<float4 *>(d)[c] = reinterpret_cast<const float4 *>(s)[c];
    } else {
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
    }
}

// ---- rope_kv_cache: a decode step's q and k rotated, k and v into the cache, one launch ----
// Block i is token i; its threads take the (head, frequency) pairs of q, then of k, then
// the floats of v; rope.h's rotation.
__global__ void rope_kv_cache_kernel(float *__restrict__ q, float *__restrict__ k, const float *__restrict__ v,
                                     float *__restrict__ kc, float *__restrict__ vc, const int32_t *__restrict__ kv_row,
                                     const int32_t *__restrict__ pos, const float *__restrict__ inv_freq, int NH,
                                     int KVH, int HD) {
    const int i = blockIdx.x, half = HD / 2, nq = NH * half, nk = KVH * half, nv = KVH * HD;
    const bool pdl_late = pdl_trigger();
    pdl_wait(pdl_late);
    const int p = pos[i];
    float *kcr = kc + (size_t)kv_row[i] * nv, *vcr = vc + (size_t)kv_row[i] * nv;
    for (int t = threadIdx.x; t < nq + nk + nv; t += blockDim.x) {
        if (t < nq + nk) {
            const bool is_q = t < nq;
            const int u = is_q ? t : t - nq, h = u / half, f = u % half;
            float *x = (is_q ? q + (size_t)i * NH * HD : k + (size_t)i * nv) + h * HD + f;
            float r1 = x[0], r2 = x[half];
            rope_rotate(r1, r2, rope_angle_of(p, inv_freq[f], 1.0f));
            x[0] = r1, x[half] = r2;
            if (!is_q) kcr[h * HD + f] = r1, kcr[h * HD + f + half] = r2;
        } else {
            const int u = t - nq - nk;
            vcr[u] = v[(size_t)i * nv + u];
        }
    }
}

// ---- qk_norm_rope_kv_cache: Qwen3's per-head norms of q and k, then rope_kv_cache, one launch ----
// Block i is token i; a warp takes a head of q or k at a time and normalises its HD floats
// with rmsnorm_rows_kernel's arithmetic (for rows of HD 64 and 128 that kernel's block is
// one warp: a float4 a lane, the same butterfly), then rotates them (rope.h): lane l's four
// floats pair with lane l + HD/8's, fetched by a shuffle, and lane l writes both. k goes to
// its cache row too; then the block copies v's row into the cache. HD 64 or 128.
__global__ void qk_norm_rope_kv_cache_kernel(float *__restrict__ q, float *__restrict__ k,
                                             const float *__restrict__ q_raw, const float *__restrict__ k_raw,
                                             const float *__restrict__ v, float *__restrict__ kc,
                                             float *__restrict__ vc, const float *__restrict__ q_norm,
                                             const float *__restrict__ k_norm, float eps,
                                             const int32_t *__restrict__ kv_row, const int32_t *__restrict__ pos,
                                             const float *__restrict__ inv_freq, int NH, int KVH, int HD) {
    const int i = blockIdx.x, lane = threadIdx.x % 32, warps = blockDim.x / 32, C4 = HD / 4, nv = KVH * HD;
    const bool pdl_late = pdl_trigger();
    pdl_wait(pdl_late);
    const int p = pos[i];
    float *kcr = kc + (size_t)kv_row[i] * nv, *vcr = vc + (size_t)kv_row[i] * nv;
    for (int h = threadIdx.x / 32; h < NH + KVH; h += warps) {
        const bool is_q = h < NH;
        const size_t at = is_q ? ((size_t)i * NH + h) * HD : ((size_t)i * KVH + h - NH) * HD;
        const float4 *src = reinterpret_cast<const float4 *>((is_q ? q_raw : k_raw) + at);
        float4 x = lane < C4 ? src[lane] : make_float4(0.f, 0.f, 0.f, 0.f);
        float ss = 0.f;
        ss += x.x * x.x, ss += x.y * x.y, ss += x.z * x.z, ss += x.w * x.w;
        ss = warp_sum(ss);
        float total = 0.f;
        total += ss;
        const float s = rsqrtf(total / HD + eps);
        const float4 w = lane < C4 ? reinterpret_cast<const float4 *>(is_q ? q_norm : k_norm)[lane] : x;
        float r[4] = {x.x * s * w.x, x.y * s * w.y, x.z * s * w.z, x.w * s * w.w}, o[4];
#pragma unroll
        for (int e = 0; e < 4; e++) o[e] = __shfl_xor_sync(0xffffffffu, r[e], HD / 8);
        if (lane >= HD / 8) continue;  // the pair's second half: lane - HD/8 writes it
        float *dst = (is_q ? q : k) + at;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int f = 4 * lane + e;
            rope_rotate(r[e], o[e], rope_angle_of(p, inv_freq[f], 1.0f));
            dst[f] = r[e], dst[f + HD / 2] = o[e];
            if (!is_q) kcr[(h - NH) * HD + f] = r[e], kcr[(h - NH) * HD + f + HD / 2] = o[e];
        }
    }
    for (int u = threadIdx.x; u < nv; u += blockDim.x) vcr[u] = v[(size_t)i * nv + u];
}

}  // namespace

const char *cuda_decode_path = "";
extern "C" const char *cuda_decode_last_path(void) { return cuda_decode_path; }

extern "C" void cuda_qk_norm_rope_kv_cache_forward(float *q, float *k, const float *q_raw, const float *k_raw,
                                                   const float *v, float *k_cache, float *v_cache,
                                                   const float *q_norm, const float *k_norm, float eps,
                                                   const int32_t *kv_row, const int32_t *pos, const float *inv_freq,
                                                   int n, int NH, int KVH, int HD) {
    if (n <= 0) return;
    const bool aligned = !misaligned(q) && !misaligned(k) && !misaligned(q_raw) && !misaligned(k_raw) &&
                         !misaligned(q_norm) && !misaligned(k_norm);
    if ((HD == 64 || HD == 128) && aligned) {
        const int warps = NH + KVH < 8 ? NH + KVH : 8;
        cuda_launch_dependent(qk_norm_rope_kv_cache_kernel, dim3(n), dim3(32 * warps), 0, q, k, q_raw, k_raw, v,
                              k_cache, v_cache, q_norm, k_norm, eps, kv_row, pos, inv_freq, NH, KVH, HD);
        cuda_decode_path = "fused";
        return;
    }
    cuda_decode_path = "separate";
    cuda_rmsnorm_forward(q, NULL, q_raw, q_norm, n * NH, HD, eps);
    cuda_rmsnorm_forward(k, NULL, k_raw, k_norm, n * KVH, HD, eps);
    cuda_rope_kv_cache_forward(q, k, v, k_cache, v_cache, kv_row, pos, inv_freq, n, NH, KVH, HD);
}

extern "C" void cuda_rope_kv_cache_forward(float *q, float *k, const float *v, float *k_cache, float *v_cache,
                                           const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n,
                                           int NH, int KVH, int HD) {
    if (n <= 0) return;
    int work = (NH + KVH) * (HD / 2) + KVH * HD, threads = work >= 256 ? 256 : (work + 31) / 32 * 32;
    cuda_launch_dependent(rope_kv_cache_kernel, dim3(n), dim3(threads), 0, q, k, v, k_cache, v_cache, kv_row, pos,
                          inv_freq, NH, KVH, HD);
}

extern "C" void cuda_scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int C) {
    if (n <= 0 || C <= 0) return;
    bool vec = C % 4 == 0 && !misaligned(dst) && !misaligned(src);
    int per = vec ? C / 4 : C, threads = per >= 256 ? 256 : (per + 31) / 32 * 32;
    if (vec) scatter_rows_kernel<true><<<(unsigned)n, threads, 0, cuda_stream()>>>(dst, src, idx, C);
    else scatter_rows_kernel<false><<<(unsigned)n, threads, 0, cuda_stream()>>>(dst, src, idx, C);
    CUDA_LAUNCH_CHECK();
}

extern "C" void cuda_attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                                      const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    if (n <= 0) return;
    if (KVH <= 0 || NH % KVH != 0 || HD < 1 || HD > 256) {
        char msg[128];
        snprintf(msg, sizeof msg, "attention_decode: unsupported shape NH %d KVH %d HD %d (HD: up to 256)", NH, KVH,
                 HD);
        cuda_note_message(msg, __FILE__, __LINE__);
        return;
    }
    if (HD % 32 != 0 || misaligned(out) || misaligned(q) || misaligned(k) || misaligned(v)) {
        decode_any_kernel<<<cuda_blocks((long)n * NH, WARPS), THREADS, 0, cuda_stream()>>>(out, q, k, v, row0, len, n,
                                                                                        NH, KVH, HD, scale);
        CUDA_LAUNCH_CHECK();
        return;
    }
    switch (HD) {
    case 32: launch_hd<32>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 64: launch_hd<64>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 96: launch_hd<96>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 128: launch_hd<128>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 160: launch_hd<160>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 192: launch_hd<192>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 224: launch_hd<224>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    case 256: launch_hd<256>(out, q, k, v, row0, len, n, NH, KVH, scale); break;
    }
}
