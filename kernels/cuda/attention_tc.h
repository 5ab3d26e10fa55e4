// attention_tc.h — the bf16 tensor-core paths of causal attention, used by
// cuda_attention_forward / cuda_attention_backward (attention.cu) when the backend's matrix
// products are in bf16 mode: WMMA (attention_tc.cu) and mma.sync (attention_mma.cu, the
// one cuda_attention_mma() picks). Same contract as ops.h (fp32 tensors in device memory; the
// backward pass accumulates into dq, dk, dv); inside, tiles are rounded to bf16 and
// multiplied on tensor cores with fp32 sums, softmax statistics stay fp32.
//
// Each also takes q, k, v, out and dout in bf16 (lse, D, dq, dk, dv fp32), for models that
// keep those activations in bf16 (cuda_attention_forward_bf16): the kernels are the same,
// their tiles copied rather than rounded, and out rounded to bf16 as stored. One exception
// to the accumulating contract: attention_mma_backward_unrotated writes bf16 dq, dk, dv.
//
// Each returns false, having done nothing, when it cannot take the call (HD other than 64
// or 128, or a tensor not 16-byte aligned): the caller then runs the fp32 path.
// The caller has already checked N > 0 and NH % KVH == 0.
#ifndef TP_CUDA_ATTENTION_TC_H
#define TP_CUDA_ATTENTION_TC_H

#include <cuda_bf16.h>
#include <stdint.h>

// T: float, or __nv_bfloat16 for q, k, v, out and dout (explicitly instantiated for both).
template <typename T>
bool attention_tc_forward(T *out, float *lse, const T *q, const T *k, const T *v, const int32_t *seg_start, int N,
                          int NH, int KVH, int HD, float scale);
template <typename T>
bool attention_tc_backward(float *dq, float *dk, float *dv, const T *dout, const T *out, const float *lse, const T *q,
                           const T *k, const T *v, const int32_t *seg_start, int N, int NH, int KVH, int HD,
                           float scale);

// The same contracts, on mma.sync fragments (attention_mma.cu).
template <typename T>
bool attention_mma_forward(T *out, float *lse, const T *q, const T *k, const T *v, const int32_t *seg_start, int N,
                           int NH, int KVH, int HD, float scale);
template <typename T>
bool attention_mma_backward(float *dq, float *dk, float *dv, const T *dout, const T *out, const float *lse,
                            const T *q, const T *k, const T *v, const int32_t *seg_start, int N, int NH, int KVH,
                            int HD, float scale);
// The backward pass as the model's attention block with bf16 activations needs it: dq, dk,
// dv in bf16, written (not added to) and rounded, dq and dk after RoPE's backward rotation
// at each token's position pos [N] (inv_freq [HD / 2]): the gradients of q and k before
// RoPE, what cuda_rope_backward gives after the accumulating form. A token's row of dq
// starts ldq elements after the last one's, of dk and dv ldkv (NH·HD and KVH·HD when each
// is a tensor of its own; the attention block puts all three in one [N, Q + 2 KV] buffer,
// which one product reads). Aligned as above, ldq and ldkv multiples of 8.
bool attention_mma_backward_unrotated(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv, int ldq, int ldkv,
                                      const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const float *lse,
                                      const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                      const int32_t *seg_start, const int32_t *pos, const float *inv_freq, int N,
                                      int NH, int KVH, int HD, float scale);
// Whether the mma.sync path is chosen (cuda_set_attention_kernel, else TP_CUDA_ATTENTION).
bool cuda_attention_mma(void);

// The tensor-core backward passes' scratch (slot SCRATCH_ATTENTION): D [N, NH] =
// rowsum(dout ∘ out), computed here, then (grouped heads only) the per-head dk, dv partial
// sums pk, pv [N, NH, HD], 16-byte aligned. false: out of device memory (noted).
// T: float or __nv_bfloat16.
template <typename T>
bool attention_backward_scratch(float **D, float **pk, float **pv, const T *dout, const T *out, int N, int NH, int KVH,
                                int HD);

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Two floats as bf16 (nearest even), lo in the low half: the element of the lower column.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

// dk, dv [N, KVH, HD] += the sums over each group's query heads, in head order, of the
// per-head partial sums pk, pv [N, NH, HD] (GQA backward; HD % 4 == 0, 16-byte aligned).
void attention_group_reduce(float *dk, float *dv, const float *pk, const float *pv, int N, int NH, int KVH, int HD);

// The same sums into bf16 dk, dv (written, rounded; a token's row ld elements after the
// last one's), dk after RoPE's backward rotation at each row's position pos (rope.h);
// HD % 8 == 0, ld % 4 == 0, pk, pv 16-byte aligned, dk, dv 8-byte aligned.
void attention_group_reduce_unrotated(__nv_bfloat16 *dk, __nv_bfloat16 *dv, int ld, const float *pk, const float *pv,
                                      const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HD);

// D [rows] = rowsum(dout ∘ out) over HD (rows = N·NH), in double per row: the backward
// pass of both paths needs it (attention.cu).
void attention_row_dot(float *D, const float *dout, const float *out, long rows, int HD);
void attention_row_dot(float *D, const __nv_bfloat16 *dout, const __nv_bfloat16 *out, long rows, int HD);

#endif
