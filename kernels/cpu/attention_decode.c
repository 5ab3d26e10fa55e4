// attention_decode.c — attention of new tokens against a KV cache: the decode step (one
// token per sequence) and prefill (a prompt's tokens against the prompt so far) alike.
#include "cpu_ops.h"
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
// one: a (token, kv head) unit). Rows go in blocks of BLOCK that stay in L1 while each kv
// head's query heads pass over them, HN heads at a time with their queries (scores) or
// outputs (values) in registers. HD and HN are constants in every call, so the loops
// unroll: with runtime bounds GCC kept the accumulators in memory (3x slower).
#define AVX512 __attribute__((target("avx512f")))
#define INLINE static inline __attribute__((always_inline))
enum { BLOCK = 16, ROW_PREFETCH = 16 };  // rows: a block; how far ahead the cache is fetched

// r[h][c] := x [HN][HD]'s row h, 16 floats at a time.
INLINE AVX512 void load_heads(__m512 r[4][8], const float *x, int HN, int HD) {
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 8
        for (int c = 0; c < HD / 16; c++) r[h][c] = _mm512_loadu_ps(x + (size_t)h * HD + 16 * c);
}

// s[h][j] := scale * q[h] . k[j] for rows j0..j1 and HN heads (q [HN][HD], k rows `stride` apart).
INLINE AVX512 void scores_hn(float *s, int len, const float *q, const float *k, int stride, int j0, int j1, int HN,
                             int HD, float scale) {
    const int C = HD / 16;
    __m512 qr[4][8];
    load_heads(qr, q, HN, HD);
    for (int j = j0; j < j1; j++) {
        const float *kj = k + (size_t)j * stride;
        __m512 kr[8];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) kr[c] = _mm512_loadu_ps(kj + 16 * c);
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) {
            __m512 acc = _mm512_mul_ps(qr[h][0], kr[0]);
#pragma GCC unroll 8
            for (int c = 1; c < C; c++) acc = _mm512_fmadd_ps(qr[h][c], kr[c], acc);
            s[(size_t)h * len + j] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
}

// out[h] += sum over rows j0..j1 of p[h][j] v[j] for HN heads (out [HN][HD], p rows `len` apart).
INLINE AVX512 void values_hn(float *out, const float *p, int len, const float *v, int stride, int j0, int j1, int HN,
                             int HD) {
    const int C = HD / 16;
    __m512 acc[4][8];
    load_heads(acc, out, HN, HD);
    for (int j = j0; j < j1; j++) {
        const float *vj = v + (size_t)j * stride;
        __m512 pr[4];
#pragma GCC unroll 4
        for (int h = 0; h < HN; h++) pr[h] = _mm512_set1_ps(p[(size_t)h * len + j]);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m512 vr = _mm512_loadu_ps(vj + 16 * c);
#pragma GCC unroll 4
            for (int h = 0; h < HN; h++) acc[h][c] = _mm512_fmadd_ps(pr[h], vr, acc[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < HN; h++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) _mm512_storeu_ps(out + (size_t)h * HD + 16 * c, acc[h][c]);
}

// Rows j0 + ROW_PREFETCH .. j1 + ROW_PREFETCH (below len) of x, `width` floats each.
INLINE void prefetch_rows(const float *x, int stride, int width, int j0, int j1, int len) {
    for (int j = j0 + ROW_PREFETCH; j < j1 + ROW_PREFETCH && j < len; j++)
        for (int b = 0; b < width * 4; b += 64) _mm_prefetch((const char *)(x + (size_t)j * stride) + b, _MM_HINT_T0);
}

// out [heads·G, HD] for queries q [heads·G, HD] against len rows of k, v (kv head slices
// of HD at the row's start, rows `stride` apart); s: scratch [heads·G][len].
INLINE AVX512 void heads_hd(float *out, const float *q, const float *k, const float *v, int len, int stride,
                            int heads, int G, int HD, float scale, float *s) {
    const int NH = heads * G, HN_MAX = HD == 64 ? 4 : 2;  // HN·C accumulators fit 16 registers
#define BY_HN(F)                                       \
    for (int kvh = 0; kvh < heads; kvh++)              \
        for (int h = 0; h < G;) {                      \
            int hn = G - h < HN_MAX ? G - h : HN_MAX, head = kvh * G + h; \
            if (hn == 4) F(4);                         \
            else if (hn == 3) F(3);                    \
            else if (hn == 2) F(2);                    \
            else F(1);                                 \
            h += hn;                                   \
        }
    for (int j0 = 0; j0 < len; j0 += BLOCK) {
        int j1 = j0 + BLOCK < len ? j0 + BLOCK : len;
        prefetch_rows(k, stride, heads * HD, j0, j1, len);
#define S(HN) scores_hn(s + (size_t)head * len, len, q + (size_t)head * HD, k + (size_t)kvh * HD, stride, j0, j1, HN, HD, scale)
        BY_HN(S)
#undef S
    }
    float inv[MAX_GROUP];
    for (int h0 = 0; h0 < NH; h0 += MAX_GROUP) {
        int hn = NH - h0 < MAX_GROUP ? NH - h0 : MAX_GROUP;
        softmax_rows(s + (size_t)h0 * len, hn, len, inv);
        for (int h = 0; h < hn; h++)
            for (int j = 0; j < len; j++) s[(size_t)(h0 + h) * len + j] *= inv[h];
    }
    memset(out, 0, sizeof(float) * (size_t)NH * HD);
    for (int j0 = 0; j0 < len; j0 += BLOCK) {
        int j1 = j0 + BLOCK < len ? j0 + BLOCK : len;
        prefetch_rows(v, stride, heads * HD, j0, j1, len);
#define V(HN) values_hn(out + (size_t)head * HD, s + (size_t)head * len, len, v + (size_t)kvh * HD, stride, j0, j1, HN, HD)
        BY_HN(V)
#undef V
    }
#undef BY_HN
}
static AVX512 void heads_hd64(float *out, const float *q, const float *k, const float *v, int len, int stride,
                              int heads, int G, float scale, float *s) {
    heads_hd(out, q, k, v, len, stride, heads, G, 64, scale, s);
}
static AVX512 void heads_hd128(float *out, const float *q, const float *k, const float *v, int len, int stride,
                               int heads, int G, float scale, float *s) {
    heads_hd(out, q, k, v, len, stride, heads, G, 128, scale, s);
}
#endif

static bool have_avx512(void) {
#ifdef HAVE_AVX512_PATH
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return avx512;
#else
    return false;
#endif
}

// G query heads of one kv head against len rows of its slices (rows kv_stride apart).
static void kv_group(float *out, const float *q, const float *k, const float *v, int len, int kv_stride, int G, int HD,
                     float scale, float *s) {
#ifdef HAVE_AVX512_PATH
    if (have_avx512() && HD == 64) return heads_hd64(out, q, k, v, len, kv_stride, 1, G, scale, s);
    if (have_avx512() && HD == 128) return heads_hd128(out, q, k, v, len, kv_stride, 1, G, scale, s);
#endif
    one_group(out, q, k, v, len, kv_stride, G, HD, scale, s);
}

// Token i's NH heads against its whole cache, read in order (whole rows, every kv head).
static void whole_token(float *out, const float *q, const float *k, const float *v, int len, int KVH, int G, int HD,
                        float scale, float *s) {
#ifdef HAVE_AVX512_PATH
    if (HD == 64) return heads_hd64(out, q, k, v, len, KVH * HD, KVH, G, scale, s);
    if (HD == 128) return heads_hd128(out, q, k, v, len, KVH * HD, KVH, G, scale, s);
#endif
    (void)out, (void)q, (void)k, (void)v, (void)len, (void)KVH, (void)G, (void)HD, (void)scale, (void)s;
    abort();  // only called where the kernel exists
}

void attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    int group = NH / KVH, kv_stride = KVH * HD, max_len = 0;
    for (int i = 0; i < n; i++) max_len = len[i] > max_len ? len[i] : max_len;
    // With tokens enough to keep every thread busy (a decode step of a batch), a token is
    // a unit and its cache rows are read whole and in order: 20% faster on one core than
    // a kv head's slice of each row at a time, which is still how fewer tokens share out.
    if (have_avx512() && (HD == 64 || HD == 128) && n >= 2 * omp_get_max_threads()) {
#pragma omp parallel
        {
            float *s = malloc(sizeof(float) * (size_t)NH * (size_t)(max_len ? max_len : 1));
            if (!s) abort();
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < n; i++) {
                float *o = out + (size_t)i * NH * HD;
                size_t at = (size_t)row0[i] * kv_stride;
                if (len[i] <= 0) memset(o, 0, sizeof(float) * (size_t)NH * HD);
                else whole_token(o, q + (size_t)i * NH * HD, k + at, v + at, len[i], KVH, group, HD, scale, s);
            }
            free(s);
        }
        return;
    }
    // Groups wider than MAX_GROUP go in slices of it.
    int G = group < MAX_GROUP ? group : MAX_GROUP, slices = (group + G - 1) / G;
#pragma omp parallel
    {
        float *s = malloc(sizeof(float) * (size_t)G * (size_t)(max_len ? max_len : 1));
        if (!s) abort();
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
                kv_group(out + ((size_t)i * NH + h0) * HD, q + ((size_t)i * NH + h0) * HD, k + at, v + at, len[i],
                         kv_stride, g, HD, scale, s);
            }
        free(s);
    }
}
