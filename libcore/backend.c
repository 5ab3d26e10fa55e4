// backend.c — the cpu and cuda backend tables.
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "ops.h"
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

// On cache lines: malloc's large blocks start 16 bytes past a page, so every 64-byte
// vector load of a KV-cache or activation row straddled two lines (decode attention 10-20%
// slower on one core).
static void *host_alloc(size_t bytes) { return tp_alloc_big(bytes); }
static void host_memzero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void host_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static int host_sync(char *err, int cap) {
    (void)err, (void)cap;
    return 0;
}
static size_t host_free_bytes(void) { return 0; }
static size_t fp32_bytes(void) { return sizeof(float); }

static const tp_backend CPU = {
    .name = "cpu",
    .device = false,
    .head_chunk_floats = (size_t)1 << 23,  // 32 MB: stays in the last-level cache's neighbourhood
    .alloc = host_alloc,
    .free = free,
    .memzero = host_memzero,
    .upload = host_copy,
    .download = host_copy,
    .copy = host_copy,
    .sync = host_sync,
    .free_bytes = host_free_bytes,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .add_rmsnorm_forward = add_rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .linear_forward = linear_forward,
    .linear_forward_many = linear_forward_many,
    .linear_backward_many = linear_backward_many,
    .rmsnorm_linear_forward_many = rmsnorm_linear_forward_many,
    .rmsnorm_linear_swiglu_forward = rmsnorm_linear_swiglu_forward,
    .linear_residual_forward = linear_residual_forward,
    .rope_forward = rope_forward,
    .rope_kv_cache_forward = rope_kv_cache_forward,
    .rmsnorm_qkv_rope_cache_forward = rmsnorm_qkv_rope_cache_forward,
    .qk_norm_rope_kv_cache_forward = qk_norm_rope_kv_cache_forward,
    .rope_backward = rope_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .attention_decode = attention_decode,
    .act_bytes = fp32_bytes,
    .attn_forward = attn_forward,
    .attn_backward = attn_backward,
    .mlp_up_forward = mlp_up_forward,
    .mlp_down_forward = mlp_down_forward,
    .mlp_backward = mlp_backward,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .add_inplace = add_inplace,
    .gather_rows = gather_rows,
    .scatter_add_rows = scatter_add_rows,
    .sample_rows = sample_rows,
    .crossentropy_forward_backward = crossentropy_forward_backward,
    .head_loss_backward = head_loss_backward,
    .adamw_ranges = adamw_ranges,
    .sum_squares = sum_squares,
    .scale = scale_inplace,
};

const tp_backend *tp_backend_cpu(void) { return &CPU; }

static size_t bf16_bytes(void) { return 2; }

const tp_backend *tp_backend_cpu_act16(void) {
    static tp_backend t;
    if (!t.name) {
        t = CPU;
        t.act_bytes = bf16_bytes;
        t.attn_forward = attn_forward_bf16;
        t.attn_backward = attn_backward_bf16;
        t.mlp_up_forward = mlp_up_forward_bf16;
        t.mlp_down_forward = mlp_down_forward_bf16;
        t.mlp_backward = mlp_backward_bf16;
        t.head_loss_backward = head_loss_backward_bf16;
    }
    return &t;
}

#ifdef TP_HAVE_CUDA
// 512 MB of fp32 logits a chunk (883 rows of Qwen's 151,936). The head's weight gradient
// (544 MB of fp32 at 0.5B) is read and written once a chunk: at 441 rows (256 MB) that is
// 2 x 441 flops per byte of it, which bounds the product near 370 TFLOP/s at an H100's
// 3.35 TB/s (an estimate, not a measurement); twice the rows, twice the bound, and half
// the loss syncs.
#define CUDA_HEAD_CHUNK_FLOATS ((size_t)1 << 27)

static const tp_backend CUDA = {
    .name = "cuda",
    .device = true,
    .head_chunk_floats = CUDA_HEAD_CHUNK_FLOATS,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memzero = cuda_memzero,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .sync = cuda_take_error,
    .free_bytes = cuda_free_bytes,
    .weights_changed = cuda_weights_changed,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
    .graph_epoch = cuda_graph_epoch,
    .embedding_forward = cuda_embedding_forward,
    .embedding_backward = cuda_embedding_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .add_rmsnorm_forward = cuda_add_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .linear_forward = cuda_linear_forward,
    .linear_forward_many = cuda_linear_forward_many,
    .linear_backward_many = cuda_linear_backward_many,
    .rmsnorm_linear_forward_many = cuda_rmsnorm_linear_forward_many,
    .rmsnorm_linear_swiglu_forward = cuda_rmsnorm_linear_swiglu_forward,
    .linear_residual_forward = cuda_linear_residual_forward,
    .rope_forward = cuda_rope_forward,
    .rope_kv_cache_forward = cuda_rope_kv_cache_forward,
    .rmsnorm_qkv_rope_cache_forward = cuda_rmsnorm_qkv_rope_cache_forward,
    .qk_norm_rope_kv_cache_forward = cuda_qk_norm_rope_kv_cache_forward,
    .rope_backward = cuda_rope_backward,
    .attention_forward = cuda_attention_forward,
    .attention_backward = cuda_attention_backward,
    .act_bytes = cuda_act_bytes,
    .attn_forward = cuda_attn_forward,
    .attn_backward = cuda_attn_backward,
    .mlp_up_forward = cuda_mlp_up_forward,
    .mlp_down_forward = cuda_mlp_down_forward,
    .mlp_backward = cuda_mlp_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .add_inplace = cuda_add_inplace,
    .gather_rows = cuda_gather_rows,
    .scatter_add_rows = cuda_scatter_add_rows,
    .attention_decode = cuda_attention_decode,
    .sample_rows = cuda_sample_rows,
    .crossentropy_forward_backward = cuda_crossentropy_forward_backward,
    .head_loss_backward = cuda_head_loss_backward,
    .adamw_ranges = cuda_adamw_ranges,
    .sum_squares = cuda_sum_squares,
    .scale = cuda_scale,
};

// TP_PROFILE=1: the same ops, each timed on the device (a table goes to stderr at exit).
#define PROF(name, call)                                 \
    do {                                                 \
        static int op_ = -2;                             \
        if (op_ == -2) op_ = cuda_profile_op(name);      \
        cuda_profile_begin();                            \
        call;                                            \
        cuda_profile_end(op_);                           \
    } while (0)

static void p_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    PROF("embedding_forward", cuda_embedding_forward(out, ids, table, N, C));
}
static void p_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    PROF("embedding_backward", cuda_embedding_backward(dtable, dout, ids, N, C));
}
static void p_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps) {
    PROF("rmsnorm_forward", cuda_rmsnorm_forward(out, rstd, x, w, N, C, eps));
}
static void p_add_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *b, const float *w,
                                  int N, int C, float eps) {
    PROF("add_rmsnorm_forward", cuda_add_rmsnorm_forward(sum, out, rstd, a, b, w, N, C, eps));
}
static void p_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                               const float *rstd, int N, int C) {
    PROF("rmsnorm_backward", cuda_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C));
}
static void p_linear_forward(float *out, const float *x, const float *w, const float *b, int N, int IC, int OC) {
    PROF("linear_forward", cuda_linear_forward(out, x, w, b, N, IC, OC));
}
static void p_linear_forward_many(int count, float *const out[], const float *x, const float *const w[],
                                  const float *const b[], const int OC[], int N, int IC) {
    PROF("linear_forward", cuda_linear_forward_many(count, out, x, w, b, OC, N, IC));
}
static void p_linear_backward_many(int count, float *dx, float *const dw[], float *const db[],
                                   const float *const dout[], const float *x, const float *const w[], const int OC[],
                                   int N, int IC) {
    PROF("linear_backward", cuda_linear_backward_many(count, dx, dw, db, dout, x, w, OC, N, IC));
}
static void p_rope_forward(float *x, const int32_t *pos, const float *f, int N, int H, int HD) {
    PROF("rope", cuda_rope_forward(x, pos, f, N, H, HD));
}
static void p_rmsnorm_linear_forward_many(int count, float *const out[], float *ln, const float *x, const float *nw,
                                          float eps, const float *const w[], const float *const b[], const int OC[],
                                          int N, int IC) {
    PROF("rmsnorm_linear_forward_many", cuda_rmsnorm_linear_forward_many(count, out, ln, x, nw, eps, w, b, OC, N, IC));
}
static void p_rmsnorm_linear_swiglu_forward(float *act, float *g, float *u, float *ln, const float *x, const float *nw,
                                            float eps, const float *wg, const float *wu, int N, int IC, int F) {
    PROF("rmsnorm_linear_swiglu_forward",
         cuda_rmsnorm_linear_swiglu_forward(act, g, u, ln, x, nw, eps, wg, wu, N, IC, F));
}
static void p_linear_residual_forward(float *out, const float *x, const float *w, const float *b, const float *r, int N,
                                      int IC, int OC) {
    PROF("linear_residual_forward", cuda_linear_residual_forward(out, x, w, b, r, N, IC, OC));
}
static void p_rope_kv_cache_forward(float *q, float *k, const float *v, float *kc, float *vc, const int32_t *row,
                                    const int32_t *pos, const float *f, int n, int NH, int KVH, int HD) {
    PROF("rope_kv_cache", cuda_rope_kv_cache_forward(q, k, v, kc, vc, row, pos, f, n, NH, KVH, HD));
}
static void p_rmsnorm_qkv_rope_cache_forward(float *q, float *k, float *v, float *kc, float *vc, float *ln,
                                             const float *x, const float *nw, float eps, const float *const w[3],
                                             const float *const b[3], const int32_t *row, const int32_t *pos,
                                             const float *f, int n, int C, int NH, int KVH, int HD) {
    PROF("rmsnorm_qkv_rope_cache",
         cuda_rmsnorm_qkv_rope_cache_forward(q, k, v, kc, vc, ln, x, nw, eps, w, b, row, pos, f, n, C, NH, KVH, HD));
}
static void p_qk_norm_rope_kv_cache_forward(float *q, float *k, const float *qr, const float *kr, const float *v,
                                            float *kc, float *vc, const float *qn, const float *kn, float eps,
                                            const int32_t *row, const int32_t *pos, const float *f, int n, int NH,
                                            int KVH, int HD) {
    PROF("qk_norm_rope_kv_cache",
         cuda_qk_norm_rope_kv_cache_forward(q, k, qr, kr, v, kc, vc, qn, kn, eps, row, pos, f, n, NH, KVH, HD));
}
static void p_rope_backward(float *x, const int32_t *pos, const float *f, int N, int H, int HD) {
    PROF("rope", cuda_rope_backward(x, pos, f, N, H, HD));
}
static void p_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                const int32_t *seg, int N, int NH, int KVH, int HD, float scale) {
    PROF("attention_forward", cuda_attention_forward(out, lse, q, k, v, seg, N, NH, KVH, HD, scale));
}
static void p_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                 const float *q, const float *k, const float *v, const int32_t *seg, int N, int NH,
                                 int KVH, int HD, float scale) {
    PROF("attention_backward",
         cuda_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, seg, N, NH, KVH, HD, scale));
}
static void p_swiglu_forward(float *out, const float *g, const float *u, long n) {
    PROF("swiglu_forward", cuda_swiglu_forward(out, g, u, n));
}
static void p_swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, long n) {
    PROF("swiglu_backward", cuda_swiglu_backward(dg, du, dout, g, u, n));
}
static void p_attn_forward(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x,
                           const attn_weights *w, const float *norm2, const attn_batch *b) {
    // rows "rmsnorm_forward", "linear_forward", "rope", "attention_forward", from its parts
    PROF("attention_forward", cuda_attn_forward(mid, ln2, rstd2, a, x, w, norm2, b));
}
static void p_attn_backward(float *dres, const attn_grads *g, const attn_acts *a, const float *x,
                            const attn_weights *w, const attn_scratch *s, const attn_batch *b) {
    PROF("attention_backward", cuda_attn_backward(dres, g, a, x, w, s, b));
}
static void p_mlp_up_forward(void *act, void *g, void *u, const void *x, const float *wg, const float *wu, int N,
                             int C, int F) {
    // rows "linear_*" and, from the parts these ops mark, "swiglu_*" and "crossentropy"
    PROF("linear_forward", cuda_mlp_up_forward(act, g, u, x, wg, wu, N, C, F));
}
static void p_mlp_down_forward(float *out, const void *act, const float *wd, const float *r, int N, int F, int C) {
    PROF("linear_forward", cuda_mlp_down_forward(out, act, wd, r, N, F, C));
}
static void p_mlp_backward(float *dx, float *dwg, float *dwu, float *dwd, const float *dout, const void *x,
                           const void *act, const void *g, const void *u, const float *wg, const float *wu,
                           const float *wd, void *dact, void *dg, void *du, int N, int C, int F) {
    PROF("linear_backward",
         cuda_mlp_backward(dx, dwg, dwu, dwd, dout, x, act, g, u, wg, wu, wd, dact, dg, du, N, C, F));
}
static void p_add_inplace(float *x, const float *y, long n) { PROF("add_inplace", cuda_add_inplace(x, y, n)); }
static void p_gather_rows(float *out, const float *x, const int32_t *idx, int n, int C) {
    PROF("gather/scatter_rows", cuda_gather_rows(out, x, idx, n, C));
}
static void p_scatter_add_rows(float *dx, const float *dout, const int32_t *idx, int n, int C) {
    PROF("gather/scatter_rows", cuda_scatter_add_rows(dx, dout, idx, n, C));
}
static double p_crossentropy(float *logits, const int32_t *t, int n, int V, float scale) {
    double r;
    PROF("crossentropy", r = cuda_crossentropy_forward_backward(logits, t, n, V, scale));
    return r;
}
static double p_head_loss_backward(float *dx, float *dw, const float *x, const float *w, const int32_t *t, void *z,
                                   int n, int C, int V, float scale) {
    double r;
    PROF("linear_backward", r = cuda_head_loss_backward(dx, dw, x, w, t, z, n, C, V, scale));
    return r;
}
static void p_adamw_ranges(float *p, const float *g, float *m, float *v, const adamw_range *r, int count, float gs,
                           float df, float b1, float b2, float ss, float bc2, float eps) {
    PROF("adamw", cuda_adamw_ranges(p, g, m, v, r, count, gs, df, b1, b2, ss, bc2, eps));
}
static double p_sum_squares(const float *x, size_t n) {
    double r;
    PROF("grad_norm", r = cuda_sum_squares(x, n));
    return r;
}
static void p_attention_decode(float *out, const float *q, const float *k, const float *v, const int32_t *row0,
                               const int32_t *len, int n, int NH, int KVH, int HD, float scale) {
    PROF("attention_decode", cuda_attention_decode(out, q, k, v, row0, len, n, NH, KVH, HD, scale));
}
static void p_sample_rows(int32_t *token, const float *logits, const struct sample_params *params, int n, int V) {
    PROF("sample", cuda_sample_rows(token, logits, params, n, V));
}
static void p_scale(float *x, size_t n, float s) { PROF("grad_clip_scale", cuda_scale(x, n, s)); }
static void p_memzero(void *p, size_t bytes) { PROF("memzero", cuda_memzero(p, bytes)); }

static const tp_backend CUDA_PROFILED = {
    .name = "cuda",
    .device = true,
    .head_chunk_floats = CUDA_HEAD_CHUNK_FLOATS,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memzero = p_memzero,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .sync = cuda_take_error,
    .free_bytes = cuda_free_bytes,
    .weights_changed = cuda_weights_changed,  // (no graphs: the profiler times each op)
    .embedding_forward = p_embedding_forward,
    .embedding_backward = p_embedding_backward,
    .rmsnorm_forward = p_rmsnorm_forward,
    .add_rmsnorm_forward = p_add_rmsnorm_forward,
    .rmsnorm_backward = p_rmsnorm_backward,
    .linear_forward = p_linear_forward,
    .linear_forward_many = p_linear_forward_many,
    .linear_backward_many = p_linear_backward_many,
    .rmsnorm_linear_forward_many = p_rmsnorm_linear_forward_many,
    .rmsnorm_linear_swiglu_forward = p_rmsnorm_linear_swiglu_forward,
    .linear_residual_forward = p_linear_residual_forward,
    .rope_forward = p_rope_forward,
    .rope_kv_cache_forward = p_rope_kv_cache_forward,
    .rmsnorm_qkv_rope_cache_forward = p_rmsnorm_qkv_rope_cache_forward,
    .qk_norm_rope_kv_cache_forward = p_qk_norm_rope_kv_cache_forward,
    .rope_backward = p_rope_backward,
    .attention_forward = p_attention_forward,
    .attention_backward = p_attention_backward,
    .act_bytes = cuda_act_bytes,
    .attn_forward = p_attn_forward,
    .attn_backward = p_attn_backward,
    .mlp_up_forward = p_mlp_up_forward,
    .mlp_down_forward = p_mlp_down_forward,
    .mlp_backward = p_mlp_backward,
    .swiglu_forward = p_swiglu_forward,
    .swiglu_backward = p_swiglu_backward,
    .add_inplace = p_add_inplace,
    .gather_rows = p_gather_rows,
    .scatter_add_rows = p_scatter_add_rows,
    .attention_decode = p_attention_decode,
    .sample_rows = p_sample_rows,
    .crossentropy_forward_backward = p_crossentropy,
    .head_loss_backward = p_head_loss_backward,
    .adamw_ranges = p_adamw_ranges,
    .sum_squares = p_sum_squares,
    .scale = p_scale,
};
#endif

const tp_backend *tp_backend_named(const char *name, tp_err *err) {
    if (!strcmp(name, "cpu")) return &CPU;
    if (strcmp(name, "cuda") && strcmp(name, "auto")) {
        tp_err_set(err, "unknown device '%s' (cpu, cuda or auto)", name);
        return NULL;
    }
#ifdef TP_HAVE_CUDA
    if (cuda_device_count() > 0) {
        const char *prof = getenv("TP_PROFILE");
        return prof && *prof && strcmp(prof, "0") ? &CUDA_PROFILED : &CUDA;
    }
    if (!strcmp(name, "auto")) return &CPU;
    tp_err_set(err, "--device cuda: no CUDA GPU is visible (no device, or no driver); use --device cpu");
#else
    if (!strcmp(name, "auto")) return &CPU;
    tp_err_set(err, "--device cuda: this build has no CUDA support (nvcc was not found when it was built)");
#endif
    return NULL;
}

int tp_backend_set_matmul(const tp_backend *be, const char *precision) {
    if (strcmp(precision, "fp32") && strcmp(precision, "tf32") && strcmp(precision, "bf16")) return -1;
#ifdef TP_HAVE_CUDA
    if (be == &CUDA || be == &CUDA_PROFILED) return cuda_set_matmul_precision(precision);
#endif
    (void)be;
    return 0;
}

void tp_backend_describe(const tp_backend *be, char *buf, int cap) {
#ifdef TP_HAVE_CUDA
    char dev[200];
    if (be->device && cuda_device_describe(dev, sizeof dev) == 0) {
        snprintf(buf, (size_t)cap, "cuda: %s", dev);
        return;
    }
#endif
    snprintf(buf, (size_t)cap, "%s", be->name);
}
