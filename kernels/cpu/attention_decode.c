// attention_decode.c — attention of new tokens against a KV cache: the decode step (one
// token per sequence) and prefill (a prompt's tokens against the prompt so far) alike, on
// a cache of fp32 rows (ops.h) or of bf16 rows (cpu/kv_bf16.h: widened as they are read,
// half the bytes for a step that is bound by reading the cache).
#include "cpu_ops.h"
#include "attention_shared.h"
#include "kv_bf16.h"
#include "linear_bf16.h"
#include "ops.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define HAVE_AVX512_PATH 1
#endif

enum { MAX_GROUP = 64 };  // query heads per kv head handled together

// Each of the G rows of scores s [G][len] := exp(s - its max); inv[h] := 1 / its sum.
static void softmax_rows(float *s, int G, int len, float *inv) {
    for (int h = 0; h < G; h++) {
        float *sh = s + (size_t)h * len, mx = -INFINITY, sum = 0;
        for (int j = 0; j < len; j++) mx = sh[j] > mx ? sh[j] : mx;
        exp_shift_inplace(sh, mx, len);
        for (int j = 0; j < len; j++) sum += sh[j];
        inv[h] = 1.0f / sum;
    }
}

// One (token, kv head) with its G query heads: each cached key and value row is read
// once for all G heads (decode is bound by reading the cache). Scores in float with keys
// in order, softmax with the max subtracted (exp vectorised), then the weighted sum of
// values. s: scratch [G][len].
VECTOR_CLONES static void one_group(float *out, const float *q, const float *k, const float *v, int len,
                                    int kv_stride, int G, int HD, float scale, float *s) {
    for (int j = 0; j < len; j++) {
        const float *kj = k + (size_t)j * kv_stride;
        for (int h = 0; h < G; h++) {
            const float *qh = q + (size_t)h * HD;
            float dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int d = 0; d < HD; d++) dot += qh[d] * kj[d];
            s[(size_t)h * len + j] = dot * scale;
        }
    }
    float inv[MAX_GROUP];
    softmax_rows(s, G, len, inv);
    memset(out, 0, sizeof(float) * (size_t)G * HD);
    for (int j = 0; j < len; j++) {
        const float *vj = v + (size_t)j * kv_stride;
        for (int h = 0; h < G; h++) {
            float p = s[(size_t)h * len + j] * inv[h], *oh = out + (size_t)h * HD;
#pragma omp simd
            for (int d = 0; d < HD; d++) oh[d] += p * vj[d];
        }
    }
}

#ifdef HAVE_AVX512_PATH
// The same computation for HD = 64 or 128 with AVX-512 intrinsics, over `heads` kv heads
// of each cache row at once (all of them: a token's cache is read in order, whole rows;
// one: a (token, kv head) unit). Rows go in blocks of BLOCK = 16 that stay in L1 while
// each kv head's query heads pass over them: for the scores one head at a time, the 16
// rows' dot products summed together (sum16); for the values HN heads at a time with their
// outputs in registers. HD and HN are constants in every call, so the loops unroll: with
// runtime bounds GCC kept the accumulators in memory (3x slower).
#define AVX512 __attribute__((target("avx512f")))
#define INLINE static inline __attribute__((always_inline))
enum { BLOCK = 16, ROW_PREFETCH = 16 };  // rows: a block; how far ahead the cache is fetched

// 16 cache elements from element e of a row array on: fp32, or bf16 widened (exact).
INLINE AVX512 __m512 load16(const void *base, size_t e, bool half) {
    if (!half) return _mm512_loadu_ps((const float *)base + e);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + e));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// r[h][c] := x [HN][HD]'s row h, 16 floats at a time.
INLINE AVX512 void load_heads(__m512 r[4][8], const float *x, int HN, int HD) {
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 8
        for (int c = 0; c < HD / 16; c++) r[h][c] = _mm512_loadu_ps(x + (size_t)h * HD + 16 * c);
}

// [sum a[0], sum a[1], .., sum a[15]]: the 16 vectors' lane sums, by halving pairs of
// them 4 times (30 shuffles and 15 adds for 16 sums, against 8 instructions each alone).
// The pairs are taken in the order a[(i % 4) * 4 + i / 4] so the sums come out in order.
INLINE AVX512 __m512 sum16(const __m512 a[16]) {
    __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {  // 256-bit halves: [8 partial sums of one | of the next]
        __m512 x = a[(2 * i % 4) * 4 + 2 * i / 4], y = a[((2 * i + 1) % 4) * 4 + (2 * i + 1) / 4];
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xee));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)  // 128-bit quarters: 4 partial sums of 4 vectors
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)  // lane pairs: 2 partial sums of 8 vectors
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44), _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xee));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xdd));
}

// s[h][j0..j0+rows) := scale * q[h] . k[j] for HN query heads of one kv head (q [HN][HD],
// rows of s `len` apart) and rows <= 16 of k, `stride` elements apart from element k0 on.
// Each key row is loaded (and, bf16, widened) once for the HN heads: the widening was 2/3
// of the instructions of a pass of one head. A (row, head)'s 16 lanes wait in `lanes` for
// sum16, which sums 16 rows' lanes together; the bits do not depend on HN. A step's
// attention alone (batch 8, 30 layers, 3 kv heads of 3 query heads, 160 rows, bf16):
// 1.44 -> 1.36 ms with the 3 heads in one pass; gen_step batch 8 with 512-token prompts
// +1.8% (5 interleaved pairs), 128-token prompts unchanged.
INLINE AVX512 void scores_block(float *s, int len, const float *q, const void *k, size_t k0, int stride, int j0,
                                int rows, int HN, int HD, float scale, bool half) {
    const int C = HD / 16;
    __m512 qr[4][8], lanes[4][16];
    load_heads(qr, q, HN, HD);
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) {
        __m512 acc[4];
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) acc[h] = _mm512_setzero_ps();
        if (j < rows) {
            size_t kj = k0 + (size_t)(j0 + j) * stride;
#pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                __m512 kc = load16(k, kj + 16 * c, half);
#pragma GCC unroll 4
                for (int h = 0; h < HN; h++) acc[h] = _mm512_fmadd_ps(qr[h][c], kc, acc[h]);
            }
        }
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) lanes[h][j] = acc[h];
    }
    __mmask16 live = (__mmask16)(rows >= 16 ? 0xffff : (1u << rows) - 1);
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
        _mm512_mask_storeu_ps(s + (size_t)h * len + j0, live, _mm512_mul_ps(sum16(lanes[h]), _mm512_set1_ps(scale)));
}

// Each of the G rows of scores s [G][len] := exp(s - its max) / its sum (sums of 16 lanes).
INLINE AVX512 void softmax_block(float *s, int G, int len) {
    for (int h = 0; h < G; h++) {
        float *sh = s + (size_t)h * len;
        __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
        for (int j = 0; j < len; j += 16) {
            __mmask16 m = (__mmask16)(len - j >= 16 ? 0xffff : (1u << (len - j)) - 1);
            mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, sh + j));
        }
        exp_shift_inplace(sh, _mm512_reduce_max_ps(mx), len);
        for (int j = 0; j < len; j += 16) {
            __mmask16 m = (__mmask16)(len - j >= 16 ? 0xffff : (1u << (len - j)) - 1);
            sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(m, sh + j));
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
        for (int j = 0; j < len; j += 16) {
            __mmask16 m = (__mmask16)(len - j >= 16 ? 0xffff : (1u << (len - j)) - 1);
            _mm512_mask_storeu_ps(sh + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sh + j), inv));
        }
    }
}

// out[h] += sum over rows j0..j1 of p[h][j] v[j] for HN heads (out [HN][HD], p rows `len`
// apart, v as k in scores_hn).
INLINE AVX512 void values_hn(float *out, const float *p, int len, const void *v, size_t v0, int stride, int j0, int j1,
                             int HN, int HD, bool half) {
    const int C = HD / 16;
    __m512 acc[4][8];
    load_heads(acc, out, HN, HD);
    for (int j = j0; j < j1; j++) {
        size_t vj = v0 + (size_t)j * stride;
        __m512 pr[4];
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) pr[h] = _mm512_set1_ps(p[(size_t)h * len + j]);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m512 vr = load16(v, vj + 16 * c, half);
#pragma GCC unroll 4
            for (int h = 0; h < HN; h++) acc[h][c] = _mm512_fmadd_ps(pr[h], vr, acc[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) _mm512_storeu_ps(out + (size_t)h * HD + 16 * c, acc[h][c]);
}

// Rows j0 .. j1 (below len) of x, `width` elements of esz bytes each, into L1 (or L2).
INLINE void prefetch_rows(const void *x, size_t x0, int stride, int width, int esz, int j0, int j1, int len,
                          bool l2) {
    for (int j = j0; j < j1 && j < len; j++)
        for (int b = 0; b < width * esz; b += 64) {
            const char *line = (const char *)x + (x0 + (size_t)j * stride) * esz + b;
            if (l2) _mm_prefetch(line, _MM_HINT_T1);
            else _mm_prefetch(line, _MM_HINT_T0);
        }
}

// Part `part` of `parts` of the block ROW_PREFETCH rows after rows j0..j1: the next
// block's lines are requested a slice at a time between the heads' passes over this one.
// Requested all at once (96 lines of a bf16 block of 3 kv heads), they filled the
// line-fill buffers and stalled the passes: the step's attention took 15% longer.
INLINE void prefetch_part(const void *x, size_t x0, int stride, int width, int esz, int j0, int j1, int len,
                          int part, int parts) {
    int from = j0 + ROW_PREFETCH, rows = (j1 + ROW_PREFETCH < len ? j1 + ROW_PREFETCH : len) - from;
    if (rows > 0)
        prefetch_rows(x, x0, stride, width, esz, from + rows * part / parts, from + rows * (part + 1) / parts, len,
                      false);
}

// Scores s [heads·G][len] of one token's queries q [heads·G, HD] for rows j_from..j_to-1
// of k, from element kv0 on (kv head slices of HD at the row's start, rows `stride`
// elements apart, bf16 when half), in blocks of BLOCK from j_from (a multiple of it);
// `bound` limits how far ahead rows are fetched. The first block is requested first.
// With v (laid out as k), each block's value rows are requested into L2 meanwhile, a
// slice per head: the scores are bound by arithmetic and the values by reading the
// cache, so the values then come from L2. A decode step's attention (SmolLM2-135M shape,
// batch 8, 160 rows, bf16 cache, in the generator): 2.05 -> 1.85 ms (medians of 5 runs).
INLINE AVX512 void scores_rows(float *s, const float *q, const void *k, const void *v, size_t kv0, int len, int j_from,
                               int j_to, int bound, int stride, int heads, int G, int HD, float scale, bool half) {
    const int esz = half ? 2 : 4, width = heads * HD;
    // A bf16 cache's passes take HN query heads of a kv head at once (their q in registers
    // beside a widened key row); an fp32 cache's, one head (nothing to widen).
    const int HN_MAX = half ? (HD == 64 ? 4 : 2) : 1, chunks = (G + HN_MAX - 1) / HN_MAX, passes = heads * chunks;
    prefetch_rows(k, kv0, stride, width, esz, j_from, j_from + ROW_PREFETCH, bound, false);
    for (int j0 = j_from; j0 < j_to; j0 += BLOCK) {
        int j1 = j0 + BLOCK < j_to ? j0 + BLOCK : j_to;
        for (int pass = 0; pass < passes; pass++) {
            int kvh = pass / chunks, h = pass % chunks * G / chunks, hn = (pass % chunks + 1) * G / chunks - h;
            int head = kvh * G + h;
            prefetch_part(k, kv0, stride, width, esz, j0, j1, bound, pass, passes);
            if (v)
                prefetch_rows(v, kv0, stride, width, esz, j0 + (j1 - j0) * pass / passes,
                              j0 + (j1 - j0) * (pass + 1) / passes, j1, true);
            float *sh = s + (size_t)head * len;
            const float *qh = q + (size_t)head * HD;
            size_t k0 = kv0 + (size_t)kvh * HD;
#define HEADS(HN) scores_block(sh, len, qh, k, k0, stride, j0, j1 - j0, HN, HD, scale, half)
            if (hn == 4) HEADS(4);
            else if (hn == 3) HEADS(3);
            else if (hn == 2) HEADS(2);
            else HEADS(1);
#undef HEADS
        }
    }
}

// out [heads·G, HD] += the probabilities p [heads·G][len] of rows j_from..j_to-1 times
// those rows of v (laid out as k in scores_rows), block by block, HN heads at a time.
INLINE AVX512 void values_rows(float *out, const float *p, const void *v, size_t kv0, int len, int j_from, int j_to,
                               int bound, int stride, int heads, int G, int HD, bool half) {
    const int esz = half ? 2 : 4, width = heads * HD, HN_MAX = HD == 64 ? 4 : 2;  // HN·C accumulators fit 16 registers
    for (int j0 = j_from; j0 < j_to; j0 += BLOCK) {
        int j1 = j0 + BLOCK < j_to ? j0 + BLOCK : j_to;
        for (int kvh = 0; kvh < heads; kvh++) {
            prefetch_part(v, kv0, stride, width, esz, j0, j1, bound, kvh, heads);
            for (int h = 0; h < G;) {  // HN heads at a time
                int hn = G - h < HN_MAX ? G - h : HN_MAX, head = kvh * G + h;
#define V(HN) values_hn(out + (size_t)head * HD, p + (size_t)head * len, len, v, kv0 + (size_t)kvh * HD, stride, j0, \
                        j1, HN, HD, half)
                if (hn == 4) V(4);
                else if (hn == 3) V(3);
                else if (hn == 2) V(2);
                else V(1);
#undef V
                h += hn;
            }
        }
    }
}

// block [BLOCK][width] := rows j0.. of a bf16 cache from element x0 on, widened (exact),
// with the next block (below `bound`) requested meanwhile.
INLINE AVX512 void widen_block(float *block, const void *x, size_t x0, int j0, int bound, int stride, int width) {
    prefetch_part(x, x0, stride, width, 2, j0, j0 + BLOCK, bound, 0, 1);
    for (int j = 0; j < BLOCK; j++)
        for (int e = 0; e < width; e += 16)
            _mm512_store_ps(block + j * width + e, load16(x, x0 + (size_t)(j0 + j) * stride + e, true));
}

// A unit of `count` tokens: out[t] [heads·G, HD] for queries q[t] against len[t] rows of
// k, v, the first `shared` (a multiple of BLOCK) at element shared0 for every token and
// the rest at kv0[t]. The shared rows go through L1 once for the unit, each block's
// scores (then values) done for every token before the next block; each token's scores
// and sums are computed as for that token alone, so its bits do not depend on the unit.
// s[t]: scratch [heads·G][len[t]].
INLINE AVX512 void heads_hd(float *const out[], const float *const q[], const void *k, const void *v,
                            const size_t kv0[], const int len[], int count, size_t shared0, int shared, int stride,
                            int heads, int G, int HD, float scale, float *const s[], bool half) {
    const int esz = half ? 2 : 4, width = heads * HD, NH = heads * G;
    // A shared block is widened once into fp32 rows here (exact: the same values, so the
    // same bits), then used by every query head of every token of the unit.
    float block[BLOCK * 4 * 128] __attribute__((aligned(64)));
    const bool widen = half && width <= 4 * 128;
    for (int j0 = 0; j0 < shared; j0 += BLOCK) {
        if (widen) {
            widen_block(block, k, shared0, j0, shared, stride, width);
            for (int t = 0; t < count; t++)
                for (int head = 0; head < NH; head++)
                    scores_block(s[t] + (size_t)head * len[t] + j0, len[t], q[t] + (size_t)head * HD, block,
                                 (size_t)(head / G) * HD, width, 0, BLOCK, 1, HD, scale, false);
        } else
            for (int t = 0; t < count; t++)
                scores_rows(s[t], q[t], k, NULL, shared0, len[t], j0, j0 + BLOCK, t == 0 ? shared : 0, stride, heads, G,
                            HD, scale, half);
    }
    for (int t = 0; t < count; t++) {
        scores_rows(s[t], q[t], k, v, kv0[t], len[t], shared, len[t], len[t], stride, heads, G, HD, scale, half);
        softmax_block(s[t], NH, len[t]);
        memset(out[t], 0, sizeof(float) * (size_t)NH * HD);
    }
    if (shared) prefetch_rows(v, shared0, stride, width, esz, 0, ROW_PREFETCH, shared, false);
    for (int j0 = 0; j0 < shared; j0 += BLOCK) {
        if (widen) {
            widen_block(block, v, shared0, j0, shared, stride, width);
            for (int t = 0; t < count; t++)
                values_rows(out[t], s[t] + j0, block, 0, len[t], 0, BLOCK, 0, width, heads, G, HD, false);
        } else
            for (int t = 0; t < count; t++)
                values_rows(out[t], s[t], v, shared0, len[t], j0, j0 + BLOCK, t == 0 ? shared : 0, stride, heads, G,
                            HD, half);
    }
    for (int t = 0; t < count; t++) {
        prefetch_rows(v, kv0[t], stride, width, esz, shared, shared + ROW_PREFETCH, len[t], false);
        values_rows(out[t], s[t], v, kv0[t], len[t], shared, len[t], len[t], stride, heads, G, HD, half);
    }
}

// The kernel for each head size and cache type: HD and half are constants in each.
#define HEADS(NAME, HD_, HALF)                                                                                     \
    static AVX512 void NAME(float *const out[], const float *const q[], const void *k, const void *v,                \
                            const size_t kv0[], const int len[], int count, size_t shared0, int shared, int stride,  \
                            int heads, int G, float scale, float *const s[]) {                                       \
        heads_hd(out, q, k, v, kv0, len, count, shared0, shared, stride, heads, G, HD_, scale, s, HALF);             \
    }
HEADS(heads_hd64, 64, false)
HEADS(heads_hd128, 128, false)
HEADS(heads_hd64_bf16, 64, true)
HEADS(heads_hd128_bf16, 128, true)
#undef HEADS

typedef void heads_fn(float *const out[], const float *const q[], const void *k, const void *v, const size_t kv0[],
                      const int len[], int count, size_t shared0, int shared, int stride, int heads, int G, float scale,
                      float *const s[]);
static heads_fn *heads_kernel(int HD, bool half) {
    if (HD == 64) return half ? heads_hd64_bf16 : heads_hd64;
    if (HD == 128) return half ? heads_hd128_bf16 : heads_hd128;
    return NULL;
}

static bool have_avx512(void) {
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return avx512;
}

// The kernel of the batch path for n tokens, or NULL: with tokens enough to keep every
// thread busy (a decode step of a batch), a token is a unit and its cache rows are read
// whole and in order: 20% faster on one core than a kv head's slice of each row at a time,
// which is still how fewer tokens share out.
static heads_fn *batch_kernel(int HD, bool half, int n) {
    heads_fn *kernel = heads_kernel(HD, half);
    return have_avx512() && kernel && n >= 2 * omp_get_max_threads() ? kernel : NULL;
}
#endif

// A cache: fp32 or bf16 rows.
typedef struct cache {
    const void *k, *v;
    bool half;
} cache;

// dst [len][HD] := rows of a bf16 slice from element e0 on, `stride` apart, widened.
static void widen_slice(float *dst, const uint16_t *src, size_t e0, int len, int stride, int HD) {
    for (int j = 0; j < len; j++)
        for (int d = 0; d < HD; d++) {
            uint32_t u = (uint32_t)src[e0 + (size_t)j * stride + d] << 16;
            memcpy(&dst[(size_t)j * HD + d], &u, 4);
        }
}

// G query heads of one kv head against len rows of its slices (from element at on, rows
// kv_stride apart). s: scratch [G][len]; wide: scratch [2][len][HD] for a bf16 cache
// without the AVX-512 kernels.
static void kv_group(float *out, const float *q, cache c, size_t at, int len, int kv_stride, int G, int HD,
                     float scale, float *s, float *wide) {
#ifdef HAVE_AVX512_PATH
    heads_fn *kernel = heads_kernel(HD, c.half);
    if (have_avx512() && kernel)
        return kernel((float *[]){out}, (const float *[]){q}, c.k, c.v, (size_t[]){at}, (int[]){len}, 1, 0, 0,
                      kv_stride, 1, G, scale, (float *[]){s});
#endif
    if (!c.half)
        return one_group(out, q, (const float *)c.k + at, (const float *)c.v + at, len, kv_stride, G, HD, scale, s);
    float *k = wide, *v = wide + (size_t)len * HD;
    widen_slice(k, c.k, at, len, kv_stride, HD);
    widen_slice(v, c.v, at, len, kv_stride, HD);
    one_group(out, q, k, v, len, HD, G, HD, scale, s);
}

#ifdef HAVE_AVX512_PATH
// A unit of work: tokens order[first .. first + count), the first `shared` rows of whose
// caches are the same rows (read once for the unit).
typedef struct unit {
    int first, count, shared;
} unit;

// Each token alone, except that tokens with the same share_row0 and at least BLOCK shared
// rows go together, split into units of at most UNIT_MAX tokens and at least one a
// thread: each unit reads the shared rows once. Returns the number of units.
enum { UNIT_MAX = 8 };  // a unit's scores stay in L2 (8 tokens x 9 heads x 1000 rows: 288 KB)
static int make_units(unit *units, int *order, const int32_t *share_row0, const int32_t *share_len, const int32_t *len,
                      int n, int threads) {
    int count = 0, at = 0;
#define USABLE(i) (share_len ? (share_len[i] < len[i] ? share_len[i] : len[i]) / BLOCK * BLOCK : 0)
    bool *taken = share_len ? calloc((size_t)n, sizeof *taken) : NULL;
    if (share_len && !taken) abort();
    for (int i = 0; i < n; i++) {
        if (taken && taken[i]) continue;
        int first = at, shared = USABLE(i);
        order[at++] = i;
        for (int j = i + 1; j < n && shared > 0; j++)
            if (!taken[j] && USABLE(j) > 0 && share_row0[j] == share_row0[i]) {
                taken[j] = true, order[at++] = j;
                shared = USABLE(j) < shared ? USABLE(j) : shared;
            }
        int m = at - first, parts = m < threads ? m : threads;
        if (parts < (m + UNIT_MAX - 1) / UNIT_MAX) parts = (m + UNIT_MAX - 1) / UNIT_MAX;
        for (int p = 0; p < parts; p++)
            units[count++] = (unit){first + m * p / parts, m * (p + 1) / parts - m * p / parts, shared};
    }
#undef USABLE
    free(taken);
    return count;
}

// The batch path: units shared out among the threads, each against its tokens' rows read
// whole and in order.
static void decode_units(float *out, const float *q, cache c, heads_fn *kernel, const int32_t *row0, const int32_t *len,
                         const int32_t *share_row0, const int32_t *share_len, int n, int NH, int KVH, int HD,
                         float scale, size_t rows) {
    int group = NH / KVH, kv_stride = KVH * HD, threads = omp_get_max_threads(), max_count = 1;
    unit *units = malloc(sizeof *units * (size_t)n);
    int *order = malloc(sizeof *order * (size_t)n);
    if (!units || !order) abort();
    int n_units = make_units(units, order, share_row0, share_len, len, n, threads);
    for (int u = 0; u < n_units; u++) max_count = units[u].count > max_count ? units[u].count : max_count;
#pragma omp parallel
    {
        float *s = malloc(sizeof(float) * (size_t)NH * rows * (size_t)max_count);
        float **o = malloc(sizeof *o * (size_t)max_count), **ss = malloc(sizeof *ss * (size_t)max_count);
        const float **qq = malloc(sizeof *qq * (size_t)max_count);
        size_t *at = malloc(sizeof *at * (size_t)max_count);
        int *ln = malloc(sizeof *ln * (size_t)max_count);
        if (!s || !o || !ss || !qq || !at || !ln) abort();
#pragma omp for schedule(dynamic, 1)
        for (int u = 0; u < n_units; u++) {
            const unit *w = &units[u];
            int count = 0;
            for (int t = 0; t < w->count; t++) {
                int i = order[w->first + t];
                if (len[i] <= 0) {
                    memset(out + (size_t)i * NH * HD, 0, sizeof(float) * (size_t)NH * HD);
                    continue;
                }
                o[count] = out + (size_t)i * NH * HD, qq[count] = q + (size_t)i * NH * HD;
                at[count] = (size_t)row0[i] * kv_stride, ln[count] = len[i];
                ss[count] = s + (size_t)count * NH * rows;
                count++;
            }
            size_t shared0 = w->shared ? (size_t)share_row0[order[w->first]] * kv_stride : 0;
            if (count) kernel(o, qq, c.k, c.v, at, ln, count, shared0, w->shared, kv_stride, KVH, group, scale, ss);
        }
        free(s), free(o), free(ss), free(qq), free(at), free(ln);
    }
    free(units), free(order);
}
#endif

static void decode(float *out, const float *q, cache c, const int32_t *row0, const int32_t *len,
                   const int32_t *share_row0, const int32_t *share_len, int n, int NH, int KVH, int HD, float scale) {
    int group = NH / KVH, kv_stride = KVH * HD, max_len = 0;
    for (int i = 0; i < n; i++) max_len = len[i] > max_len ? len[i] : max_len;
    size_t rows = (size_t)(max_len ? max_len : 1);
#ifdef HAVE_AVX512_PATH
    heads_fn *kernel = batch_kernel(HD, c.half, n);
    if (kernel) {
        decode_units(out, q, c, kernel, row0, len, share_row0, share_len, n, NH, KVH, HD, scale, rows);
        return;
    }
#else
    (void)share_row0, (void)share_len;
#endif
    // Groups wider than MAX_GROUP go in slices of it.
    int G = group < MAX_GROUP ? group : MAX_GROUP, slices = (group + G - 1) / G;
#pragma omp parallel
    {
        float *s = malloc(sizeof(float) * (size_t)G * rows);
        float *wide = c.half ? malloc(sizeof(float) * 2 * rows * (size_t)HD) : NULL;
        if (!s || (c.half && !wide)) abort();
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int i = 0; i < n; i++)
            for (int hs = 0; hs < KVH * slices; hs++) {
                int kvh = hs / slices, h0 = kvh * group + hs % slices * G;
                int g = group - hs % slices * G < G ? group - hs % slices * G : G;
                size_t at = (size_t)row0[i] * kv_stride + (size_t)kvh * HD;
                if (len[i] <= 0) {
                    memset(out + ((size_t)i * NH + h0) * HD, 0, sizeof(float) * (size_t)g * HD);
                    continue;
                }
                kv_group(out + ((size_t)i * NH + h0) * HD, q + ((size_t)i * NH + h0) * HD, c, at, len[i], kv_stride,
                         g, HD, scale, s, wide);
            }
        free(s), free(wide);
    }
}

void attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    decode(out, q, (cache){k, v, false}, row0, len, NULL, NULL, n, NH, KVH, HD, scale);
}

void attention_decode_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v, const int32_t *row0,
                           const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    decode(out, q, (cache){k, v, true}, row0, len, NULL, NULL, n, NH, KVH, HD, scale);
}

bool attention_decode_shares_rows(int HD, int n) {
#ifdef HAVE_AVX512_PATH
    return batch_kernel(HD, false, n) != NULL;
#else
    (void)HD, (void)n;
    return false;
#endif
}

void attention_decode_shared(float *out, const float *q, const void *k, const void *v, bool bf16, const int32_t *row0,
                             const int32_t *len, const int32_t *share_row0, const int32_t *share_len, int n, int NH,
                             int KVH, int HD, float scale) {
    decode(out, q, (cache){k, v, bf16}, row0, len, share_row0, share_len, n, NH, KVH, HD, scale);
}
