// rope.c — rotary position embedding in the Hugging Face half-rotation layout.
#include "ops.h"
#include "cpu/linear_bf16.h"
#include "cpu/rope_table.h"

#include <math.h>
#include <stddef.h>

enum { IBLOCK = 64 };  // frequencies whose cos/sin are computed at a time, shared by all heads

// cs [w], sn [w] := cos, sign · sin of the angles p · inv_freq [w]. The angle is the fp32
// product pos · inv_freq, as transformers computes it (its rotary embedding runs in fp32
// even for a float64 model), and cos/sin are those of that fp32 angle: at position 4000
// an angle computed in double differs from it by 2e-4 radians, enough to miss the
// reference by more than its tolerance.
static inline void angles(float *cs, float *sn, float p, const float *inv_freq, int w, float sign) {
    for (int i = 0; i < w; i++) {
        float a = p * inv_freq[i];
        cs[i] = cosf(a);
        sn[i] = sign * sinf(a);
    }
}

// Frequencies i0 .. i0 + w of one token's H heads (x [H, HD]) turned by cs, sn [w].
static inline void turn(float *x, const float *cs, const float *sn, int H, int HD, int i0, int w) {
    int half = HD / 2;
    for (int h = 0; h < H; h++) {
        float *restrict x1 = x + (size_t)h * HD + i0;
        float *restrict x2 = x1 + half;
#pragma omp simd
        for (int i = 0; i < w; i++) {
            float a1 = x1[i], a2 = x2[i];
            x1[i] = a1 * cs[i] - a2 * sn[i];
            x2[i] = a2 * cs[i] + a1 * sn[i];
        }
    }
}

// Rotates x [N, H, HD] in place by the angle pos · inv_freq, or by its negative when
// sign = -1 (the transpose of the rotation: the backward pass).
static void rotate(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD, float sign) {
    int half = HD / 2;
#pragma omp parallel for schedule(static) if ((long)N * H * HD > 1 << 15)
    for (int n = 0; n < N; n++) {
        float cs[IBLOCK], sn[IBLOCK];
        for (int i0 = 0; i0 < half; i0 += IBLOCK) {
            int w = half - i0 < IBLOCK ? half - i0 : IBLOCK;
            angles(cs, sn, (float)pos[n], inv_freq + i0, w, sign);
            turn(x + (size_t)n * H * HD, cs, sn, H, HD, i0, w);
        }
    }
}

void rope_table(float *cs, const int32_t *pos, const float *inv_freq, int N, int HD) {
    int half = HD / 2;
#pragma omp parallel for schedule(static) if ((long)N * HD > 1 << 13)
    for (int n = 0; n < N; n++) {
        float *row = cs + (size_t)n * HD;
        angles(row, row + half, (float)pos[n], inv_freq, half, 1.0f);
    }
}

void rope_apply(float *x, const float *cs, int N, int H, int HD) {
#pragma omp parallel for schedule(static) if ((long)N * H * HD > 1 << 15)
    for (int n = 0; n < N; n++)
        turn(x + (size_t)n * H * HD, cs + (size_t)n * HD, cs + (size_t)n * HD + HD / 2, H, HD, 0, HD / 2);
}

void rope_kv_cache_table(float *q, float *k, const float *v, void *k_cache, void *v_cache, bool bf16,
                         const int32_t *kv_row, const float *cs, int n, int NH, int KVH, int HD) {
    rope_apply(q, cs, n, NH, HD);
    rope_apply(k, cs, n, KVH, HD);
    int width = KVH * HD;
    if (!bf16) {
        scatter_rows(k_cache, k, kv_row, n, width);
        scatter_rows(v_cache, v, kv_row, n, width);
        return;
    }
    for (int i = 0; i < n; i++) {
        weights_to_bf16((uint16_t *)k_cache + (size_t)kv_row[i] * width, k + (size_t)i * width, (size_t)width);
        weights_to_bf16((uint16_t *)v_cache + (size_t)kv_row[i] * width, v + (size_t)i * width, (size_t)width);
    }
}

void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD) {
    rotate(x, pos, inv_freq, N, H, HD, 1.0f);
}

// dx = R^T dout: the rotation by -a, computed in place on the gradient.
void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int H, int HD) {
    rotate(dx, pos, inv_freq, N, H, HD, -1.0f);
}

void rope_kv_cache_forward(float *q, float *k, const float *v, float *k_cache, float *v_cache, const int32_t *kv_row,
                           const int32_t *pos, const float *inv_freq, int n, int NH, int KVH, int HD) {
    rope_forward(q, pos, inv_freq, n, NH, HD);
    rope_forward(k, pos, inv_freq, n, KVH, HD);
    scatter_rows(k_cache, k, kv_row, n, KVH * HD);
    scatter_rows(v_cache, v, kv_row, n, KVH * HD);
}

void rmsnorm_qkv_rope_cache_forward(float *q, float *k, float *v, float *k_cache, float *v_cache, float *ln,
                                    const float *x, const float *norm_weight, float eps, const float *const weight[3],
                                    const float *const bias[3], const int32_t *kv_row, const int32_t *pos,
                                    const float *inv_freq, int n, int C, int NH, int KVH, int HD) {
    rmsnorm_linear_forward_many(3, (float *const[]){q, k, v}, ln, x, norm_weight, eps, weight, bias,
                                (const int[]){NH * HD, KVH * HD, KVH * HD}, n, C);
    rope_kv_cache_forward(q, k, v, k_cache, v_cache, kv_row, pos, inv_freq, n, NH, KVH, HD);
}

void qk_norm_rope_kv_cache_forward(float *q, float *k, const float *q_raw, const float *k_raw, const float *v,
                                   float *k_cache, float *v_cache, const float *q_norm, const float *k_norm, float eps,
                                   const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n, int NH,
                                   int KVH, int HD) {
    rmsnorm_forward(q, NULL, q_raw, q_norm, n * NH, HD, eps);
    rmsnorm_forward(k, NULL, k_raw, k_norm, n * KVH, HD, eps);
    rope_kv_cache_forward(q, k, v, k_cache, v_cache, kv_row, pos, inv_freq, n, NH, KVH, HD);
}
