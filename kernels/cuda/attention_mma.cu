// attention_mma.cu — causal attention over packed rows with native GQA on tensor cores
// through mma.sync (bf16 inputs, fp32 sums), flash-attention-2 style: the default bf16 path
// (attention_tc.cu's WMMA kernels by cuda_set_attention_kernel / TP_CUDA_ATTENTION=wmma).
//
// Why a second path: the WMMA kernels stage every score tile through shared memory (an
// accumulator fragment's layout is not specified), write P and dS back to shared memory
// for the next product, and load each tile synchronously between barriers. mma.sync's
// m16n8k16 fragments have a documented layout, so here:
//   - scores, probabilities and dS never leave registers: a thread holds rows g = lane/4
//     and g + 8 and columns 2(lane%4), +1 of each 8-column accumulator, and two
//     neighbouring accumulators of P (or dS) are, packed to bf16, exactly the A operand of
//     the next product (16 rows x 16 keys);
//   - tiles come from bf16 copies of q, k, v (and dout) made once per call (or from the
//     tensors themselves when the model keeps them in bf16: no copies), by cp.async,
//     double buffered: the next key (query) tile is on its way while this one is used;
//   - operands are read from shared memory with ldmatrix (.trans for the products whose
//     B operand is stored k-major: P V, dS K, P^T dO, dS^T Q).
//
// Structure and sums are those of attention_tc.cu: the forward pass keeps the log-sum-exp
// of each query; the backward pass recomputes probabilities tile by tile in a dq kernel
// (a block per query tile and head) and a dk/dv kernel (a block per key tile and query
// head, per-head partial sums reduced in head order for GQA): no atomics, every sum in a
// fixed order, the same bits every run. Inputs are rounded to bf16 (nearest even), as are
// P and dS before their products; softmax statistics, D and accumulators are fp32.
// For the attention block with bf16 activations the backward kernels (and the GQA head
// reduction) also write dq, dk, dv in bf16 themselves, dq and dk through RoPE's backward
// rotation (attention_mma_backward_unrotated): no zeroed fp32 sums to add into, no RoPE
// pass over them and no rounding pass before the products that read them.
//
// Every kernel runs 4 warps; a warp owns 16 rows of its block's 64-row tile (queries in
// the forward and dq kernels, keys in the dk/dv kernel).
#include "cuda/attention_tc.h"
#include "cuda/cuda_common.h"
#include "cuda/packed_rows.h"
#include "cuda/rope.h"

#include <cuda_bf16.h>

#include <climits>
#include <math.h>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int BQ = 64;  // queries per tile (forward, dq)
constexpr int BK = 64;  // keys per tile
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
constexpr unsigned FULL = 0xffffffffu;

// Queries per step of the dk/dv kernel: at HD 128 its dk and dv accumulators alone are 128
// registers a thread, so the transposed scores of 32 queries at a time, not 64.
template <int HD> __host__ __device__ constexpr int dkdv_queries() { return HD == 128 ? 32 : 64; }

// (TP_CUDA_SIM: tests/sim runs these instructions on the CPU, with the layouts described here.)
#ifndef TP_CUDA_SIM
__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
#endif

// Four 8 x 8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of
// matrix l / 8, and holds, of matrix i, r[i] = (row l/4, columns 2(l%4), +1), or with
// .trans (rows 2(l%4), +1 of column l/4).
__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const bf16 *p) {
#ifdef TP_CUDA_SIM
    ::sim::ldmatrix_x4(r, p, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}
__device__ __forceinline__ void ldsm4_t(unsigned (&r)[4], const bf16 *p) {
#ifdef TP_CUDA_SIM
    ::sim::ldmatrix_x4(r, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

// d [16 x 8] += a [16 x 16] · b [16 x 8], bf16 operands, fp32 sums. Fragments: a[0] rows
// g, columns 2t, +1 (t = lane % 4); a[1] rows g + 8; a[2], a[3] the same at columns + 8;
// b0 = (k 2t, +1; n g), b1 = (k 2t + 8, +9; n g); d[0], d[1] = (g; 2t, +1), d[2], d[3]
// = (g + 8; 2t, +1).
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef TP_CUDA_SIM
    ::sim::mma_m16n8k16_bf16(d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// The A operand (16 rows x 16 columns) made of accumulators c0 (columns 0-7) and c1 (8-15).
__device__ __forceinline__ void acc_to_a(unsigned (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]), a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]), a[3] = pack_bf16(c1[2], c1[3]);
}

// 16 bytes global -> shared without a register stop; full false: zeros, nothing read.
#ifdef TP_CUDA_SIM
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool full) {
    ::sim::cp_async(dst, src, 16, full);
}
__device__ __forceinline__ void cp_async_commit(void) { ::sim::cp_async_commit(); }
template <int PENDING> __device__ __forceinline__ void cp_async_wait(void) { ::sim::cp_async_wait(PENDING); }
#else
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool full) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
template <int PENDING> __device__ __forceinline__ void cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
#endif

// dst [ROWS][HD + 8] := rows r0 .. r0 + ROWS - 1 of head `head` of src [*, heads, HD]
// (bf16); rows >= rend are zero (so a zero probability times them stays zero). The pad
// puts the 8 rows an ldmatrix reads at one column in distinct banks.
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile_async(bf16 *dst, const bf16 *__restrict__ src, int r0, int rend, int heads,
                                                int head) {
    constexpr int LD = HD + 8, CH = HD / 8, IT = ROWS * CH / THREADS;  // 16-byte chunks
    static_assert(ROWS * CH % THREADS == 0, "whole rounds of chunks");
#pragma unroll
    for (int it = 0; it < IT; it++) {
        const int idx = it * THREADS + threadIdx.x, r = idx / CH, c = idx % CH, row = r0 + r;
        const bool in = row < rend;
        cp_async16(dst + r * LD + c * 8, in ? src + ((size_t)row * heads + head) * HD + c * 8 : src, in);
    }
}

// Key tile ti of ntiles (keys j0 = kbeg + 64 ti ..) ready in buffer ti & 1 of Ks, Vs: the
// next tile's copies are started into the other buffer (freed by the last iteration's
// barrier), then this thread's copies of tile ti are waited for; the caller's barrier then
// makes every thread's visible.
template <int HD>
__device__ __forceinline__ void kv_tile_ready(bf16 *Ks, bf16 *Vs, const bf16 *__restrict__ k,
                                              const bf16 *__restrict__ v, int ti, int ntiles, int j0, int qend,
                                              int KVH, int kvh) {
    constexpr int TILE = 64 * (HD + 8);
    if (ti + 1 < ntiles) {
        const int next = (ti + 1) & 1;
        load_tile_async<HD, BK>(Ks + next * TILE, k, j0 + BK, qend, KVH, kvh);
        load_tile_async<HD, BK>(Vs + next * TILE, v, j0 + BK, qend, KVH, kvh);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
}

template <int NF> __device__ __forceinline__ void zero_acc(float (&acc)[NF][4]) {
#pragma unroll
    for (int f = 0; f < NF; f++) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.0f;
}

// 2^x by the SFU's ex2.approx.ftz (what exp2f becomes under --use_fast_math). exp2f adds a
// range guard and two multiplies to every call so that results below 2^-126 stay
// subnormal; here they flush to zero, which no bf16 P, dS or fp32 sum of them can tell.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef TP_CUDA_SIM
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

__device__ __forceinline__ int warp_max(int x) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) x = max(x, __shfl_xor_sync(FULL, x, o));
    return x;
}

// This thread's query rows g and g + 8 of the warp's 16 from wfirst, and the first key each
// sees (INT_MAX past N: none).
__device__ __forceinline__ void thread_rows(int (&qi)[2], int (&qlo)[2], int wfirst, int g, int N,
                                            const int32_t *__restrict__ seg_start) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        qi[r] = wfirst + g + 8 * r;
        qlo[r] = qi[r] < N ? first_key(seg_start, qi[r]) : INT_MAX;
    }
}

// The first key every row of the warp sees (the largest of the rows' first keys; INT_MAX
// when a row is past N). A key tile j0 .. j0 + 63 with j0 >= it and j0 + 63 <= wfirst is
// seen whole by every row: no mask. Most tiles of long sequences are such tiles.
__device__ __forceinline__ int warp_unmasked_from(const int (&qlo)[2]) { return warp_max(max(qlo[0], qlo[1])); }
__device__ __forceinline__ bool tile_unmasked(int j0, int wfirst, int unmasked_from) {
    return j0 >= unmasked_from && j0 + BK - 1 <= wfirst;
}

// Forward scores of a 64-key tile: s = s · sl2 (log2 units), -inf where row r may not see
// key j (MASK), and mt[r] the rows' maxima over this thread's columns.
template <bool MASK>
__device__ __forceinline__ void forward_scores(float (&s)[8][4], float (&mt)[2], float sl2, int j0, int t,
                                               const int (&qlo)[2], const int (&qi)[2]) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e / 2, j = j0 + nt * 8 + 2 * t + (e & 1);
            const float x = (!MASK || (j >= qlo[r] && j <= qi[r])) ? s[nt][e] * sl2 : -INFINITY;
            s[nt][e] = x;
            mt[r] = fmaxf(mt[r], x);
        }
}

// The dq kernel's dS of a 64-key tile, in place of its scores s: P (dP - D) · scale, zero
// where row r may not see key j (MASK); selects rather than branches, so the 32 chains of
// each thread can overlap.
template <bool MASK>
__device__ __forceinline__ void dq_tile_ds(float (&s)[8][4], const float (&dp)[8][4], float sl2, float scale, int j0,
                                           int t, const int (&qlo)[2], const int (&qi)[2], const float (&ql2)[2],
                                           const float (&qD)[2]) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e / 2, j = j0 + nt * 8 + 2 * t + (e & 1);
            const float ds = fast_exp2(s[nt][e] * sl2 - ql2[r]) * (dp[nt][e] - qD[r]) * scale;
            s[nt][e] = (!MASK || (j >= qlo[r] && j <= qi[r])) ? ds : 0.0f;
        }
}

// Scores of a warp's 16 rows against a 64-column tile: s[nt] (columns 8nt .. 8nt + 7) =
// A · B^T, A the warp's rows of As [16][LD] (at As), B the rows of Bs [64][LD], both
// [row][HD] in shared memory. NT accumulators (NT * 8 columns).
template <int HD, int NT>
__device__ __forceinline__ void tile_scores(float (&s)[NT][4], const bf16 *As, const bf16 *Bs, int lane) {
    constexpr int LD = HD + 8;
    zero_acc(s);
#pragma unroll
    for (int kd = 0; kd < HD / 16; kd++) {
        unsigned a[4];
        ldsm4(a, As + (lane & 15) * LD + kd * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            unsigned b[4];  // columns 16np .. +7 (k low, k high), then 16np + 8 .. +15
            ldsm4(b, Bs + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kd * 16 + ((lane >> 3) & 1) * 8);
            mma16816(s[2 * np], a, b[0], b[1]);
            mma16816(s[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// acc [16 x HD] += P · X: P the warp's 16 x (16 KT) probabilities (or dS) in accumulators
// p[2KT], X [16 KT][LD] rows of shared memory read k-major (.trans).
template <int HD, int KT>
__device__ __forceinline__ void tile_accumulate(float (&acc)[HD / 8][4], const float (&p)[2 * KT][4], const bf16 *Xs,
                                                int lane) {
    constexpr int LD = HD + 8;
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        unsigned a[4];
        acc_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < HD / 16; dp++) {
            unsigned b[4];  // rows 16kk .. +7, 16kk + 8 .. +15 of columns 16dp .. +7, then of 16dp + 8 .. +15
            ldsm4_t(b, Xs + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dp * 16 + (lane >> 4) * 8);
            mma16816(acc[2 * dp], a, b[0], b[1]);
            mma16816(acc[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

// Writes (add false) or adds to (add true) rows row0 + g, row0 + g + 8 (those < rend) of
// dst (rows ld elements apart, a head HD of them) at head `head` from a warp's
// accumulators; a bf16 dst is written rounded (never added to).
template <int HD, typename T>
__device__ __forceinline__ void store_rows(T *__restrict__ dst, const float (&acc)[HD / 8][4], int row0, int rend,
                                           int ld, int head, int lane, bool add) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + g + 8 * r;
        if (row >= rend) continue;
        T *base = dst + (size_t)row * ld + head * HD + 2 * t;
#pragma unroll
        for (int no = 0; no < HD / 8; no++) {
            if constexpr (sizeof(T) == sizeof(bf16)) {
                *reinterpret_cast<unsigned *>(base + no * 8) = pack_bf16(acc[no][2 * r], acc[no][2 * r + 1]);
            } else {
                float2 *p = reinterpret_cast<float2 *>(base + no * 8);
                float2 x = make_float2(acc[no][2 * r], acc[no][2 * r + 1]);
                if (add) {
                    const float2 y = *p;
                    x.x += y.x, x.y += y.y;
                }
                *p = x;
            }
        }
    }
}

// store_rows (written, rounded to bf16) after RoPE's backward rotation at each row's
// position pos[row] (rope.h, sign -1): the gradient of the rows before RoPE. Columns c and
// c + HD/2 pair up, and a thread holds both (accumulators no and no + HD/16).
template <int HD>
__device__ __forceinline__ void store_rows_unrotated(bf16 *__restrict__ dst, float (&acc)[HD / 8][4], int row0,
                                                     int rend, int ld, int head, int lane,
                                                     const int32_t *__restrict__ pos,
                                                     const float *__restrict__ inv_freq) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + g + 8 * r;
        if (row >= rend) continue;
        const int p = pos[row];
#pragma unroll
        for (int no = 0; no < HD / 16; no++)
#pragma unroll
            for (int e = 0; e < 2; e++)
                rope_rotate(acc[no][2 * r + e], acc[no + HD / 16][2 * r + e],
                            rope_angle_of(p, inv_freq[no * 8 + 2 * t + e], -1.0f));
    }
    store_rows<HD>(dst, acc, row0, rend, ld, head, lane, false);
}

// ---- forward ----

template <int HD> struct FwdSmem {
    static constexpr int TILE = 64 * (HD + 8);                     // bf16 elements of a tile
    static constexpr size_t bytes = 5 * TILE * sizeof(bf16);     // Qs, Ks[2], Vs[2]
};

// One block per (tile of 64 queries, query head h); warp w owns queries i0 + 16w .. +15.
// Per key tile: S = Q K^T, the online softmax in registers (log2 units, sl2 = scale ·
// log2 e), O = O · alpha + P V. At the end out = O / l and lse = (m + log2 l) · ln 2.
template <int HD, typename T>
__global__ void __launch_bounds__(THREADS, 2)
    attention_mma_forward_kernel(T *__restrict__ out, float *__restrict__ lse, const bf16 *__restrict__ q,
                                 const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                                 const int32_t *__restrict__ seg_start, int N, int NH, int KVH, float sl2) {
    constexpr int LD = HD + 8, TILE = FwdSmem<HD>::TILE, KD = HD / 16, NO = HD / 8;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mma_smem), *Ks = Qs + TILE, *Vs = Ks + 2 * TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    // The last query tiles see the most keys: start them first so they do not trail.
    const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, kvh = h / (NH / KVH);
    const int qend = min(i0 + BQ, N), kbeg = first_key(seg_start, i0);  // keys [kbeg, qend) cover the tile
    const int wfirst = i0 + warp * 16, wlast = min(wfirst + 15, N - 1);
    const int wlo = wfirst < N ? max(first_key(seg_start, wfirst), kbeg) : INT_MAX;
    int qi[2], qlo[2];
    thread_rows(qi, qlo, wfirst, g, N, seg_start);
    const int unmasked_from = warp_unmasked_from(qlo);

    load_tile_async<HD, BQ>(Qs, q, i0, qend, NH, h);
    load_tile_async<HD, BK>(Ks, k, kbeg, qend, KVH, kvh);
    load_tile_async<HD, BK>(Vs, v, kbeg, qend, KVH, kvh);
    cp_async_commit();

    float o[NO][4];
    zero_acc(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // running max (log2 units), this thread's sum
    unsigned qf[KD][4];                                           // the warp's queries as A operands

    const int ntiles = (qend - kbeg + BK - 1) / BK;
    for (int ti = 0; ti < ntiles; ti++) {
        const int j0 = kbeg + ti * BK, buf = ti & 1;
        kv_tile_ready<HD>(Ks, Vs, k, v, ti, ntiles, j0, qend, KVH, kvh);
        __syncthreads();
        if (ti == 0)  // the query tile came with the first key tile
#pragma unroll
            for (int kd = 0; kd < KD; kd++)
                ldsm4(qf[kd], Qs + (warp * 16 + (lane & 15)) * LD + kd * 16 + (lane >> 4) * 8);
        if (j0 <= wlast && j0 + BK > wlo) {  // warp-uniform: some key of the tile for its rows
            const bf16 *Kt = Ks + buf * TILE, *Vt = Vs + buf * TILE;
            float s[8][4];
            zero_acc(s);
#pragma unroll
            for (int kd = 0; kd < KD; kd++)
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    unsigned b[4];
                    ldsm4(b, Kt + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kd * 16 + ((lane >> 3) & 1) * 8);
                    mma16816(s[2 * np], qf[kd], b[0], b[1]);
                    mma16816(s[2 * np + 1], qf[kd], b[2], b[3]);
                }
            float mt[2] = {-INFINITY, -INFINITY};
            if (tile_unmasked(j0, wfirst, unmasked_from)) forward_scores<false>(s, mt, sl2, j0, t, qlo, qi);
            else forward_scores<true>(s, mt, sl2, j0, t, qlo, qi);
            float mu[2], alpha[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {  // the 4 lanes of a quad hold one row
                mt[r] = fmaxf(mt[r], __shfl_xor_sync(FULL, mt[r], 1));
                mt[r] = fmaxf(mt[r], __shfl_xor_sync(FULL, mt[r], 2));
                const float mn = fmaxf(m[r], mt[r]);
                mu[r] = mn == -INFINITY ? 0.0f : mn;  // a finite reference
                alpha[r] = fast_exp2(m[r] - mu[r]);
                m[r] = mn;
            }
            float ps[2] = {0.0f, 0.0f};
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float p = fast_exp2(s[nt][e] - mu[e / 2]);
                    s[nt][e] = p;
                    ps[e / 2] += p;
                }
#pragma unroll
            for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + ps[r];
#pragma unroll
            for (int no = 0; no < NO; no++)
#pragma unroll
                for (int e = 0; e < 4; e++) o[no][e] *= alpha[e / 2];
            tile_accumulate<HD, 4>(o, s, Vt, lane);
        }
        __syncthreads();  // every warp is done with this buffer before the next prefetch reuses it
    }

    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lr = l[r] + __shfl_xor_sync(FULL, l[r], 1);
        lr += __shfl_xor_sync(FULL, lr, 2);  // >= 1 for a row below N (its own key)
        inv[r] = lr > 0.0f ? 1.0f / lr : 0.0f;
        if (t == 0 && qi[r] < N) lse[(size_t)qi[r] * NH + h] = (m[r] + log2f(lr)) * LN2;
    }
#pragma unroll
    for (int no = 0; no < NO; no++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[no][e] *= inv[e / 2];
    store_rows<HD>(out, o, wfirst, N, NH * HD, h, lane, false);
}

// ---- backward ----

template <int HD> struct DqSmem {
    static constexpr int TILE = 64 * (HD + 8);
    static constexpr size_t bytes = 6 * TILE * sizeof(bf16);  // Qs, dOs, Ks[2], Vs[2]
};

// One block per (tile of 64 queries, query head h), over the same key tiles as the
// forward pass; warp w owns queries i0 + 16w .. +15: S = Q K^T, dP = dO V^T, P =
// exp2(S·sl2 - lse·log2 e), dS = P (dP - D) · scale, dQ += dS K, all in registers. At the
// end, an fp32 dq [N, NH, HD] is accumulated (+=) once per element; a bf16 dq (rows ldq
// elements apart) is written, unrotated (store_rows_unrotated at positions pos).
template <int HD, typename TG>
__global__ void __launch_bounds__(THREADS, 2)
    attention_mma_dq_kernel(TG *__restrict__ dq, const bf16 *__restrict__ dout, const float *__restrict__ lse,
                            const float *__restrict__ D, const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                            const bf16 *__restrict__ v, const int32_t *__restrict__ seg_start,
                            const int32_t *__restrict__ pos, const float *__restrict__ inv_freq, int N, int NH,
                            int KVH, int ldq, float scale, float sl2) {
    constexpr int TILE = DqSmem<HD>::TILE, LD = HD + 8, NO = HD / 8;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Qs = reinterpret_cast<bf16 *>(mma_smem), *dOs = Qs + TILE, *Ks = dOs + TILE, *Vs = Ks + 2 * TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ, h = blockIdx.y, kvh = h / (NH / KVH);
    const int qend = min(i0 + BQ, N), kbeg = first_key(seg_start, i0);
    const int wfirst = i0 + warp * 16, wlast = min(wfirst + 15, N - 1);
    const int wlo = wfirst < N ? max(first_key(seg_start, wfirst), kbeg) : INT_MAX;
    int qi[2], qlo[2];
    float ql2[2], qD[2];  // lse · log2 e and D of this thread's rows
    thread_rows(qi, qlo, wfirst, g, N, seg_start);
    const int unmasked_from = warp_unmasked_from(qlo);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const bool in = qi[r] < N;
        ql2[r] = in ? lse[(size_t)qi[r] * NH + h] * LOG2E : 0.0f;
        qD[r] = in ? D[(size_t)qi[r] * NH + h] : 0.0f;
    }

    load_tile_async<HD, BQ>(Qs, q, i0, qend, NH, h);
    load_tile_async<HD, BQ>(dOs, dout, i0, qend, NH, h);
    load_tile_async<HD, BK>(Ks, k, kbeg, qend, KVH, kvh);
    load_tile_async<HD, BK>(Vs, v, kbeg, qend, KVH, kvh);
    cp_async_commit();

    float acc[NO][4];
    zero_acc(acc);

    const int ntiles = (qend - kbeg + BK - 1) / BK;
    for (int ti = 0; ti < ntiles; ti++) {
        const int j0 = kbeg + ti * BK, buf = ti & 1;
        kv_tile_ready<HD>(Ks, Vs, k, v, ti, ntiles, j0, qend, KVH, kvh);
        __syncthreads();
        if (j0 <= wlast && j0 + BK > wlo) {  // warp-uniform: some key of the tile for its rows
            const bf16 *Kt = Ks + buf * TILE, *Vt = Vs + buf * TILE;
            float s[8][4], dp[8][4];
            tile_scores<HD, 8>(s, Qs + warp * 16 * LD, Kt, lane);
            tile_scores<HD, 8>(dp, dOs + warp * 16 * LD, Vt, lane);
            if (tile_unmasked(j0, wfirst, unmasked_from)) dq_tile_ds<false>(s, dp, sl2, scale, j0, t, qlo, qi, ql2, qD);
            else dq_tile_ds<true>(s, dp, sl2, scale, j0, t, qlo, qi, ql2, qD);
            tile_accumulate<HD, 4>(acc, s, Kt, lane);
        }
        __syncthreads();
    }
    if constexpr (sizeof(TG) == sizeof(bf16)) store_rows_unrotated<HD>(dq, acc, wfirst, N, ldq, h, lane, pos, inv_freq);
    else store_rows<HD>(dq, acc, wfirst, N, NH * HD, h, lane, true);
}

template <int HD> struct DkvSmem {
    static constexpr int QT = dkdv_queries<HD>();
    static constexpr int KTILE = 64 * (HD + 8), QTILE = QT * (HD + 8);
    static constexpr int STATS = 3 * QT;  // a buffer's lse, D (float) and seg_start (int) of its queries
    static constexpr size_t bytes = (2 * KTILE + 4 * QTILE) * sizeof(bf16) + 2 * STATS * 4;
};

// 4 bytes global -> shared (cp.async.ca); full false: zero.
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool full) {
#ifdef TP_CUDA_SIM
    ::sim::cp_async(dst, src, 4, full);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(full ? 4 : 0));
#endif
}

// The dk/dv kernel's query tile i0 .. i0 + QT - 1 into buffer `buf`: rows of q and dout, and
// each query's lse, D and seg_start (rows >= iend: zeros, and the mask drops them).
template <int HD>
__device__ __forceinline__ void load_queries_async(bf16 *Qt, bf16 *dOt, float *st, const bf16 *__restrict__ q,
                                                   const bf16 *__restrict__ dout, const float *__restrict__ lse,
                                                   const float *__restrict__ D, const int32_t *__restrict__ seg_start,
                                                   int i0, int iend, int NH, int h) {
    constexpr int QT = dkdv_queries<HD>();
    static_assert(2 * QT <= THREADS, "a thread a statistic");
    load_tile_async<HD, QT>(Qt, q, i0, iend, NH, h);
    load_tile_async<HD, QT>(dOt, dout, i0, iend, NH, h);
    // threads [0, QT): lse, [QT, 2 QT): D, and [0, QT) seg_start too (straight-line code:
    // a loop choosing among the three arrays cost more instructions than the tile's products)
    const int x = threadIdx.x, i = i0 + x % QT;
    const bool in = i < iend;
    if (x < 2 * QT) cp_async4(st + x, (x < QT ? lse : D) + (in ? (size_t)i * NH + h : 0), in);
    if (x < QT) cp_async4(st + 2 * QT + x, seg_start && in ? seg_start + i : (const int32_t *)lse, seg_start && in);
}

// The dk/dv kernel's P^T and dS^T of a tile of 8 NT queries, in place of S^T (st) and dP^T
// (dpt): P = exp2(S sl2 - lse log2 e), dS = P (dP - D) · scale, zero where key kj[e / 2] is
// not seen by the query (MASK). Each query's statistics are read once for both key rows;
// selects rather than branches, so each thread's chains can overlap.
template <bool MASK, int NT>
__device__ __forceinline__ void dkdv_tile_p_ds(float (&st)[NT][4], float (&dpt)[NT][4], const float *l_s,
                                               const float *D_s, const int32_t *seg_s, const int32_t *seg_start,
                                               float sl2, float scale, int i0, int iend, const int (&kj)[2], int t) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int odd = 0; odd < 2; odd++) {
            const int c = nt * 8 + 2 * t + odd, i = i0 + c;
            const float l2 = l_s[c] * LOG2E, d = D_s[c];
            // first_key of packed_rows.h: seg_start clamped to [0, i]; one sequence without it
            const int lo = MASK && seg_start ? min(max(seg_s[c], 0), i) : 0;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int e = 2 * r + odd, j = kj[r];
                const bool seen = !MASK || (i < iend && j >= lo && j <= i);
                const float p = fast_exp2(st[nt][e] * sl2 - l2), ds = p * (dpt[nt][e] - d) * scale;
                st[nt][e] = seen ? p : 0.0f, dpt[nt][e] = seen ? ds : 0.0f;
            }
        }
}

// One block per (tile of 64 keys, query head h); warp w owns keys j0 + 16w .. +15. For
// every tile of QT queries that can see the keys (from j0 to the end of the last key's
// sequence): S^T = K Q^T, dP^T = V dO^T, P^T and dS^T as in the dq kernel, in registers;
// dV += P^T dO, dK += dS^T Q. At the end, with one query head per kv head (pk NULL), the
// sums go to dk, dv [N, KVH, HD] as the dq kernel's to dq (fp32 added to; bf16 written, dk
// unrotated); otherwise head h's sums are stored (=) into pk, pv [N, NH, HD] for
// attention_group_reduce.
template <int HD, typename TG>
__global__ void __launch_bounds__(THREADS, 2)
    attention_mma_dkdv_kernel(TG *__restrict__ dk, TG *__restrict__ dv, float *__restrict__ pk,
                              float *__restrict__ pv, const bf16 *__restrict__ dout, const float *__restrict__ lse,
                              const float *__restrict__ D, const bf16 *__restrict__ q, const bf16 *__restrict__ k,
                              const bf16 *__restrict__ v, const int32_t *__restrict__ seg_start,
                              const int32_t *__restrict__ pos, const float *__restrict__ inv_freq, int N, int NH,
                              int KVH, int ldkv, float scale, float sl2) {
    using L = DkvSmem<HD>;
    constexpr int QT = L::QT, LD = HD + 8, NO = HD / 8, NT = QT / 8;
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(mma_smem), *Vs = Ks + L::KTILE;
    bf16 *Qs = Vs + L::KTILE, *dOs = Qs + 2 * L::QTILE;            // two buffers each
    float *stats = reinterpret_cast<float *>(dOs + 2 * L::QTILE);  // two buffers of L::STATS
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    // The first key tiles of a sequence are seen by the most queries, and come first.
    const int j0 = blockIdx.x * BK, h = blockIdx.y, kvh = h / (NH / KVH);
    const int jend = min(j0 + BK, N), wj = j0 + warp * 16;  // keys [j0, jend); the warp's from wj
    const int kj[2] = {wj + g, wj + g + 8};                  // this thread's key rows

    load_tile_async<HD, BK>(Ks, k, j0, jend, KVH, kvh);
    load_tile_async<HD, BK>(Vs, v, j0, jend, KVH, kvh);
    // The binary search's dependent loads while the keys are on their way; every thread
    // runs it (the same addresses: one load a warp) rather than wait at a barrier for one.
    const int iend = sequence_end(seg_start, jend - 1, N);  // queries [j0, iend) can see a key of the tile
    load_queries_async<HD>(Qs, dOs, stats, q, dout, lse, D, seg_start, j0, iend, NH, h);
    cp_async_commit();

    float dk_acc[NO][4], dv_acc[NO][4];
    zero_acc(dk_acc), zero_acc(dv_acc);

    const int ntiles = (iend - j0 + QT - 1) / QT;
    for (int ti = 0; ti < ntiles; ti++) {
        const int i0 = j0 + ti * QT, buf = ti & 1;
        if (ti + 1 < ntiles) {  // the next query tile into the other buffers, freed by the last barrier
            const int nb = buf ^ 1;
            load_queries_async<HD>(Qs + nb * L::QTILE, dOs + nb * L::QTILE, stats + nb * L::STATS, q, dout, lse, D,
                                   seg_start, i0 + QT, iend, NH, h);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (wj < jend && i0 + QT > wj) {  // warp-uniform: its keys, and queries at or after them
            const bf16 *Qt = Qs + buf * L::QTILE, *dOt = dOs + buf * L::QTILE;
            const float *l_s = stats + buf * L::STATS, *D_s = l_s + QT;
            const int32_t *seg_s = reinterpret_cast<const int32_t *>(D_s + QT);
            float st[NT][4], dpt[NT][4];  // [key][query]: keys kj[e / 2], queries i0 + 8nt + 2t + (e & 1)
            tile_scores<HD, NT>(st, Ks + warp * 16 * LD, Qt, lane);
            tile_scores<HD, NT>(dpt, Vs + warp * 16 * LD, dOt, lane);
            // The whole tile visible to the warp's keys: every query after them, below iend,
            // in their sequence (seg_start of each <= the first key).
            bool unmasked = i0 >= wj + 15 && i0 + QT <= iend;
            if (unmasked && seg_start) {
                int latest = INT_MIN;
#pragma unroll
                for (int c = lane; c < QT; c += 32) latest = max(latest, seg_s[c]);
                unmasked = warp_max(latest) <= wj;
            }
            if (unmasked) dkdv_tile_p_ds<false, NT>(st, dpt, l_s, D_s, seg_s, seg_start, sl2, scale, i0, iend, kj, t);
            else dkdv_tile_p_ds<true, NT>(st, dpt, l_s, D_s, seg_s, seg_start, sl2, scale, i0, iend, kj, t);
            tile_accumulate<HD, QT / 16>(dv_acc, st, dOt, lane);
            tile_accumulate<HD, QT / 16>(dk_acc, dpt, Qt, lane);
        }
        __syncthreads();
    }
    if (pk) {
        store_rows<HD>(pk, dk_acc, wj, jend, NH * HD, h, lane, false);
        store_rows<HD>(pv, dv_acc, wj, jend, NH * HD, h, lane, false);
    } else if constexpr (sizeof(TG) == sizeof(bf16)) {
        store_rows_unrotated<HD>(dk, dk_acc, wj, jend, ldkv, kvh, lane, pos, inv_freq);
        store_rows<HD>(dv, dv_acc, wj, jend, ldkv, kvh, lane, false);
    } else {
        store_rows<HD>(dk, dk_acc, wj, jend, KVH * HD, kvh, lane, true);
        store_rows<HD>(dv, dv_acc, wj, jend, KVH * HD, kvh, lane, true);
    }
}

// ---- launches ----

template <int HD, typename T>
void launch_forward(T *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seg_start, int N,
                    int NH, int KVH, float scale) {
    static bool opted;
    const size_t smem = FwdSmem<HD>::bytes;
    allow_smem(attention_mma_forward_kernel<HD, T>, smem, &opted);
    dim3 grid(cuda_blocks(N, BQ), (unsigned)NH);
    attention_mma_forward_kernel<HD, T>
        <<<grid, THREADS, smem, cuda_stream()>>>(out, lse, q, k, v, seg_start, N, NH, KVH, scale * LOG2E);
    CUDA_LAUNCH_CHECK();
}

// TG float: dq, dk, dv += the gradients; bf16: written, rounded, dq and dk unrotated at
// positions pos, rows ldq (dq) and ldkv (dk, dv) elements apart (a grouped launch's partial
// sums reduced by attention_group_reduce, or attention_group_reduce_unrotated for bf16).
template <int HD, typename TG>
void launch_backward(TG *dq, TG *dk, TG *dv, float *pk, float *pv, const bf16 *dout, const float *lse,
                     const float *D, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seg_start,
                     const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int ldq, int ldkv,
                     float scale) {
    static bool opted_dq, opted_dkdv;
    const size_t smem_dq = DqSmem<HD>::bytes, smem_dkdv = DkvSmem<HD>::bytes;
    allow_smem(attention_mma_dq_kernel<HD, TG>, smem_dq, &opted_dq);
    allow_smem(attention_mma_dkdv_kernel<HD, TG>, smem_dkdv, &opted_dkdv);
    const float sl2 = scale * LOG2E;
    dim3 grid_dq(cuda_blocks(N, BQ), (unsigned)NH), grid_dkdv(cuda_blocks(N, BK), (unsigned)NH);
    attention_mma_dq_kernel<HD, TG><<<grid_dq, THREADS, smem_dq, cuda_stream()>>>(
        dq, dout, lse, D, q, k, v, seg_start, pos, inv_freq, N, NH, KVH, ldq, scale, sl2);
    CUDA_LAUNCH_CHECK();
    const bool direct = NH == KVH;
    attention_mma_dkdv_kernel<HD, TG><<<grid_dkdv, THREADS, smem_dkdv, cuda_stream()>>>(
        dk, dv, direct ? NULL : pk, direct ? NULL : pv, dout, lse, D, q, k, v, seg_start, pos, inv_freq, N, NH, KVH,
        ldkv, scale, sl2);
    CUDA_LAUNCH_CHECK();
    if (direct) return;
    if constexpr (sizeof(TG) == sizeof(bf16)) attention_group_reduce_unrotated(dk, dv, ldkv, pk, pv, pos, inv_freq, N,
                                                                               NH, KVH, HD);
    else attention_group_reduce(dk, dv, pk, pv, N, NH, KVH, HD);
}

}  // namespace

// A bf16 view of x [n]: x itself, or (fp32) its copy rounded into scratch + at.
static const bf16 *bf16_tiles(const bf16 *x, bf16 *, size_t, size_t) { return x; }
static const bf16 *bf16_tiles(const float *x, bf16 *scratch, size_t at, size_t n) {
    cuda_round_bf16(scratch + at, x, n);
    return scratch + at;
}

template <typename T>
bool attention_mma_forward(T *out, float *lse, const T *q, const T *k, const T *v, const int32_t *seg_start, int N,
                           int NH, int KVH, int HD, float scale) {
    if ((HD != 64 && HD != 128) || !aligned16(out) || !aligned16(q) || !aligned16(k) || !aligned16(v)) return false;
    // fp32 inputs: bf16 copies of q, k, v in a scratch slot of their own
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    bf16 *b = NULL;
    if (sizeof(T) != sizeof(bf16) && !(b = (bf16 *)cuda_scratch(SCRATCH_ATTENTION_BF16, sizeof(bf16) * (nq + 2 * nkv))))
        return true;  // out of device memory (noted): no other path is tried
    const bf16 *bq = bf16_tiles(q, b, 0, nq), *bk = bf16_tiles(k, b, nq, nkv), *bv = bf16_tiles(v, b, nq + nkv, nkv);
    if (HD == 64) launch_forward<64>(out, lse, bq, bk, bv, seg_start, N, NH, KVH, scale);
    else launch_forward<128>(out, lse, bq, bk, bv, seg_start, N, NH, KVH, scale);
    return true;
}
template bool attention_mma_forward(float *, float *, const float *, const float *, const float *, const int32_t *,
                                    int, int, int, int, float);
template bool attention_mma_forward(bf16 *, float *, const bf16 *, const bf16 *, const bf16 *, const int32_t *, int,
                                    int, int, int, float);

template <typename T>
bool attention_mma_backward(float *dq, float *dk, float *dv, const T *dout, const T *out, const float *lse,
                            const T *q, const T *k, const T *v, const int32_t *seg_start, int N, int NH, int KVH,
                            int HD, float scale) {
    if ((HD != 64 && HD != 128) || !aligned16(dq) || !aligned16(dk) || !aligned16(dv) || !aligned16(dout) ||
        !aligned16(q) || !aligned16(k) || !aligned16(v))
        return false;
    float *D, *pk, *pv;
    if (!attention_backward_scratch(&D, &pk, &pv, dout, out, N, NH, KVH, HD)) return true;  // noted
    // fp32 inputs: bf16 copies of q, dout, k, v in a scratch slot of their own
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    bf16 *b = NULL;
    if (sizeof(T) != sizeof(bf16) &&
        !(b = (bf16 *)cuda_scratch(SCRATCH_ATTENTION_BF16, sizeof(bf16) * (2 * nq + 2 * nkv))))
        return true;  // out of device memory (noted): no other path is tried
    const bf16 *bq = bf16_tiles(q, b, 0, nq), *bdo = bf16_tiles(dout, b, nq, nq);
    const bf16 *bk = bf16_tiles(k, b, 2 * nq, nkv), *bv = bf16_tiles(v, b, 2 * nq + nkv, nkv);
    const int ldq = NH * HD, ldkv = KVH * HD;
    if (HD == 64)
        launch_backward<64>(dq, dk, dv, pk, pv, bdo, lse, D, bq, bk, bv, seg_start, NULL, NULL, N, NH, KVH, ldq, ldkv,
                            scale);
    else launch_backward<128>(dq, dk, dv, pk, pv, bdo, lse, D, bq, bk, bv, seg_start, NULL, NULL, N, NH, KVH, ldq,
                              ldkv, scale);
    return true;
}
template bool attention_mma_backward(float *, float *, float *, const float *, const float *, const float *,
                                     const float *, const float *, const float *, const int32_t *, int, int, int, int,
                                     float);
template bool attention_mma_backward(float *, float *, float *, const bf16 *, const bf16 *, const float *,
                                     const bf16 *, const bf16 *, const bf16 *, const int32_t *, int, int, int, int,
                                     float);

bool attention_mma_backward_unrotated(bf16 *dq, bf16 *dk, bf16 *dv, int ldq, int ldkv, const bf16 *dout,
                                      const bf16 *out, const float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                      const int32_t *seg_start, const int32_t *pos, const float *inv_freq, int N,
                                      int NH, int KVH, int HD, float scale) {
    if ((HD != 64 && HD != 128) || !aligned16(dq) || !aligned16(dk) || !aligned16(dv) || !aligned16(dout) ||
        !aligned16(q) || !aligned16(k) || !aligned16(v) || ldq % 8 || ldkv % 8)
        return false;
    float *D, *pk, *pv;
    if (!attention_backward_scratch(&D, &pk, &pv, dout, out, N, NH, KVH, HD)) return true;  // noted
    if (HD == 64) launch_backward<64>(dq, dk, dv, pk, pv, dout, lse, D, q, k, v, seg_start, pos, inv_freq, N, NH, KVH,
                                      ldq, ldkv, scale);
    else launch_backward<128>(dq, dk, dv, pk, pv, dout, lse, D, q, k, v, seg_start, pos, inv_freq, N, NH, KVH, ldq,
                              ldkv, scale);
    return true;
}
