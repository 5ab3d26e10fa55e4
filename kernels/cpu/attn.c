// attn.c — the attention block of a training step as the ops it is made of (ops.h
// attn_forward, attn_backward): on the CPU its activations are fp32, so these are those
// ops' calls and bits, the calls model.c made before the block was one op. The _bf16
// forms store the activations in bf16 where a GPU with bf16 products does.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "error.h"
#include "ops.h"

void attn_forward(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                  const float *norm2, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    const bool qk_norm = w->q_norm != NULL;
    rmsnorm_forward(a->ln, a->rstd, x, w->norm, N, C, b->eps);
    float *q = qk_norm ? a->q_raw : a->q, *k = qk_norm ? a->k_raw : a->k;
    linear_forward_many(3, (float *[]){q, k, a->v}, a->ln, (const float *[]){w->wq, w->wk, w->wv},
                        (const float *[]){w->bq, w->bk, w->bv}, (int[]){Q, KV, KV}, N, C);
    if (qk_norm) {
        rmsnorm_forward(a->q, a->q_rstd, a->q_raw, w->q_norm, N * NH, HD, b->eps);
        rmsnorm_forward(a->k, a->k_rstd, a->k_raw, w->k_norm, N * KVH, HD, b->eps);
    }
    rope_forward(a->q, b->pos, b->inv_freq, N, NH, HD);
    rope_forward(a->k, b->pos, b->inv_freq, N, KVH, HD);
    attention_forward(a->att, a->lse, a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    linear_forward(mid, a->att, w->wo, w->bo, N, Q, C);
    add_rmsnorm_forward(mid, ln2, rstd2, mid, x, norm2, N, C, b->eps);  // mid += x; ln2 = norm(mid)
}

void attn_backward(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                   const attn_scratch *s, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    const size_t n = (size_t)N;
    linear_backward_many(1, s->datt, (float *[]){g->wo}, (float *[]){g->bo}, (const float *[]){dres}, a->att,
                         (const float *[]){w->wo}, (int[]){C}, N, Q);
    memset(s->dq, 0, n * Q * sizeof(float)), memset(s->dk, 0, n * KV * sizeof(float));
    memset(s->dv, 0, n * KV * sizeof(float));
    attention_backward(s->dq, s->dk, s->dv, s->datt, a->att, a->lse, a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD,
                       1.0f / sqrtf((float)HD));
    rope_backward(s->dq, b->pos, b->inv_freq, N, NH, HD);
    rope_backward(s->dk, b->pos, b->inv_freq, N, KVH, HD);
    float *dq = s->dq, *dk = s->dk;
    if (w->q_norm) {
        memset(s->dq_raw, 0, n * Q * sizeof(float)), memset(s->dk_raw, 0, n * KV * sizeof(float));
        rmsnorm_backward(s->dq_raw, g->q_norm, s->dq, a->q_raw, w->q_norm, a->q_rstd, N * NH, HD);
        rmsnorm_backward(s->dk_raw, g->k_norm, s->dk, a->k_raw, w->k_norm, a->k_rstd, N * KVH, HD);
        dq = s->dq_raw, dk = s->dk_raw;
    }
    linear_backward_many(3, s->dln, (float *[]){g->wq, g->wk, g->wv}, (float *[]){g->bq, g->bk, g->bv},
                         (const float *[]){dq, dk, s->dv}, a->ln, (const float *[]){w->wq, w->wk, w->wv},
                         (int[]){Q, KV, KV}, N, C);
    rmsnorm_backward(dres, g->norm, s->dln, x, w->norm, a->rstd, N, C);  // dres: d/d(x)
}

// ---- bf16 storage ----
// Each tensor of act_bytes is computed in fp32 here, rounded to bf16 as the GPU stores it
// (the products' bf16 outputs, the norms', RoPE's, attention's), and read back rounded:
// q and k are rounded twice, as the product (or norm) stores them and again after RoPE.
// The q, k, v biases are added in bf16, as the GPU's epilogue adds them to a bf16 output
// (and torch's autocast); o's output is fp32, and so is its bias.

static float *floats(size_t n) { return tp_xmalloc((n ? n : 1) * sizeof(float)); }

// A bf16-rounded copy of bias [n] (free it), or NULL for none.
static float *bias_bf16(const float *bias, size_t n) {
    if (!bias) return NULL;
    float *b = floats(n);
    memcpy(b, bias, n * sizeof *b);
    act_round_bf16(b, NULL, n);
    return b;
}

void attn_forward_bf16(float *mid, void *ln2, float *rstd2, const attn_acts *a, const float *x, const attn_weights *w,
                       const float *norm2, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    const size_t nc = (size_t)N * C, nq = (size_t)N * Q, nkv = (size_t)N * KV;
    float *ln = floats(nc), *q = floats(nq), *k = floats(nkv), *v = floats(nkv), *att = floats(nq);
    float *bq = bias_bf16(w->bq, Q), *bk = bias_bf16(w->bk, KV), *bv = bias_bf16(w->bv, KV);
    rmsnorm_forward(ln, a->rstd, x, w->norm, N, C, b->eps);
    act_round_bf16(ln, a->ln, nc);
    linear_forward_many(3, (float *[]){q, k, v}, ln, (const float *[]){w->wq, w->wk, w->wv},
                        (const float *[]){bq, bk, bv}, (int[]){Q, KV, KV}, N, C);
    free(bq), free(bk), free(bv);
    act_round_bf16(v, a->v, nkv);
    if (w->q_norm) {  // q, k := the norms of their rounded values
        act_round_bf16(q, a->q_raw, nq), act_round_bf16(k, a->k_raw, nkv);
        rmsnorm_forward(att, a->q_rstd, q, w->q_norm, N * NH, HD, b->eps);
        memcpy(q, att, nq * sizeof(float));
        rmsnorm_forward(att, a->k_rstd, k, w->k_norm, N * KVH, HD, b->eps);
        memcpy(k, att, nkv * sizeof(float));
    }
    act_round_bf16(q, NULL, nq), act_round_bf16(k, NULL, nkv);
    rope_forward(q, b->pos, b->inv_freq, N, NH, HD);
    rope_forward(k, b->pos, b->inv_freq, N, KVH, HD);
    act_round_bf16(q, a->q, nq), act_round_bf16(k, a->k, nkv);
    attention_forward(att, a->lse, q, k, v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    act_round_bf16(att, a->att, nq);
    linear_forward(mid, att, w->wo, w->bo, N, Q, C);
    float *l2 = ln;  // (ln is no longer needed)
    add_rmsnorm_forward(mid, l2, rstd2, mid, x, norm2, N, C, b->eps);
    act_round_bf16(l2, ln2, nc);
    free(ln), free(q), free(k), free(v), free(att);
}

void attn_backward_bf16(float *dres, const attn_grads *g, const attn_acts *a, const float *x, const attn_weights *w,
                        const attn_scratch *s, const attn_batch *b) {
    const int N = b->N, C = b->C, NH = b->NH, KVH = b->KVH, HD = b->HD, Q = NH * HD, KV = KVH * HD;
    const size_t nc = (size_t)N * C, nq = (size_t)N * Q, nkv = (size_t)N * KV;
    float *att = act_widen_bf16(a->att, nq), *q = act_widen_bf16(a->q, nq), *k = act_widen_bf16(a->k, nkv);
    float *v = act_widen_bf16(a->v, nkv), *ln = act_widen_bf16(a->ln, nc), *datt = floats(nq);
    linear_backward_many(1, datt, (float *[]){g->wo}, (float *[]){g->bo}, (const float *[]){dres}, att,
                         (const float *[]){w->wo}, (int[]){C}, N, Q);
    act_round_bf16(datt, s->datt, nq);
    // without per-head norms dq, dk, dv are stored in bf16 (ops.h attn_scratch): summed in
    // fp32 here, through RoPE's backward, then rounded
    const bool g16 = !w->q_norm;
    float *dq = g16 ? floats(nq) : s->dq, *dk = g16 ? floats(nkv) : s->dk, *dv = g16 ? floats(nkv) : s->dv;
    memset(dq, 0, nq * sizeof(float)), memset(dk, 0, nkv * sizeof(float)), memset(dv, 0, nkv * sizeof(float));
    attention_backward(dq, dk, dv, datt, att, a->lse, q, k, v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    rope_backward(dq, b->pos, b->inv_freq, N, NH, HD);
    rope_backward(dk, b->pos, b->inv_freq, N, KVH, HD);
    const float *pq = dq, *pk = dk;
    if (g16) {
        act_round_bf16(dq, s->dq, nq), act_round_bf16(dk, s->dk, nkv), act_round_bf16(dv, s->dv, nkv);
    } else {
        float *q_raw = act_widen_bf16(a->q_raw, nq), *k_raw = act_widen_bf16(a->k_raw, nkv);
        memset(s->dq_raw, 0, nq * sizeof(float)), memset(s->dk_raw, 0, nkv * sizeof(float));
        rmsnorm_backward(s->dq_raw, g->q_norm, dq, q_raw, w->q_norm, a->q_rstd, N * NH, HD);
        rmsnorm_backward(s->dk_raw, g->k_norm, dk, k_raw, w->k_norm, a->k_rstd, N * KVH, HD);
        // the GPU's norms write these in bf16 (only the products read them)
        act_round_bf16(s->dq_raw, NULL, nq), act_round_bf16(s->dk_raw, NULL, nkv);
        pq = s->dq_raw, pk = s->dk_raw;
        free(q_raw), free(k_raw);
    }
    linear_backward_many(3, s->dln, (float *[]){g->wq, g->wk, g->wv}, (float *[]){g->bq, g->bk, g->bv},
                         (const float *[]){pq, pk, dv}, ln, (const float *[]){w->wq, w->wk, w->wv},
                         (int[]){Q, KV, KV}, N, C);
    rmsnorm_backward(dres, g->norm, s->dln, x, w->norm, a->rstd, N, C);
    if (g16) free(dq), free(dk), free(dv);
    free(att), free(q), free(k), free(v), free(ln), free(datt);
}
