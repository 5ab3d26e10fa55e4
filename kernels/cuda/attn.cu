// attn.cu — the attention block of a training step (ops.h attn_forward, attn_backward),
// its activations in bf16 when the model keeps them so (cuda_act16).
//
// ln, q, k, v, att and the MLP's input ln2 are [N, C] and [N, Q] tensors that only
// products, norms, RoPE and attention read. Stored in fp32, each was written in fp32 and
// read again by every product or attention kernel that took it, to be rounded to bf16 in
// a scratch copy (the attention kernels copied q, k, v and dout whole on every call).
// In bf16 they are written once in bf16 and read as they are, as torch's autocast keeps
// them: the norms write bf16, the q/k/v products write bf16 (bias added by the epilogue,
// in bf16), RoPE and Qwen3's per-head norms read and write bf16 with fp32 arithmetic, the
// attention kernels stage bf16 tiles directly and write bf16 out, and the o product reads
// att as it is. In the backward, datt (written by a product, read only by attention) is
// bf16, and so are dq, dk, dv: the attention kernels write them rounded, dq and dk already
// through RoPE's backward rotation (cuda_attention_backward_unrotated16), and the products
// and bias sums read them as they are. Given the scratch's dqkv they sit side by side in each
// token's row of it, and one product by the joined bf16 copy [wq; wk; wv] (whose rows the
// forward's q, k, v products read too) gives dln. What stays fp32: the residual stream (x,
// mid), rstd and lse, dln, and with Qwen3's per-head norms dq, dk, dv (attention adds into
// them, and the norms' backward reads them); that backward writes the gradients of q and k
// before the norms in bf16 (into dq_raw, dk_raw), which only the products read.
// With TP_CUDA_ACT16=0, or fp32 or tf32 products, the block is the single ops' calls on
// fp32 tensors, with their bits.
#include "cuda/act16.h"
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/product.h"
#include "cuda/reduce.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- fp32 activations: the single ops ----

// The scratch the attention's backward adds into, zeroed (with per-head norms, what their
// backward adds into too).
static void zero_dqkv(const attn_scratch *s, const attn_batch *b, bool qk_norm) {  // (fp32 dq, dk, dv)
    const size_t nq = (size_t)b->N * b->NH * b->HD * sizeof(float), nkv = (size_t)b->N * b->KVH * b->HD * sizeof(float);
    cuda_memzero(s->dq, nq), cuda_memzero(s->dk, nkv), cuda_memzero(s->dv, nkv);
    if (qk_norm) cuda_memzero(s->dq_raw, nq), cuda_memzero(s->dk_raw, nkv);
}

static void rope_backward_qk(const attn_scratch *s, const attn_batch *b) {
    cuda_rope_backward((float *)s->dq, b->pos, b->inv_freq, b->N, b->NH, b->HD);
    cuda_rope_backward((float *)s->dk, b->pos, b->inv_freq, b->N, b->KVH, b->HD);
    cuda_profile_part("rope");
}

static void forward32(float *mid, float *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                      const float *norm2, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    float *ln = (float *)a->ln, *q = (float *)a->q, *k = (float *)a->k, *v = (float *)a->v;
    cuda_rmsnorm_forward(ln, a->rstd, x, w->norm, N, C, b->eps);
    cuda_profile_part("rmsnorm_forward");
    float *const outs[3] = {w->q_norm ? (float *)a->q_raw : q, w->q_norm ? (float *)a->k_raw : k, v};
    const float *const ws[3] = {w->wq, w->wk, w->wv}, *const bs[3] = {w->bq, w->bk, w->bv};
    const int ocs[3] = {Q, KV, KV};
    cuda_linear_forward_many(3, outs, ln, ws, bs, ocs, N, C);
    cuda_profile_part("linear_forward");
    if (w->q_norm) {
        cuda_rmsnorm_forward(q, a->q_rstd, outs[0], w->q_norm, N * NH, HD, b->eps);
        cuda_rmsnorm_forward(k, a->k_rstd, outs[1], w->k_norm, N * KVH, HD, b->eps);
        cuda_profile_part("rmsnorm_forward");
    }
    cuda_rope_forward(q, b->pos, b->inv_freq, N, NH, HD);
    cuda_rope_forward(k, b->pos, b->inv_freq, N, KVH, HD);
    cuda_profile_part("rope");
    cuda_attention_forward((float *)a->att, a->lse, q, k, v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    cuda_profile_part("attention_forward");
    cuda_linear_forward(mid, (const float *)a->att, w->wo, w->bo, N, Q, C);
    cuda_profile_part("linear_forward");
    cuda_add_rmsnorm_forward(mid, ln2, rstd2, mid, x, norm2, N, C, b->eps);
    cuda_profile_part("rmsnorm_forward");
}

static void backward32(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                       const attn_scratch *s, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    float *datt = (float *)s->datt;
    {
        float *const gw[1] = {g->wo}, *const gb[1] = {g->bo};
        const float *const d1[1] = {dres}, *const w1[1] = {w->wo};
        const int oc[1] = {C};
        cuda_linear_backward_many(1, datt, gw, gb, d1, (const float *)a->att, w1, oc, N, Q);
        cuda_profile_part("linear_backward");
    }
    zero_dqkv(s, b, w->q_norm != NULL);
    float *dq = (float *)s->dq, *dk = (float *)s->dk, *dv = (float *)s->dv;
    cuda_attention_backward(dq, dk, dv, datt, (const float *)a->att, a->lse, (const float *)a->q, (const float *)a->k,
                            (const float *)a->v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    cuda_profile_part("attention_backward");
    rope_backward_qk(s, b);
    if (w->q_norm) {
        cuda_rmsnorm_backward(s->dq_raw, g->q_norm, dq, (const float *)a->q_raw, w->q_norm, a->q_rstd, N * NH, HD);
        cuda_rmsnorm_backward(s->dk_raw, g->k_norm, dk, (const float *)a->k_raw, w->k_norm, a->k_rstd, N * KVH, HD);
        cuda_profile_part("rmsnorm_backward");
        dq = s->dq_raw, dk = s->dk_raw;
    }
    float *const gw[3] = {g->wq, g->wk, g->wv}, *const gb[3] = {g->bq, g->bk, g->bv};
    const float *const d3[3] = {dq, dk, dv}, *const w3[3] = {w->wq, w->wk, w->wv};
    const int oc[3] = {Q, KV, KV};
    cuda_linear_backward_many(3, s->dln, gw, gb, d3, (const float *)a->ln, w3, oc, N, C);
    cuda_profile_part("linear_backward");
    cuda_rmsnorm_backward(dres, g->norm, s->dln, x, w->norm, a->rstd, N, C);
    cuda_profile_part("rmsnorm_backward");
}

// ---- bf16 activations ----
// Products in the column-major view of linear.cu (mlp.cu has the three forms): an output
// [N, OC] is out^T [OC x N] = W^T' · x^T (m = OC, n = N, k = IC).

static cuda_operand weight(const float *w) { return {w, false, true, false}; }
static cuda_operand fp32(const float *x, bool reuse) { return {x, false, false, reuse}; }
static cuda_operand bf16(const void *x) { return {x, true, false, false}; }

// q, k and v's weights as operands: their rows of the joined bf16 copy [wq; wk; wv] [Q + 2
// KV, C] (cached; joined NULL when it could not be made: out of memory), else each weight's
// own copy. The forward and every backward form take the same, so AdamW keeps one copy
// current, not two.
struct qkv_operands {
    const __nv_bfloat16 *joined;
    cuda_operand q, k, v;
};
static qkv_operands qkv_weights(const attn_weights *w, int Q, int KV, int C) {
    const float *const src[3] = {w->wq, w->wk, w->wv};
    const size_t n[3] = {(size_t)Q * C, (size_t)KV * C, (size_t)KV * C};
    const __nv_bfloat16 *j = (const __nv_bfloat16 *)cuda_weights_bf16_joined(3, src, n);
    if (!j) return {NULL, weight(w->wq), weight(w->wk), weight(w->wv)};
    return {j, bf16(j), bf16(j + n[0]), bf16(j + n[0] + n[1])};
}

// The forward from rotated q, k and v on: attention, o's product with the residual, the
// second norm.
static void attention_and_o16(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x,
                              const attn_weights *w, const float *norm2, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD;
    cuda_attention_forward_bf16(a->att, a->lse, a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD,
                                1.0f / sqrtf((float)HD));
    cuda_profile_part("attention_forward");
    cuda_product_bf16(true, false, C, N, Q, weight(w->wo), Q, bf16(a->att), Q, 0.0f, mid, false, C, w->bo, x);
    cuda_profile_part("linear_forward");
    cuda_rmsnorm_forward16(ln2, rstd2, mid, false, norm2, N, C, b->eps);
    cuda_profile_part("rmsnorm_forward");
}

static int qkv_join_forced = -1;  // cuda_set_qkv_join: -1 the default (TP_CUDA_QKV_JOIN)
extern "C" void cuda_set_qkv_join(int on) { qkv_join_forced = on < 0 ? -1 : on != 0; }
static bool qkv_join(void) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("TP_CUDA_QKV_JOIN");
        env = !(e && !strcmp(e, "0"));
    }
    return qkv_join_forced >= 0 ? qkv_join_forced : env;
}

static const char *qkv_path = "";  // cuda_qkv_last_path
extern "C" const char *cuda_qkv_last_path(void) { return qkv_path; }

// q, k, v as one product of K = C by the joined copy [wq; wk; wv] into rows [N, Q + 2 KV]
// of scratch (bias by the joined bf16 copy [bq; bk; bv]), then one kernel that rotates q and
// k into their tensors and copies v (with per-head norms: that copies q and k's rows into
// q_raw, k_raw and normalises them first): ln is read once, not three times, and k's and
// v's products (OC = KV, 128 to 1024) are no longer too narrow for the tensor cores' pace.
// The RoPE pass it replaces read and wrote q and k anyway (and the norms another pass).
// false, having done nothing, when it cannot (no joined copy, some biases but not all,
// alignment, head size, no memory for the scratch or the biases' copy).
static bool qkv_forward_joined(const attn_acts *a, const attn_weights *w, const __nv_bfloat16 *wj,
                               const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD, L = Q + 2 * KV;
    if (!wj) return false;
    if (w->q_norm ? HD != 64 && HD != 128 && HD != 256
                  : HD % 8 || L % 8 || ((uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v) % 16)
        return false;
    const bool biased = w->bq || w->bk || w->bv;
    if (biased && !(w->bq && w->bk && w->bv)) return false;
    void *qkv = cuda_scratch_optional(SCRATCH_QKV, (size_t)N * L * sizeof(__nv_bfloat16));
    if (!qkv) return false;
    const void *bias16 = NULL;
    if (biased) {
        const float *const src[3] = {w->bq, w->bk, w->bv};
        const size_t n[3] = {(size_t)Q, (size_t)KV, (size_t)KV};
        if (!(bias16 = cuda_weights_bf16_joined(3, src, n))) return false;
    }
    cuda_product16_bias16(true, false, L, N, C, bf16(wj), C, bf16(a->ln), C, qkv, L, bias16);
    cuda_profile_part("linear_forward");
    const bool split = w->q_norm ? cuda_qkv_split_norm_rope16(a->q_raw, a->k_raw, a->q_rstd, a->k_rstd, a->q, a->k,
                                                              a->v, qkv, w->q_norm, w->k_norm, b->eps, b->pos,
                                                              b->inv_freq, N, NH, KVH, HD)
                                 : cuda_qkv_split_rope16(a->q, a->k, a->v, qkv, b->pos, b->inv_freq, N, NH, KVH, HD);
    if (!split) cuda_note_message("the joined q, k, v product's rows could not be split", __FILE__, __LINE__);
    cuda_profile_part("rope");
    return true;
}

static void forward16(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                      const float *norm2, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    cuda_rmsnorm_forward16(a->ln, a->rstd, x, false, w->norm, N, C, b->eps);
    cuda_profile_part("rmsnorm_forward");
    const qkv_operands qkv = qkv_weights(w, Q, KV, C);
    if (qkv_join() && qkv_forward_joined(a, w, qkv.joined, b)) {
        qkv_path = "joined";
        attention_and_o16(mid, ln2, rstd2, a, x, w, norm2, b);
        return;
    }
    qkv_path = "three";
    void *q = w->q_norm ? a->q_raw : a->q, *k = w->q_norm ? a->k_raw : a->k;
    cuda_product_bf16(true, false, Q, N, C, qkv.q, C, bf16(a->ln), C, 0.0f, q, true, Q, w->bq, NULL);
    cuda_product_bf16(true, false, KV, N, C, qkv.k, C, bf16(a->ln), C, 0.0f, k, true, KV, w->bk, NULL);
    cuda_product_bf16(true, false, KV, N, C, qkv.v, C, bf16(a->ln), C, 0.0f, a->v, true, KV, w->bv, NULL);
    cuda_profile_part("linear_forward");
    if (w->q_norm) {
        cuda_rmsnorm_forward16(a->q, a->q_rstd, a->q_raw, true, w->q_norm, N * NH, HD, b->eps);
        cuda_rmsnorm_forward16(a->k, a->k_rstd, a->k_raw, true, w->k_norm, N * KVH, HD, b->eps);
        cuda_profile_part("rmsnorm_forward");
    }
    cuda_rope16_forward(a->q, b->pos, b->inv_freq, N, NH, HD);
    cuda_rope16_forward(a->k, b->pos, b->inv_freq, N, KVH, HD);
    cuda_profile_part("rope");
    attention_and_o16(mid, ln2, rstd2, a, x, w, norm2, b);
}

// dx^T [IC, N] = W · dout^T (written when first, else added) and dW^T [IC, OC] += x^T · dout
// (+ dbias) for one product of bf16 x: dout is B of both, bf16 when dout16, else fp32
// rounded once.
static void product_backward16(float *dx, bool first, float *dw, float *db, const void *dout, bool dout16,
                               const void *x, cuda_operand wt, int N, int IC, int OC) {
    const float *d32 = (const float *)dout;
    cuda_product_bf16(false, false, IC, N, OC, wt, IC, dout16 ? bf16(dout) : fp32(d32, false), OC,
                      first ? 0.0f : 1.0f, dx, false, IC, NULL, NULL);
    cuda_product_bf16(false, true, IC, OC, N, bf16(x), IC, dout16 ? bf16(dout) : fp32(d32, true), OC, 1.0f, dw, false,
                      IC, NULL, NULL);
    if (db && dout16) cuda_column_sum16(db, dout, N, OC, OC);
    else if (db) cuda_column_sum(db, d32, NULL, NULL, N, OC);
}

// The attention's gradients side by side in each token's row of dqkv [N, Q + 2 KV] (bf16,
// dq and dk unrotated), then dln = dqkv · [wq; wk; wv] in one product of K = Q + 2 KV, and
// each weight's gradient (and bias sum) from its columns of dqkv. Three products of one input
// would add two results of K = KV each into dln, reading and writing its fp32 [N, C] twice
// more; K = KV (128 or 256) is also too short for a product to run at the tensor cores' pace.
static void qkv_backward_joined(const attn_grads *g, const attn_acts *a, const __nv_bfloat16 *wj,
                                const attn_scratch *s, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD, L = Q + 2 * KV;
    __nv_bfloat16 *dqkv = (__nv_bfloat16 *)s->dqkv;
    cuda_attention_backward_unrotated16(dqkv, dqkv + Q, dqkv + Q + KV, L, L, s->datt, a->att, a->lse, a->q, a->k,
                                        a->v, b->seg_start, b->pos, b->inv_freq, N, NH, KVH, HD,
                                        1.0f / sqrtf((float)HD));
    cuda_profile_part("attention_backward");
    // dln^T [C, N] = [wq; wk; wv]^T [C, L] · dqkv^T [L, N] (written)
    cuda_product_bf16(false, false, C, N, L, bf16(wj), C, bf16(dqkv), L, 0.0f, s->dln, false, C, NULL, NULL);
    float *const gw[3] = {g->wq, g->wk, g->wv}, *const gb[3] = {g->bq, g->bk, g->bv};
    const int oc[3] = {Q, KV, KV}, at[3] = {0, Q, Q + KV};
    for (int i = 0; i < 3; i++) {  // dW^T [C, OC] += ln^T [C, N] · (its columns of dqkv) [N, OC]
        cuda_product_bf16(false, true, C, oc[i], N, bf16(a->ln), C, bf16(dqkv + at[i]), L, 1.0f, gw[i], false, C,
                          NULL, NULL);
        if (gb[i]) cuda_column_sum16(gb[i], dqkv + at[i], N, oc[i], L);
    }
    cuda_profile_part("linear_backward");
}

static void backward16(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                       const attn_scratch *s, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    // o (IC = Q, OC = C): datt [N, Q] in bf16, read only by attention; dres is B of both
    cuda_product_bf16(false, false, Q, N, C, weight(w->wo), Q, fp32(dres, false), C, 0.0f, s->datt, true, Q, NULL,
                      NULL);
    cuda_product_bf16(false, true, Q, C, N, bf16(a->att), Q, fp32(dres, true), C, 1.0f, g->wo, false, Q, NULL, NULL);
    if (g->bo) cuda_column_sum(g->bo, dres, NULL, NULL, N, C);
    cuda_profile_part("linear_backward");
    const float scale = 1.0f / sqrtf((float)HD);
    const qkv_operands qkv = qkv_weights(w, Q, KV, C);
    if (qkv.joined && s->dqkv && !w->q_norm) {
        qkv_backward_joined(g, a, qkv.joined, s, b);
    } else {
        const void *dq = s->dq, *dk = s->dk;
        const bool g16 = !w->q_norm;  // dq, dk, dv in bf16, each a tensor of its own (ops.h attn_scratch)
        if (g16) {
            cuda_attention_backward_unrotated16(s->dq, s->dk, s->dv, Q, KV, s->datt, a->att, a->lse, a->q, a->k,
                                                a->v, b->seg_start, b->pos, b->inv_freq, N, NH, KVH, HD, scale);
            cuda_profile_part("attention_backward");
        } else {  // per-head norms: fp32 sums; the norms write bf16 gradients into dq_raw, dk_raw
            zero_dqkv(s, b, false);
            cuda_attention_backward_bf16((float *)s->dq, (float *)s->dk, (float *)s->dv, s->datt, a->att, a->lse,
                                         a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD, scale);
            cuda_profile_part("attention_backward");
            rope_backward_qk(s, b);
            cuda_rmsnorm16_backward(s->dq_raw, g->q_norm, (const float *)s->dq, a->q_raw, w->q_norm, a->q_rstd,
                                    N * NH, HD);
            cuda_rmsnorm16_backward(s->dk_raw, g->k_norm, (const float *)s->dk, a->k_raw, w->k_norm, a->k_rstd,
                                    N * KVH, HD);
            cuda_profile_part("rmsnorm_backward");
            dq = s->dq_raw, dk = s->dk_raw;
        }
        // q, k, v (IC = C): dln written by the first, added to by the others; ln is bf16
        product_backward16(s->dln, true, g->wq, g->bq, dq, true, a->ln, qkv.q, N, C, Q);
        product_backward16(s->dln, false, g->wk, g->bk, dk, true, a->ln, qkv.k, N, C, KV);
        product_backward16(s->dln, false, g->wv, g->bv, s->dv, g16, a->ln, qkv.v, N, C, KV);
        cuda_profile_part("linear_backward");
    }
    cuda_rmsnorm_backward(dres, g->norm, s->dln, x, w->norm, a->rstd, N, C);
    cuda_profile_part("rmsnorm_backward");
}

extern "C" void cuda_attn_forward(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x,
                                  const attn_weights *w, const float *norm2, const attn_batch *b) {
    if (b->N <= 0) return;
    if (cuda_act16()) forward16(mid, ln2, rstd2, a, x, w, norm2, b);
    else forward32(mid, (float *)ln2, rstd2, a, x, w, norm2, b);
}

extern "C" void cuda_attn_backward(float *dres, const attn_grads *g, const attn_acts *a, const float *x,
                                   const attn_weights *w, const attn_scratch *s, const attn_batch *b) {
    if (b->N <= 0) return;
    if (cuda_act16()) backward16(dres, g, a, x, w, s, b);
    else backward32(dres, g, a, x, w, s, b);
}
