// act16.h — the ops on bf16 activations the attention block needs (C++ side): a model
// whose activations are kept in bf16 (cuda_act16) stores the block's norms, q, k, v and
// attention output in bf16, and these read and write them. Arithmetic is fp32; bf16
// outputs are rounded to nearest even as they are stored.
#ifndef TP_CUDA_ACT16_H
#define TP_CUDA_ACT16_H

#include <stdint.h>

// out [N, C] bf16 = rmsnorm(x) as cuda_rmsnorm_forward's arithmetic; x fp32, or bf16 when x16
// (Qwen3's per-head norms). rstd [N] fp32, may be NULL.
void cuda_rmsnorm_forward16(void *out, float *rstd, const void *x, bool x16, const float *weight, int N, int C,
                            float eps);
// cuda_rmsnorm_backward with x [N, C] in bf16 and dx [N, C] in bf16, WRITTEN (not added to),
// rounded: Qwen3's per-head norms, whose input gradient only the q and k products read
// (dweight +=; dout, rstd fp32).
void cuda_rmsnorm16_backward(void *dx, float *dweight, const float *dout, const void *x, const float *weight,
                             const float *rstd, int N, int C);
// cuda_rope_forward on x [N, H, HD] in bf16, in place.
void cuda_rope16_forward(void *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
// One product's q, k, v rows side by side, qkv [N, NH·HD + 2 KVH·HD] bf16, into q [N, NH, HD]
// and k [N, KVH, HD] rotated by RoPE (cuda_rope16_forward's bits) and v [N, KVH, HD] as they
// are. false, having done nothing, unless HD % 8 == 0 and every pointer is 16-byte aligned.
bool cuda_qkv_split_rope16(void *q, void *k, void *v, const void *qkv, const int32_t *pos, const float *inv_freq,
                           int N, int NH, int KVH, int HD);
// The same for Qwen3's per-head norms: q and k's rows copied into q_raw, k_raw, normalised
// (rstd into q_rstd [N, NH], k_rstd [N, KVH]), stored, then rotated into q and k: the bits
// of cuda_rmsnorm_forward16 (x16) and cuda_rope16_forward after the products. false,
// having done nothing, unless HD is 64, 128 or 256 (a lane holds both halves of its pairs).
bool cuda_qkv_split_norm_rope16(void *q_raw, void *k_raw, float *q_rstd, float *k_rstd, void *q, void *k, void *v,
                                const void *qkv, const float *q_norm, const float *k_norm, float eps,
                                const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HD);

#endif
