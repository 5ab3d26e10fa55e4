// attention_decode.c — attention of new tokens against a KV cache: the decode step (one
// token per sequence) and prefill (a prompt's tokens against the prompt so far) alike.
#include "cpu_ops.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>

// One (token, head): scores over the cached keys, softmax with the max subtracted, then
// the weighted sum of values, all in float with keys in order (the dot products in SIMD
// lanes: generation's log-probs come from the training forward, not from here).
VECTOR_CLONES static void one_head(float *out, const float *q, const float *k, const float *v, int len, int kv_stride, int HD,
                     float scale, float *scores) {
    float mx = -INFINITY;
    for (int j = 0; j < len; j++) {
        const float *kj = k + (size_t)j * kv_stride;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int d = 0; d < HD; d++) s += q[d] * kj[d];
        s *= scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0;
    for (int j = 0; j < len; j++) sum += scores[j] = expf(scores[j] - mx);
    float inv = 1.0f / sum;
    for (int d = 0; d < HD; d++) out[d] = 0;
    for (int j = 0; j < len; j++) {
        const float *vj = v + (size_t)j * kv_stride;
        float p = scores[j] * inv;
#pragma omp simd
        for (int d = 0; d < HD; d++) out[d] += p * vj[d];
    }
}

void attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    int group = NH / KVH, kv_stride = KVH * HD, max_len = 0;
    for (int i = 0; i < n; i++) max_len = len[i] > max_len ? len[i] : max_len;
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)(max_len ? max_len : 1));
        if (!scores) abort();
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int i = 0; i < n; i++)
            for (int h = 0; h < NH; h++) {
                size_t at = (size_t)row0[i] * kv_stride + (size_t)(h / group) * HD;
                one_head(out + ((size_t)i * NH + h) * HD, q + ((size_t)i * NH + h) * HD, k + at, v + at, len[i],
                         kv_stride, HD, scale, scores);
            }
        free(scores);
    }
}
