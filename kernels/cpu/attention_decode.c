// attention_decode.c — attention of new tokens against a KV cache: the decode step (one
// token per sequence) and prefill (a prompt's tokens against the prompt so far) alike.
#include "cpu_ops.h"
#include "ops.h"

#include <math.h>
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
// The same computation for HD = 64 or 128 with AVX-512 intrinsics: each key's dot products
// reduced in registers (the generic loop's reduction goes through memory, one float at a
// time), and each head's output kept in registers while the value rows stream past.
// HD is a compile-time constant in the two wrappers, so the loops unroll.
#define AVX512 __attribute__((target("avx512f")))
enum { PREFETCH = 8 };  // rows ahead: the cache streams from memory
static inline __attribute__((always_inline)) AVX512 void group_hd(float *out, const float *q, const float *k, const float *v, int len, int kv_stride,
                                   int G, int HD, float scale, float *s) {
    const int C = HD / 16;
    for (int j = 0; j < len; j++) {
        const float *kj = k + (size_t)j * kv_stride;
        if (j + PREFETCH < len) _mm_prefetch((const char *)(kj + PREFETCH * (size_t)kv_stride), _MM_HINT_T0);
        __m512 kr[8];
        for (int c = 0; c < C; c++) kr[c] = _mm512_loadu_ps(kj + 16 * c);
        for (int h = 0; h < G; h++) {
            const float *qh = q + (size_t)h * HD;
            __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qh), kr[0]);
            for (int c = 1; c < C; c++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), kr[c], acc);
            s[(size_t)h * len + j] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
    float inv[MAX_GROUP];
    softmax_rows(s, G, len, inv);
    // Heads in batches whose outputs fit 16 registers.
    const int per = 16 / C;
    for (int h0 = 0; h0 < G; h0 += per) {
        int hn = G - h0 < per ? G - h0 : per;
        __m512 acc[16];
        for (int x = 0; x < hn * C; x++) acc[x] = _mm512_setzero_ps();
        for (int j = 0; j < len; j++) {
            const float *vj = v + (size_t)j * kv_stride;
            if (j + PREFETCH < len) _mm_prefetch((const char *)(vj + PREFETCH * (size_t)kv_stride), _MM_HINT_T0);
            for (int c = 0; c < C; c++) {
                __m512 vr = _mm512_loadu_ps(vj + 16 * c);
                for (int h = 0; h < hn; h++)
                    acc[h * C + c] = _mm512_fmadd_ps(_mm512_set1_ps(s[(size_t)(h0 + h) * len + j]), vr, acc[h * C + c]);
            }
        }
        for (int h = 0; h < hn; h++)
            for (int c = 0; c < C; c++)
                _mm512_storeu_ps(out + (size_t)(h0 + h) * HD + 16 * c,
                                 _mm512_mul_ps(acc[h * C + c], _mm512_set1_ps(inv[h0 + h])));
    }
}
static AVX512 void group_hd64(float *out, const float *q, const float *k, const float *v, int len, int kv_stride,
                              int G, float scale, float *s) {
    group_hd(out, q, k, v, len, kv_stride, G, 64, scale, s);
}
static AVX512 void group_hd128(float *out, const float *q, const float *k, const float *v, int len, int kv_stride,
                               int G, float scale, float *s) {
    group_hd(out, q, k, v, len, kv_stride, G, 128, scale, s);
}
#endif

static void kv_group(float *out, const float *q, const float *k, const float *v, int len, int kv_stride, int G, int HD,
                  float scale, float *s) {
#ifdef HAVE_AVX512_PATH
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f") ? 1 : 0;
    if (avx512 && HD == 64) return group_hd64(out, q, k, v, len, kv_stride, G, scale, s);
    if (avx512 && HD == 128) return group_hd128(out, q, k, v, len, kv_stride, G, scale, s);
#endif
    one_group(out, q, k, v, len, kv_stride, G, HD, scale, s);
}

void attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    int group = NH / KVH, kv_stride = KVH * HD, max_len = 0;
    for (int i = 0; i < n; i++) max_len = len[i] > max_len ? len[i] : max_len;
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
