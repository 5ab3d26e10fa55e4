// rope.c — rotary position embedding in the Hugging Face half-rotation layout.
#include "ops.h"

#include <math.h>
#include <stddef.h>

enum { IBLOCK = 64 };  // frequencies whose cos/sin are computed at a time, shared by all heads

// Rotates x [N, H, HD] in place by the angle pos · inv_freq, or by its negative when
// sign = -1 (the transpose of the rotation: the backward pass).
// The angle is the fp32 product pos · inv_freq, as transformers computes it (its rotary
// embedding runs in fp32 even for a float64 model), and cos/sin are those of that fp32
// angle: at position 4000 an angle computed in double differs from it by 2e-4 radians,
// enough to miss the reference by more than its tolerance.
static void rotate(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD, float sign) {
    int half = HD / 2;
#pragma omp parallel for schedule(static) if ((long)N * H * HD > 1 << 15)
    for (int n = 0; n < N; n++) {
        float cs[IBLOCK], sn[IBLOCK];
        float p = (float)pos[n];
        for (int i0 = 0; i0 < half; i0 += IBLOCK) {
            int w = half - i0 < IBLOCK ? half - i0 : IBLOCK;
            for (int i = 0; i < w; i++) {
                float a = p * inv_freq[i0 + i];
                cs[i] = cosf(a);
                sn[i] = sign * sinf(a);
            }
            for (int h = 0; h < H; h++) {
                float *restrict x1 = x + ((size_t)n * H + h) * HD + i0;
                float *restrict x2 = x1 + half;
#pragma omp simd
                for (int i = 0; i < w; i++) {
                    float a1 = x1[i], a2 = x2[i];
                    x1[i] = a1 * cs[i] - a2 * sn[i];
                    x2[i] = a2 * cs[i] + a1 * sn[i];
                }
            }
        }
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
