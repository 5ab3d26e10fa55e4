// backend.h — where the model core computes: the ops of kernels/ops.h and the memory
// they work on, as one table per backend, so model code is written once.
//
//   cpu   host memory, kernels/cpu (fp32; GEMMs through oneDNN/OpenBLAS)
//   cuda  device memory, kernels/cuda (fp32 storage; with bf16 products the activations
//         only products, norms, RoPE, attention and SwiGLU read are bf16: the attention
//         block's and the MLP's; matrix products in fp32, tf32 or bf16)
//
// Pointers handed to a backend's ops are that backend's memory: host pointers for cpu,
// device pointers for cuda. Host code moves data with upload/download.
#ifndef TP_BACKEND_H
#define TP_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "ops.h"

typedef struct tp_backend {
    const char *name;
    bool device;  // its memory is not the host's
    // Logits of the output head are computed this many floats at a time (a chunk of
    // tokens × the vocabulary), so [tokens, 151936] logits never exist at once.
    size_t head_chunk_floats;

    void *(*alloc)(size_t bytes);  // NULL when out of memory
    void (*free)(void *p);
    void (*memzero)(void *p, size_t bytes);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);  // within the backend's memory
    // Waits for queued work; 0, or -1 with the first error since the last call in err.
    int (*sync)(char *err, int cap);
    size_t (*free_bytes)(void);  // memory still free on the device; 0 when unknown
    // The weights were rewritten by upload: drop copies derived from them. NULL: none are kept.
    void (*weights_changed)(void);
    // CUDA graphs, NULL on backends without them (kernels/cuda/cuda_ops.h has the contract):
    // ops between graph_begin and graph_end are recorded, then replayed by graph_launch while
    // graph_epoch is unchanged.
    int (*graph_begin)(void);
    void *(*graph_end)(void);
    void (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);
    unsigned long (*graph_epoch)(void);

    // The ops, with the contracts of kernels/ops.h.
    void (*embedding_forward)(float *out, const int32_t *ids, const float *table, int N, int C);
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids, int N, int C);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *weight, int N, int C, float eps);
    void (*add_rmsnorm_forward)(float *sum, float *out, float *rstd, const float *a, const float *b,
                                const float *weight, int N, int C, float eps);
    void (*rmsnorm_backward)(float *dx, float *dweight, const float *dout, const float *x, const float *weight,
                             const float *rstd, int N, int C);
    void (*linear_forward)(float *out, const float *x, const float *weight, const float *bias, int N, int IC, int OC);
    void (*linear_forward_many)(int count, float *const out[], const float *x, const float *const weight[],
                                const float *const bias[], const int OC[], int N, int IC);
    void (*linear_backward_many)(int count, float *dx, float *const dweight[], float *const dbias[],
                                 const float *const dout[], const float *x, const float *const weight[],
                                 const int OC[], int N, int IC);
    void (*rmsnorm_linear_forward_many)(int count, float *const out[], float *ln, const float *x,
                                        const float *norm_weight, float eps, const float *const weight[],
                                        const float *const bias[], const int OC[], int N, int IC);
    void (*rmsnorm_linear_swiglu_forward)(float *act, float *gate, float *up, float *ln, const float *x,
                                          const float *norm_weight, float eps, const float *w_gate, const float *w_up,
                                          int N, int IC, int F);
    void (*linear_residual_forward)(float *out, const float *x, const float *weight, const float *bias,
                                    const float *residual, int N, int IC, int OC);
    void (*rope_forward)(float *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
    void (*rope_kv_cache_forward)(float *q, float *k, const float *v, float *k_cache, float *v_cache,
                                  const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n, int NH,
                                  int KVH, int HD);
    void (*rmsnorm_qkv_rope_cache_forward)(float *q, float *k, float *v, float *k_cache, float *v_cache, float *ln,
                                           const float *x, const float *norm_weight, float eps,
                                           const float *const weight[3], const float *const bias[3],
                                           const int32_t *kv_row, const int32_t *pos, const float *inv_freq, int n,
                                           int C, int NH, int KVH, int HD);
    void (*qk_norm_rope_kv_cache_forward)(float *q, float *k, const float *q_raw, const float *k_raw, const float *v,
                                          float *k_cache, float *v_cache, const float *q_norm, const float *k_norm,
                                          float eps, const int32_t *kv_row, const int32_t *pos,
                                          const float *inv_freq, int n, int NH, int KVH, int HD);
    void (*rope_backward)(float *dx, const int32_t *pos, const float *inv_freq, int N, int H, int HD);
    void (*attention_forward)(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *lse, const float *q, const float *k, const float *v,
                               const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale);
    void (*attention_decode)(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                             const int32_t *len, int n, int NH, int KVH, int HD, float scale);
    // Bytes an element (4: fp32, 2: bf16) of the activations only products, norms, RoPE,
    // attention and elementwise ops read: the attention block's (ln, q, k, v, att, ln2),
    // the MLP block's [N, F] tensors, a head chunk's logits (ops.h).
    size_t (*act_bytes)(void);
    void (*attn_forward)(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x,
                         const attn_weights *w, const float *norm2, const attn_batch *b);
    void (*attn_backward)(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                          const attn_scratch *s, const attn_batch *b);
    void (*mlp_up_forward)(void *act, void *gate, void *up, const void *x, const float *w_gate, const float *w_up,
                           int N, int C, int F);
    void (*mlp_down_forward)(float *out, const void *act, const float *w_down, const float *residual, int N, int F,
                             int C);
    void (*mlp_backward)(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout, const void *x,
                         const void *act, const void *gate, const void *up, const float *w_gate, const float *w_up,
                         const float *w_down, void *dact, void *dgate, void *dup, int N, int C, int F);
    void (*swiglu_forward)(float *out, const float *gate, const float *up, long n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);
    void (*add_inplace)(float *x, const float *y, long n);
    void (*gather_rows)(float *out, const float *x, const int32_t *idx, int n, int C);
    void (*scatter_add_rows)(float *dx, const float *dout, const int32_t *idx, int n, int C);
    // token and params are host arrays (ops.h); synchronizes.
    void (*sample_rows)(int32_t *token, const float *logits, const struct sample_params *params, int n, int V);
    double (*crossentropy_forward_backward)(float *logits, const int32_t *target, int n, int V, float scale);
    double (*head_loss_backward)(float *dx, float *dw, const float *x, const float *w, const int32_t *target,
                                 void *logits, int n, int C, int V, float scale);
    void (*adamw_ranges)(float *p, const float *g, float *m, float *v, const adamw_range *ranges, int count,
                         float grad_scale, float decay_factor, float b1, float b2, float step_size, float bc2_sqrt,
                         float eps);
    double (*sum_squares)(const float *x, size_t n);
    void (*scale)(float *x, size_t n, float s);
} tp_backend;

const tp_backend *tp_backend_cpu(void);
// The cpu with the activations a GPU with bf16 products keeps in bf16 (act_bytes 2: the
// attention block's, the MLP's [N, F] tensors, the training head's logits) stored and
// rounded the same way, products still fp32: for tests of the model's handling of 2-byte
// activations on any machine.
const tp_backend *tp_backend_cpu_act16(void);
// "cpu", "cuda" or "auto" (cuda when this build has it and a GPU is present, else cpu).
// NULL with a message when the backend cannot be used here (no GPU, a CPU-only build).
const tp_backend *tp_backend_named(const char *name, tp_err *err);
// Sets the precision of the cuda backend's matrix products: "fp32", "tf32" or "bf16".
// The cpu backend computes in fp32 whatever is asked. -1 for an unknown name.
int tp_backend_set_matmul(const tp_backend *be, const char *precision);
// One line naming the backend and its device, e.g. "cuda: NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)".
void tp_backend_describe(const tp_backend *be, char *buf, int cap);

#endif
