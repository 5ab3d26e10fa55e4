// attention.cu — causal attention over packed rows with native GQA on the GPU, fp32,
// flash-attention-2 style: nothing [T, T] is ever stored. The forward pass keeps the
// log-sum-exp of each query's scores; the backward pass recomputes the probabilities
// from it, tile by tile, in two kernels that each own what they write (dq per query
// tile; dk, dv per key tile), so every sum runs in a fixed order with no atomics.
//
// Shapes (ops.h): q, out, dq, dout [N, NH, HD]; k, v, dk, dv [N, KVH, HD]; lse [N, NH];
// seg_start [N]. Query head h reads kv head h / (NH / KVH). Token n attends to keys
// seg_start[n] .. n; sequences are contiguous runs of N and seg_start never decreases,
// so a tile of 64 queries [i0, i0 + 64) only needs keys seg_start[i0] .. i0 + 63, and a
// tile of 64 keys is only seen by queries up to the end of its last key's sequence:
// packed short sequences cost about (sequence length + 64) keys per query, not N.
//
// Every kernel runs 256 threads as a 16 x 16 grid (ty = tid / 16, tx = tid % 16) over a
// 64 x 64 tile of scores: thread (ty, tx) holds rows ty*4 .. ty*4+3 and columns tx,
// tx+16, tx+32, tx+48. A row's 16 threads are one half of a warp, so row maxima and sums
// are half-warp shuffles, and a warp produces and consumes its own 8 rows of P (only a
// __syncwarp between them). Products with an HD-wide operand give each thread the same
// 4 rows and HD/16 columns: tx*VW .. tx*VW+VW-1 in each group of 16*VW (VW = 4 floats
// when HD >= 64), so shared-memory reads are float4 and bank-conflict free.
#include "cuda/attention_tc.h"
#include "cuda/cuda_common.h"
#include "cuda/packed_rows.h"
#include "cuda/cuda_ops.h"

#include <climits>
#include <math.h>

namespace {

constexpr int BQ = 64;           // queries per tile
constexpr int BK = 64;           // keys per tile
constexpr int THREADS = 256;     // 16 x 16, see above
constexpr int PS = BK + 4;       // row stride of P / dS tiles [64][PS]: +4 keeps float4 alignment
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }
__host__ __device__ constexpr int vec_width(int HD) { return HD >= 64 ? 4 : HD / 16; }  // output columns per group

// Row stride of a tile whose rows are read one row per lane (the "column" operand of a
// score product): HD + 4 puts the 16 rows a half-warp reads in distinct bank groups.
// Tiles read one row per half-warp (broadcast) keep stride HD.
template <int HD> __host__ __device__ constexpr int padded() { return HD + 4; }

// W consecutive floats of shared memory (aligned to 4 W bytes) into registers.
template <int W> __device__ __forceinline__ void lds(float *r, const float *p);
template <> __device__ __forceinline__ void lds<4>(float *r, const float *p) {
    float4 t = *reinterpret_cast<const float4 *>(p);
    r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
}
template <> __device__ __forceinline__ void lds<2>(float *r, const float *p) {
    float2 t = *reinterpret_cast<const float2 *>(p);
    r[0] = t.x, r[1] = t.y;
}
template <> __device__ __forceinline__ void lds<1>(float *r, const float *p) { r[0] = *p; }

// Reductions over the 16 lanes of one score row (xor offsets below 16 stay in the half).
// All 32 lanes must call them: no thread of these kernels returns early.
__device__ __forceinline__ float row_max(float v) {
    for (int o = 8; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float row_sum(float v) {
    for (int o = 8; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// dst [64][S] := rows r0 .. r0+63 of head `head` of src [*, heads, HD]; rows >= rend are
// zero. Consecutive threads read consecutive floats of a row (coalesced; no alignment is
// assumed of src) and write consecutive banks.
template <int HD, int S>
__device__ __forceinline__ void load_tile(float *dst, const float *__restrict__ src, int r0, int rend, int heads,
                                          int head) {
#pragma unroll 4
    for (int it = 0; it < 64 * HD / THREADS; it++) {
        int idx = it * THREADS + threadIdx.x, r = idx / HD, d = idx % HD, row = r0 + r;
        dst[r * S + d] = row < rend ? src[((size_t)row * heads + head) * HD + d] : 0.0f;
    }
}

// acc[r][c] += A[ar + r, :] · B[tx + 16 c, :] over HD, A [.][AS] and B [.][BS] in shared
// memory. A's rows are the same for a whole half-warp (broadcast), B's differ per lane.
template <int HD, int AS, int BS>
__device__ __forceinline__ void dot_tile(float (&acc)[4][4], const float *A, int ar, const float *B, int tx) {
#pragma unroll 2
    for (int d = 0; d < HD; d += 4) {
        float a[4][4], b[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) lds<4>(a[r], A + (ar + r) * AS + d);
#pragma unroll
        for (int c = 0; c < 4; c++) lds<4>(b[c], B + (tx + 16 * c) * BS + d);
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[r][c] = fmaf(a[r][e], b[c][e], acc[r][c]);
    }
}

// The column of X a thread holds as acc[r][c * VW + e].
template <int HD> __device__ __forceinline__ int out_col(int c, int e, int tx) {
    constexpr int VW = vec_width(HD);
    return c * 16 * VW + tx * VW + e;
}

// acc[r][c * VW + e] += sum over j < 64 of P[pr + r, j] · X[j, out_col(c, e)],
// P [64][PS] (this warp's rows), X [64][XS] in shared memory.
template <int HD, int XS>
__device__ __forceinline__ void pv_tile(float (&acc)[4][HD / 16], const float *P, int pr, const float *X, int tx) {
    constexpr int VW = vec_width(HD), NV = HD / 16 / VW;
#pragma unroll 2
    for (int j = 0; j < 64; j += 4) {
        float p[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) lds<4>(p[r], P + (pr + r) * PS + j);
#pragma unroll
        for (int jj = 0; jj < 4; jj++) {
            float x[NV][VW];
#pragma unroll
            for (int c = 0; c < NV; c++) lds<VW>(x[c], X + (j + jj) * XS + c * 16 * VW + tx * VW);
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < NV; c++)
#pragma unroll
                    for (int e = 0; e < VW; e++)
                        acc[r][c * VW + e] = fmaf(p[r][jj], x[c][e], acc[r][c * VW + e]);
        }
    }
}

// ---- forward ----

// Shared memory of the forward kernel, in floats.
template <int HD> struct FwdSmem {
    static constexpr int KS = padded<HD>();
    static constexpr int Q = 0;                              // Qs [BQ][HD]
    static constexpr int K = Q + BQ * HD;                    // Ks [BK][KS], then Ps [BQ][PS]
    static constexpr int V = K + cmax(BK * KS, BQ * PS);     // Vs [BK][HD]
    static constexpr size_t bytes = sizeof(float) * (size_t)(V + BK * HD);
};

// One block per (tile of 64 queries, query head). Online softmax over key tiles: m, the
// running max, and l, the running sum (per thread: its 4 keys of each tile; the row's
// 16 threads are summed at the end), rescale the output rows when the max grows.
// out [N, NH, HD] and lse [N, NH] are written for every query of the tile below N.
template <int HD>
__global__ void __launch_bounds__(THREADS, HD <= 128 ? 2 : 1)
    attention_forward_kernel(float *__restrict__ out, float *__restrict__ lse, const float *__restrict__ q,
                             const float *__restrict__ k, const float *__restrict__ v,
                             const int32_t *__restrict__ seg_start, int N, int NH, int KVH, float scale) {
    using L = FwdSmem<HD>;
    constexpr int KS = L::KS, NC = HD / 16, VW = vec_width(HD), NV = NC / VW;
    extern __shared__ __align__(16) float attn_smem[];
    float *Qs = attn_smem + L::Q, *Ks = attn_smem + L::K, *Vs = attn_smem + L::V;
    float *Ps = Ks;  // P overwrites the keys once every warp has its scores

    // The last query tiles see the most keys: start them first so they do not trail.
    const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, g = h / (NH / KVH);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int qend = min(i0 + BQ, N);              // queries [i0, qend)
    const int kbeg = first_key(seg_start, i0);     // keys [kbeg, qend) cover the whole tile

    load_tile<HD, HD>(Qs, q, i0, qend, NH, h);
    int lo[4];  // row r sees keys lo[r] .. i0 + ty*4 + r; lo > i (no key) for rows past N
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = i0 + ty * 4 + r;
        lo[r] = i < N ? max(first_key(seg_start, i), kbeg) : i + 1;
    }
    float m[4], l[4], o[4][NC];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) o[r][c] = 0.0f;
    }

    for (int j0 = kbeg; j0 < qend; j0 += BK) {
        __syncthreads();  // every warp is done with the previous tile's Ps (in Ks) and Vs
        load_tile<HD, KS>(Ks, k, j0, qend, KVH, g);
        load_tile<HD, HD>(Vs, v, j0, qend, KVH, g);
        __syncthreads();
        float s[4][4] = {};
        dot_tile<HD, HD, KS>(s, Qs, ty * 4, Ks, tx);
        __syncthreads();  // every warp has read Ks before P overwrites it
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = i0 + ty * 4 + r;
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = j0 + tx + 16 * c;
                s[r][c] = (j >= lo[r] && j <= i) ? s[r][c] * scale : -INFINITY;
                mx = fmaxf(mx, s[r][c]);
            }
            const float mnew = fmaxf(m[r], row_max(mx));
            // Until a row has seen a key its max is -inf: shift by 0 then, so that the
            // masked scores give exp(-inf) = 0 rather than exp(-inf + inf) = NaN.
            const float shift = mnew == -INFINITY ? 0.0f : mnew;
            const float corr = expf(m[r] - shift);  // 0 while the row was empty, else <= 1
            m[r] = mnew;
            l[r] *= corr;
#pragma unroll
            for (int c = 0; c < NC; c++) o[r][c] *= corr;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float p = expf(s[r][c] - shift);
                l[r] += p;
                Ps[(ty * 4 + r) * PS + tx + 16 * c] = p;
            }
        }
        __syncwarp();  // this warp's rows of P are written by this warp alone
        pv_tile<HD, HD>(o, Ps, ty * 4, Vs, tx);
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const float sum = row_sum(l[r]);  // every row holds its own key: sum > 0 below N
        const int i = i0 + ty * 4 + r;
        if (i < N) {
            const float inv = 1.0f / sum;
            float *orow = out + ((size_t)i * NH + h) * HD;
#pragma unroll
            for (int c = 0; c < NV; c++)
#pragma unroll
                for (int e = 0; e < VW; e++) orow[out_col<HD>(c, e, tx)] = o[r][c * VW + e] * inv;
            if (tx == 0) lse[(size_t)i * NH + h] = m[r] + logf(sum);
        }
    }
}

// ---- backward ----

// D [rows] = sum_d dout[row, d] · out[row, d] for rows = N·NH rows of HD, one warp per
// row, summed in double like the CPU: dS = P (dP - D) subtracts nearly equal values.
template <typename T>
__global__ void attention_backward_d_kernel(float *__restrict__ D, const T *__restrict__ dout,
                                            const T *__restrict__ out, long rows, int HD) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp: row is the same for its 32 lanes
    const T *a = dout + row * HD, *o = out + row * HD;
    double sum = 0.0;
    for (int d = lane; d < HD; d += 32) sum += (double)(float)a[d] * (double)(float)o[d];
    sum = warp_sum_d(sum);
    if (lane == 0) D[row] = (float)sum;
}

// Shared memory of the dq kernel, in floats.
template <int HD> struct DqSmem {
    static constexpr int KS = padded<HD>();
    static constexpr int Q = 0;                              // Qs  [BQ][HD]
    static constexpr int DO = Q + BQ * HD;                   // dOs [BQ][HD]
    static constexpr int K = DO + BQ * HD;                   // Ks  [BK][KS]
    static constexpr int V = K + BK * KS;                    // Vs  [BK][KS], then dSs [BQ][PS]
    static constexpr size_t bytes = sizeof(float) * (size_t)(V + cmax(BK * KS, BQ * PS));
};

// One block per (tile of 64 queries, query head), looping over the same key tiles as the
// forward pass: S = q k^T, dP = dout v^T, P = exp(S·scale - lse), dS = P (dP - D) · scale,
// dq += dS · k. dq [N, NH, HD] is accumulated (+=) once per element at the end, after
// summing the key tiles in order.
template <int HD>
__global__ void __launch_bounds__(THREADS, HD <= 64 ? 2 : 1)
    attention_backward_dq_kernel(float *__restrict__ dq, const float *__restrict__ dout,
                                 const float *__restrict__ lse, const float *__restrict__ D,
                                 const float *__restrict__ q, const float *__restrict__ k,
                                 const float *__restrict__ v, const int32_t *__restrict__ seg_start, int N, int NH,
                                 int KVH, float scale) {
    using L = DqSmem<HD>;
    constexpr int KS = L::KS, NC = HD / 16, VW = vec_width(HD), NV = NC / VW;
    extern __shared__ __align__(16) float attn_smem[];
    float *Qs = attn_smem + L::Q, *dOs = attn_smem + L::DO, *Ks = attn_smem + L::K, *Vs = attn_smem + L::V;
    float *dSs = Vs;  // dS overwrites the values once every warp has its dP

    const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, g = h / (NH / KVH);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int qend = min(i0 + BQ, N), kbeg = first_key(seg_start, i0);

    load_tile<HD, HD>(Qs, q, i0, qend, NH, h);
    load_tile<HD, HD>(dOs, dout, i0, qend, NH, h);
    int lo[4];
    float lse_r[4], D_r[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int i = i0 + ty * 4 + r;
        bool in = i < N;
        lo[r] = in ? max(first_key(seg_start, i), kbeg) : i + 1;
        lse_r[r] = in ? lse[(size_t)i * NH + h] : 0.0f;
        D_r[r] = in ? D[(size_t)i * NH + h] : 0.0f;
    }
    float acc[4][NC];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;

    for (int j0 = kbeg; j0 < qend; j0 += BK) {
        __syncthreads();  // every warp is done with the previous tile's Ks and dSs (in Vs)
        load_tile<HD, KS>(Ks, k, j0, qend, KVH, g);
        load_tile<HD, KS>(Vs, v, j0, qend, KVH, g);
        __syncthreads();
        float s[4][4] = {}, dp[4][4] = {};
        dot_tile<HD, HD, KS>(s, Qs, ty * 4, Ks, tx);
        dot_tile<HD, HD, KS>(dp, dOs, ty * 4, Vs, tx);
        __syncthreads();  // every warp has read Vs before dS overwrites it
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = i0 + ty * 4 + r;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = j0 + tx + 16 * c;
                float ds = 0.0f;
                if (j >= lo[r] && j <= i) {
                    float p = expf(s[r][c] * scale - lse_r[r]);
                    ds = p * (dp[r][c] - D_r[r]) * scale;
                }
                dSs[(ty * 4 + r) * PS + tx + 16 * c] = ds;
            }
        }
        __syncwarp();  // this warp's rows of dS are written by this warp alone
        pv_tile<HD, KS>(acc, dSs, ty * 4, Ks, tx);  // dq += dS · k
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = i0 + ty * 4 + r;
        if (i < N) {
            float *row = dq + ((size_t)i * NH + h) * HD;
#pragma unroll
            for (int c = 0; c < NV; c++)
#pragma unroll
                for (int e = 0; e < VW; e++) row[out_col<HD>(c, e, tx)] += acc[r][c * VW + e];
        }
    }
}

// Shared memory of the dk/dv kernel, in floats (the last BQ + 1 are ints).
template <int HD> struct DkvSmem {
    static constexpr int QS = padded<HD>();
    static constexpr int K = 0;                     // Ks   [BK][HD]  this block's keys
    static constexpr int V = K + BK * HD;           // Vs   [BK][HD]  and values
    static constexpr int Q = V + BK * HD;           // Qs   [BQ][QS]  the current query tile
    static constexpr int DO = Q + BQ * QS;          // dOs  [BQ][QS]  its output gradients
    static constexpr int P = DO + BQ * QS;          // Ps   [BK][PS]  P^T, then dS^T
    static constexpr int LSE = P + BK * PS;         // lse  [BQ]      of the query tile
    static constexpr int DD = LSE + BQ;             // D    [BQ]
    static constexpr int LO = DD + BQ;              // int  [BQ]      first key of each query
    static constexpr int IEND = LO + BQ;            // int  [1]       end of the queries to visit
    static constexpr size_t bytes = sizeof(float) * (size_t)(IEND + 4);
};

// One block per (tile of 64 keys, kv head g). For every query head of the group and every
// query tile that can see the keys (from the tile's first key to the end of its last
// key's sequence): S^T = k q^T, dP^T = v dout^T, P^T, dS^T as in the dq kernel, then
// dv += P^T · dout and dk += dS^T · q. dk, dv [N, KVH, HD] are accumulated (+=) once per
// element at the end; the sum runs over (head, query tile) in order.
template <int HD>
__global__ void __launch_bounds__(THREADS, HD <= 64 ? 2 : 1)
    attention_backward_dkdv_kernel(float *__restrict__ dk, float *__restrict__ dv, const float *__restrict__ dout,
                                   const float *__restrict__ lse, const float *__restrict__ D,
                                   const float *__restrict__ q, const float *__restrict__ k,
                                   const float *__restrict__ v, const int32_t *__restrict__ seg_start, int N,
                                   int NH, int KVH, float scale) {
    using L = DkvSmem<HD>;
    constexpr int QS = L::QS, NC = HD / 16, VW = vec_width(HD), NV = NC / VW;
    extern __shared__ __align__(16) float attn_smem[];
    float *Ks = attn_smem + L::K, *Vs = attn_smem + L::V, *Qs = attn_smem + L::Q, *dOs = attn_smem + L::DO;
    float *Ps = attn_smem + L::P, *lse_s = attn_smem + L::LSE, *D_s = attn_smem + L::DD;
    int *lo_s = reinterpret_cast<int *>(attn_smem + L::LO), *iend_s = reinterpret_cast<int *>(attn_smem + L::IEND);

    // The first key tiles of a sequence are seen by the most queries, and come first.
    const int j0 = blockIdx.x * BK, g = blockIdx.y, G = NH / KVH;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int jend = min(j0 + BK, N);  // keys [j0, jend)

    load_tile<HD, HD>(Ks, k, j0, jend, KVH, g);
    load_tile<HD, HD>(Vs, v, j0, jend, KVH, g);
    if (threadIdx.x == 0) *iend_s = sequence_end(seg_start, jend - 1, N);
    __syncthreads();
    const int iend = *iend_s;  // queries [j0, iend) can see some key of the tile

    float dk_acc[4][NC], dv_acc[4][NC];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) dk_acc[r][c] = 0.0f, dv_acc[r][c] = 0.0f;

    for (int h = g * G; h < (g + 1) * G; h++) {
        for (int i0 = j0; i0 < iend; i0 += BQ) {
            __syncthreads();  // every warp is done with the previous query tile
            load_tile<HD, QS>(Qs, q, i0, iend, NH, h);
            load_tile<HD, QS>(dOs, dout, i0, iend, NH, h);
            if (threadIdx.x < BQ) {
                int i = i0 + threadIdx.x;
                bool in = i < iend;
                lse_s[threadIdx.x] = in ? lse[(size_t)i * NH + h] : 0.0f;
                D_s[threadIdx.x] = in ? D[(size_t)i * NH + h] : 0.0f;
                lo_s[threadIdx.x] = in ? first_key(seg_start, i) : INT_MAX;  // past iend: no key
            }
            __syncthreads();
            // s[r][c], dp[r][c]: key j0 + ty*4 + r against query i0 + tx + 16c.
            float s[4][4] = {}, dp[4][4] = {};
            dot_tile<HD, HD, QS>(s, Ks, ty * 4, Qs, tx);
            dot_tile<HD, HD, QS>(dp, Vs, ty * 4, dOs, tx);
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int j = j0 + ty * 4 + r;  // j <= i < iend <= N also drops keys past N
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int ic = tx + 16 * c, i = i0 + ic;
                    float p = 0.0f, ds = 0.0f;
                    if (j >= lo_s[ic] && j <= i) {
                        p = expf(s[r][c] * scale - lse_s[ic]);
                        ds = p * (dp[r][c] - D_s[ic]) * scale;
                    }
                    Ps[(ty * 4 + r) * PS + ic] = p;
                    dp[r][c] = ds;
                }
            }
            __syncwarp();  // this warp's rows of P^T are written by this warp alone
            pv_tile<HD, QS>(dv_acc, Ps, ty * 4, dOs, tx);  // dv += P^T · dout
            __syncwarp();  // all its lanes have read P^T before dS^T replaces it
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < 4; c++) Ps[(ty * 4 + r) * PS + tx + 16 * c] = dp[r][c];
            __syncwarp();
            pv_tile<HD, QS>(dk_acc, Ps, ty * 4, Qs, tx);  // dk += dS^T · q
        }
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int j = j0 + ty * 4 + r;
        if (j < N) {
            float *krow = dk + ((size_t)j * KVH + g) * HD, *vrow = dv + ((size_t)j * KVH + g) * HD;
#pragma unroll
            for (int c = 0; c < NV; c++)
#pragma unroll
                for (int e = 0; e < VW; e++) {
                    krow[out_col<HD>(c, e, tx)] += dk_acc[r][c * VW + e];
                    vrow[out_col<HD>(c, e, tx)] += dv_acc[r][c * VW + e];
                }
        }
    }
}

// ---- launches ----


template <int HD>
void launch_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *seg_start,
                    int N, int NH, int KVH, float scale) {
    static bool opted;
    const size_t smem = FwdSmem<HD>::bytes;
    allow_smem(attention_forward_kernel<HD>, smem, &opted);
    dim3 grid(cuda_blocks(N, BQ), (unsigned)NH);
    attention_forward_kernel<HD>
        <<<grid, THREADS, smem, cuda_stream()>>>(out, lse, q, k, v, seg_start, N, NH, KVH, scale);
    CUDA_LAUNCH_CHECK();
}

template <int HD>
void launch_backward(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                     const float *q, const float *k, const float *v, const int32_t *seg_start, int N, int NH,
                     int KVH, float scale) {
    static bool opted_dq, opted_dkdv;
    const size_t smem_dq = DqSmem<HD>::bytes, smem_dkdv = DkvSmem<HD>::bytes;
    allow_smem(attention_backward_dq_kernel<HD>, smem_dq, &opted_dq);
    allow_smem(attention_backward_dkdv_kernel<HD>, smem_dkdv, &opted_dkdv);
    dim3 grid_dq(cuda_blocks(N, BQ), (unsigned)NH), grid_dkdv(cuda_blocks(N, BK), (unsigned)KVH);
    attention_backward_dq_kernel<HD>
        <<<grid_dq, THREADS, smem_dq, cuda_stream()>>>(dq, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale);
    CUDA_LAUNCH_CHECK();
    attention_backward_dkdv_kernel<HD><<<grid_dkdv, THREADS, smem_dkdv, cuda_stream()>>>(
        dk, dv, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale);
    CUDA_LAUNCH_CHECK();
}

// Heads must divide into groups; the checked configs guarantee it, a bad call notes it.
bool heads_ok(int NH, int KVH) {
    if (NH > 0 && KVH > 0 && NH % KVH == 0 && NH <= 65535) return true;
    cuda_note_message("attention: NH must be a positive multiple of KVH (and at most 65535)", __FILE__, __LINE__);
    return false;
}

}  // namespace

template <typename T> static void row_dot(float *D, const T *dout, const T *out, long rows, int HD) {
    const int threads = 256, warps = threads / 32;
    attention_backward_d_kernel<T><<<cuda_blocks(rows, warps), threads, 0, cuda_stream()>>>(D, dout, out, rows, HD);
    CUDA_LAUNCH_CHECK();
}
void attention_row_dot(float *D, const float *dout, const float *out, long rows, int HD) {
    row_dot(D, dout, out, rows, HD);
}
void attention_row_dot(float *D, const __nv_bfloat16 *dout, const __nv_bfloat16 *out, long rows, int HD) {
    row_dot(D, dout, out, rows, HD);
}

// Which tensor-core kernels bf16 mode runs: 1 mma.sync, 0 WMMA, -1 not chosen yet (then
// TP_CUDA_ATTENTION decides: "wmma", else mma.sync). mma.sync is the default without a GPU
// measurement: its loops issue 4-7 instructions a tensor-core product where WMMA's issue
// 30-50 (sm_90 SASS), and WMMA's measured 71 / 47 TFLOP/s (forward / backward) made
// attention a fifth of a 0.5B SFT step (tests/bench/GPU_NOTES.md).
static int attention_kernel = -1;

extern "C" int cuda_set_attention_kernel(const char *name) {
    if (!strcmp(name, "mma")) attention_kernel = 1;
    else if (!strcmp(name, "wmma")) attention_kernel = 0;
    else return -1;
    return 0;
}

// The kernels the last forward or backward call ran (cuda_attention_last_path).
static const char *last_path = "none";
extern "C" const char *cuda_attention_last_path(void) { return last_path; }

bool cuda_attention_mma(void) {
    if (attention_kernel < 0) {
        const char *env = getenv("TP_CUDA_ATTENTION");
        attention_kernel = !(env && !strcmp(env, "wmma"));
    }
    return attention_kernel == 1;
}

// The tensor-core kernels for bf16 matrix products (attention_tc.h): mma.sync when chosen,
// else WMMA. false: neither took the call (the caller runs fp32 kernels).
template <typename T>
static bool tensor_core_forward(T *out, float *lse, const T *q, const T *k, const T *v, const int32_t *seg_start,
                                int N, int NH, int KVH, int HD, float scale) {
    if (!cuda_matmul_bf16()) return false;
    last_path = "mma";
    if (cuda_attention_mma() && attention_mma_forward(out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale)) return true;
    last_path = "wmma";
    return attention_tc_forward(out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale);
}
template <typename T>
static bool tensor_core_backward(float *dq, float *dk, float *dv, const T *dout, const T *out, const float *lse,
                                 const T *q, const T *k, const T *v, const int32_t *seg_start, int N, int NH, int KVH,
                                 int HD, float scale) {
    if (!cuda_matmul_bf16()) return false;
    last_path = "mma";
    if (cuda_attention_mma() &&
        attention_mma_backward(dq, dk, dv, dout, out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale))
        return true;
    last_path = "wmma";
    return attention_tc_backward(dq, dk, dv, dout, out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale);
}

extern "C" void cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                       const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale) {
    if (N <= 0 || !heads_ok(NH, KVH)) return;
    if (tensor_core_forward(out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale)) return;
    last_path = "fp32";
    switch (HD) {
    case 16: launch_forward<16>(out, lse, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 32: launch_forward<32>(out, lse, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 64: launch_forward<64>(out, lse, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 128: launch_forward<128>(out, lse, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 256: launch_forward<256>(out, lse, q, k, v, seg_start, N, NH, KVH, scale); break;
    default: cuda_note_message("attention: head_dim must be 16, 32, 64, 128 or 256", __FILE__, __LINE__);
    }
}

// ---- bf16 activations ----

typedef __nv_bfloat16 bf16;

extern "C" void cuda_attention_forward_bf16(void *out, float *lse, const void *q, const void *k, const void *v,
                                            const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale) {
    if (N <= 0 || !heads_ok(NH, KVH)) return;
    bf16 *o = (bf16 *)out;
    const bf16 *bq = (const bf16 *)q, *bk = (const bf16 *)k, *bv = (const bf16 *)v;
    if (tensor_core_forward(o, lse, bq, bk, bv, seg_start, N, NH, KVH, HD, scale)) return;
    // fp32 copies [out | q | k | v] through the fp32 op
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    float *w = (float *)cuda_scratch(SCRATCH_ATTENTION_WIDE, sizeof(float) * (2 * nq + 2 * nkv));
    if (!w) return;  // noted
    float *wo = w, *wq = wo + nq, *wk = wq + nq, *wv = wk + nkv;
    cuda_widen_bf16(wq, q, nq), cuda_widen_bf16(wk, k, nkv), cuda_widen_bf16(wv, v, nkv);
    cuda_attention_forward(wo, lse, wq, wk, wv, seg_start, N, NH, KVH, HD, scale);
    cuda_round_bf16(out, wo, nq);
}

extern "C" void cuda_attention_backward_bf16(float *dq, float *dk, float *dv, const void *dout, const void *out,
                                             const float *lse, const void *q, const void *k, const void *v,
                                             const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale) {
    if (N <= 0 || !heads_ok(NH, KVH)) return;
    const bf16 *bdo = (const bf16 *)dout, *bo = (const bf16 *)out;
    const bf16 *bq = (const bf16 *)q, *bk = (const bf16 *)k, *bv = (const bf16 *)v;
    if (tensor_core_backward(dq, dk, dv, bdo, bo, lse, bq, bk, bv, seg_start, N, NH, KVH, HD, scale)) return;
    // fp32 copies [dout | out | q | k | v] through the fp32 op
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    float *w = (float *)cuda_scratch(SCRATCH_ATTENTION_WIDE, sizeof(float) * (3 * nq + 2 * nkv));
    if (!w) return;  // noted
    float *wdo = w, *wo = wdo + nq, *wq = wo + nq, *wk = wq + nq, *wv = wk + nkv;
    cuda_widen_bf16(wdo, dout, nq), cuda_widen_bf16(wo, out, nq);
    cuda_widen_bf16(wq, q, nq), cuda_widen_bf16(wk, k, nkv), cuda_widen_bf16(wv, v, nkv);
    cuda_attention_backward(dq, dk, dv, wdo, wo, lse, wq, wk, wv, seg_start, N, NH, KVH, HD, scale);
}

extern "C" void cuda_attention_backward_unrotated16(void *dq, void *dk, void *dv, int ldq, int ldkv, const void *dout,
                                                    const void *out, const float *lse, const void *q, const void *k,
                                                    const void *v, const int32_t *seg_start, const int32_t *pos,
                                                    const float *inv_freq, int N, int NH, int KVH, int HD,
                                                    float scale) {
    if (N <= 0 || !heads_ok(NH, KVH)) return;
    if (cuda_matmul_bf16() && cuda_attention_mma()) {
        last_path = "mma";
        if (attention_mma_backward_unrotated((bf16 *)dq, (bf16 *)dk, (bf16 *)dv, ldq, ldkv, (const bf16 *)dout,
                                             (const bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k,
                                             (const bf16 *)v, seg_start, pos, inv_freq, N, NH, KVH, HD, scale))
            return;
    }
    // the accumulating form into zeroed fp32 sums, RoPE's backward, then rounded into the rows
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    float *w = (float *)cuda_scratch(SCRATCH_ATTENTION_GRADS, sizeof(float) * (nq + 2 * nkv));
    if (!w) return;  // noted
    float *gq = w, *gk = gq + nq, *gv = gk + nkv;
    cuda_memzero(w, sizeof(float) * (nq + 2 * nkv));
    cuda_attention_backward_bf16(gq, gk, gv, dout, out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale);
    cuda_rope_backward(gq, pos, inv_freq, N, NH, HD);
    cuda_rope_backward(gk, pos, inv_freq, N, KVH, HD);
    cuda_round_bf16_rows(dq, ldq, gq, N, NH * HD);
    cuda_round_bf16_rows(dk, ldkv, gk, N, KVH * HD), cuda_round_bf16_rows(dv, ldkv, gv, N, KVH * HD);
}

extern "C" void cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                        const float *lse, const float *q, const float *k, const float *v,
                                        const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale) {
    if (N <= 0 || !heads_ok(NH, KVH)) return;
    // 256 would need more than the 227 KB of shared memory a block can have with 64 x 64 tiles.
    if (HD != 16 && HD != 32 && HD != 64 && HD != 128) {
        cuda_note_message("attention backward: head_dim must be 16, 32, 64 or 128", __FILE__, __LINE__);
        return;
    }
    if (tensor_core_backward(dq, dk, dv, dout, out, lse, q, k, v, seg_start, N, NH, KVH, HD, scale)) return;
    last_path = "fp32";
    // D [N, NH] = rowsum(dout ∘ out), in the op's scratch slot.
    const long rows = (long)N * NH;
    float *D = (float *)cuda_scratch(SCRATCH_ATTENTION, sizeof(float) * (size_t)rows);
    if (!D) return;
    attention_row_dot(D, dout, out, rows, HD);
    switch (HD) {
    case 16: launch_backward<16>(dq, dk, dv, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 32: launch_backward<32>(dq, dk, dv, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale); break;
    case 64: launch_backward<64>(dq, dk, dv, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale); break;
    default: launch_backward<128>(dq, dk, dv, dout, lse, D, q, k, v, seg_start, N, NH, KVH, scale); break;
    }
}
