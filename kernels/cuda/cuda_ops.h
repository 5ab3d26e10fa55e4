// cuda_ops.h — the CUDA twins of ops.h, callable from C. Every pointer is device memory
// unless said otherwise; every op has exactly its CPU twin's contract (shapes, +=
// accumulation, what is overwritten), computes in fp32, and is deterministic for a fixed
// launch configuration (no atomics in any reduction). Ops return nothing; the first
// failed launch or call is kept and reported by cuda_take_error().
#ifndef TP_CUDA_OPS_H
#define TP_CUDA_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- device and errors ----
int cuda_device_count(void);                   // usable devices; 0 without a GPU or driver
int cuda_device_describe(char *buf, int cap);  // "NAME (sm_XY, N GiB)" of device 0; 0 or -1
// Synchronizes, then returns 0, or -1 with the first error since the last call
// ("kernels/cuda/x.cu:12: an illegal memory access was encountered") in err.
int cuda_take_error(char *err, int cap);

// ---- memory ----
void *cuda_alloc(size_t bytes);  // NULL when the device is out of memory (nothing noted)
void cuda_free(void *p);
void cuda_memzero(void *p, size_t bytes);
void cuda_upload(void *dst, const void *host_src, size_t bytes);
void cuda_download(void *host_dst, const void *src, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);  // device to device
size_t cuda_free_bytes(void);                             // free device memory now
// The weights were rewritten outside the ops (uploaded): drop what was derived from them.
void cuda_weights_changed(void);
// The bf16 copies of `parts` (at most 3) fp32 weights src[p] of n[p] floats, one after
// another in one buffer (bf16, cached, kept current as single weights' copies are: AdamW
// writes a part as it writes a weight's copy). NULL when none could be made (out of device
// memory): the caller multiplies by the weights one at a time. (The attention block's
// [wq; wk; wv].)
const void *cuda_weights_bf16_joined(int parts, const float *const src[], const size_t n[]);

// ---- CUDA graphs (a decode step recorded once, replayed with one launch) ----
// Between cuda_graph_begin() and cuda_graph_end() ops are recorded, not run; end returns
// the executable graph (NULL, error noted, when the capture failed). A graph stays valid
// while cuda_graph_epoch() returns what it returned at the capture: scratch moved or
// weights rewritten change it.
int cuda_graph_begin(void);
void *cuda_graph_end(void);
void cuda_graph_launch(void *graph);
void cuda_graph_free(void *graph);
unsigned long cuda_graph_epoch(void);

// ---- matrix products: precision of linear_* ----
// "fp32": CUDA cores, full fp32 (the default; matches the CPU to 1e-6);
// "tf32" or "bf16": tensor cores on fp32 data, inputs rounded to tf32 / bf16, fp32 sums.
// Returns 0, or -1 for an unknown name.
int cuda_set_matmul_precision(const char *name);
// Programmatic dependent launch of the decode kernels: 1 on where the GPU and our kernel
// image have it (sm_90), 0 off, -1 back to the default (that, unless TP_CUDA_PDL=0). For tests.
void cuda_set_pdl(int on);
int cuda_pdl_enabled(void);  // whether the decode kernels are launched that way now

// ---- the ops of ops.h ----
void cuda_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
void cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C);
void cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps);
void cuda_add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b, const float *weight,
                              int N, int C, float eps);
void cuda_rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x, const float *weight,
                           const float *rstd, int N, int C);
void cuda_linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC);
void cuda_linear_forward_many(int count, float *const out[], const float *x, const float *const weight[],
                              const float *const bias[], const int OC[], int N, int IC);
void cuda_linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x,
                          const float *weight, int N, int IC, int OC);
void cuda_linear_backward_many(int count, float *dx, float *const dweight[], float *const dbias[],
                               const float *const dout[], const float *x, const float *const weight[], const int OC[],
                               int N, int IC);
void cuda_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
void cuda_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
// In bf16 mode, head sizes 64 and 128 run on tensor cores: "wmma" (attention_tc.cu) or
// "mma" (mma.sync, attention_mma.cu; the default). Overrides TP_CUDA_ATTENTION; -1 for another name.
int cuda_set_attention_kernel(const char *name);
// The kernels the last attention_forward / _backward call took: "mma", "wmma" or "fp32"
// (a tensor-core path that cannot take a call, a misaligned tensor say, falls back).
const char *cuda_attention_last_path(void);
void cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                            const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
void cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                             const float *q, const float *k, const float *v, const int32_t *seg_start, int N,
                             int NH, int KVH, int HD, float scale);
// The same with q, k, v, out and dout in bf16 (lse, dq, dk, dv fp32), for the attention
// block's bf16 activations: the tensor-core kernels read and write them as they are; other
// head sizes go through fp32 copies and the fp32 kernels. Taken in any precision mode.
void cuda_attention_forward_bf16(void *out, float *lse, const void *q, const void *k, const void *v,
                                 const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
void cuda_attention_backward_bf16(float *dq, float *dk, float *dv, const void *dout, const void *out,
                                  const float *lse, const void *q, const void *k, const void *v,
                                  const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
// The attention backward of a block with bf16 activations and no per-head norms: dq, dk, dv
// in bf16, written (not added to), rounded, dq and dk after RoPE's backward rotation at each
// token's position pos [N] (inv_freq [HD / 2]), so they are the gradients of the products'
// q and k. A token's row of dq starts ldq elements after the last one's, of dk and dv ldkv
// (NH·HD and KVH·HD for tensors of their own; the attention block's one [N, Q + 2 KV]
// buffer, Q + 2 KV; multiples of 8). The values of cuda_attention_backward_bf16 into zeroed
// fp32 sums, cuda_rope_backward, then rounded (which is what runs where the mma.sync kernels
// do not take the call); dout, out, q, k, v bf16, lse fp32.
void cuda_attention_backward_unrotated16(void *dq, void *dk, void *dv, int ldq, int ldkv, const void *dout,
                                         const void *out, const float *lse, const void *q, const void *k,
                                         const void *v, const int32_t *seg_start, const int32_t *pos,
                                         const float *inv_freq, int N, int NH, int KVH, int HD, float scale);
void cuda_swiglu_forward(float *out, const float *gate, const float *up, long n);
// The path the last of the two fused decode ops below took: "fused" (one kernel) or "separate"
// (the ops it stands for, one by one), for tests.
const char *cuda_decode_last_path(void);
void cuda_qk_norm_rope_kv_cache_forward(float *q, float *k, const float *q_raw, const float *k_raw, const float *v,
                                        float *k_cache, float *v_cache, const float *q_norm, const float *k_norm,
                                        float eps, const int32_t *kv_row, const int32_t *pos, const float *inv_freq,
                                        int n, int NH, int KVH, int HD);
void cuda_rmsnorm_qkv_rope_cache_forward(float *q, float *k, float *v, float *k_cache, float *v_cache, float *ln,
                                         const float *x, const float *norm_weight, float eps,
                                         const float *const weight[3], const float *const bias[3],
                                         const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n,
                                         int C, int NH, int KVH, int HD);
void cuda_rmsnorm_linear_forward_many(int count, float *const out[], float *ln, const float *x,
                                      const float *norm_weight, float eps, const float *const weight[],
                                      const float *const bias[], const int OC[], int N, int IC);
void cuda_rmsnorm_linear_swiglu_forward(float *act, float *gate, float *up, float *ln, const float *x,
                                        const float *norm_weight, float eps, const float *w_gate, const float *w_up,
                                        int N, int IC, int F);
void cuda_linear_residual_forward(float *out, const float *x, const float *weight, const float *bias,
                                  const float *residual, int N, int IC, int OC);
void cuda_rope_kv_cache_forward(float *q, float *k, const float *v, float *k_cache, float *v_cache,
                                const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n, int NH,
                                int KVH, int HD);
void cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);
// The attention and MLP blocks' activations (ops.h attn_*, mlp_*) and the head's logits
// (head_loss_backward) are kept in bf16 in bf16 mode (cuda_act_bytes() 2), unless
// TP_CUDA_ACT16=0 or cuda_set_act16(0) (1 on, -1 back to the default); then fp32 (4).
size_t cuda_act_bytes(void);
void cuda_set_act16(int on);
void cuda_attn_forward(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                       const float *norm2, const attn_batch *b);
// With bf16 activations, the forward's q, k, v are one product by the joined [wq; wk; wv]
// and a kernel that splits its rows and rotates q and k (Qwen3 at head sizes 64, 128, 256:
// normalises each head first; attn.cu), unless TP_CUDA_QKV_JOIN=0 or cuda_set_qkv_join(0)
// (1 on, -1 back to the default): three products. cuda_qkv_last_path: what the last bf16
// forward took, "joined" or "three" (which it falls back to: misaligned q, k, v, other head
// sizes, no memory for the scratch rows).
void cuda_set_qkv_join(int on);
const char *cuda_qkv_last_path(void);
void cuda_attn_backward(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                        const attn_scratch *s, const attn_batch *b);
void cuda_mlp_up_forward(void *act, void *gate, void *up, const void *x, const float *w_gate, const float *w_up,
                         int N, int C, int F);
void cuda_mlp_down_forward(float *out, const void *act, const float *w_down, const float *residual, int N, int F,
                           int C);
void cuda_mlp_backward(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x,
                       const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                       const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F);
void cuda_add_inplace(float *x, const float *y, long n);
void cuda_gather_rows(float *out, const float *x, const int32_t *idx, int n, int C);
void cuda_scatter_add_rows(float *dx, const float *dout, const int32_t *idx, int n, int C);

// ---- generation (decode.cu, sample.cu) ----
void cuda_scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int C);
void cuda_attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                           const int32_t *len, int n, int NH, int KVH, int HD, float scale);
// token and params: host arrays (the contract of ops.h's sample_rows); synchronizes.
struct sample_params;
void cuda_sample_rows(int32_t *token, const float *logits, const struct sample_params *params, int n, int V);
// Returns the loss sum (synchronizes: the per-row losses are added on the host in row order).
double cuda_crossentropy_forward_backward(float *logits, const int32_t *target, int n, int V, float scale);
double cuda_head_loss_backward(float *dx, float *dw, const float *x, const float *w, const int32_t *target,
                               void *logits, int n, int C, int V, float scale);

// ---- optimizer ----
// AdamW on ranges of the flat parameter buffers in one launch, torch's single-tensor
// arithmetic (ops.h adamw_ranges; kernels/cpu/optim_ops.c). A range whose weights have a
// bf16 copy for the products (linear.cu's cache, by the range's first float and length)
// gets the copy written from the new weights in the same pass, and the copy stays valid.
void cuda_adamw_ranges(float *p, const float *g, float *m, float *v, const adamw_range *ranges, int count,
                       float grad_scale, float decay_factor, float b1, float b2, float step_size, float bc2_sqrt,
                       float eps);
double cuda_sum_squares(const float *x, size_t n);  // in double, fixed order; synchronizes
void cuda_scale(float *x, size_t n, float s);       // x *= s

// ---- across GPUs (collective.cu; NCCL loaded at first use) ----
typedef struct cuda_nccl_id {
    char internal[128];  // ncclUniqueId: rank 0 makes it, every rank must receive it
} cuda_nccl_id;
int cuda_select_device(int local_rank);  // device local_rank % count for this process; -1 without one
int cuda_nccl_unique_id(cuda_nccl_id *id, char *err, int cap);
// Joins rank of world; version gets NCCL's ("2.28.3"). 0, or -1 with a message in err.
int cuda_nccl_init(int rank, int world, const cuda_nccl_id *id, char *version, int vcap, char *err, int cap);
int cuda_nccl_sum_f32(float *x, size_t n, char *err, int cap);  // in place on every rank; synchronizes
void cuda_nccl_finalize(void);

// ---- profiling (profile.cu; used by the profiled table in libcore/backend.c) ----
int cuda_profile_op(const char *name);  // the row of that name (a string that lives on), made on first use
void cuda_profile_begin(void);
void cuda_profile_end(int op);  // waits for the op and adds its device time
// Inside a profiled op: the device time since the op began, or since its last part, goes
// to row `name`, with a call. An op that marks parts marks its last one too: its own row
// then gets the (next to no) time after that, and no call. Nothing outside a profiled op.
void cuda_profile_part(const char *name);
// Inside a profiled op: brackets one cuBLAS call (begin's answer goes to end; -1: not timed),
// so its device time is tabled by shape at exit. m n k, ta tb: as cuBLAS is called; in16,
// out16: bf16 operands, bf16 output; accumulate: beta != 0 or a residual as C; lt: cuBLASLt.
int cuda_profile_product_begin(void);
void cuda_profile_product_end(int t, int m, int n, int k, bool ta, bool tb, bool in16, bool out16, bool accumulate,
                              bool lt);

#ifdef __cplusplus
}
#endif
#endif
