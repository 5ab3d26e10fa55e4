// generate.c — KV-cache forward passes (generate.h). One layer for n new tokens:
//   h = x + o_proj(attention over the cache(rope(norm_qk(q)), cache += rope(norm_qk(k)), v))
//   out = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
// the same ops, in the same order, as model.c's training forward.
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct tp_generator {
    tp_model *m;
    const tp_backend *be;
    int n_slots, cap, L, KV;  // KV = KVH * HD floats a token, a layer
    float *k, *v;             // [n_slots][L][cap][KV]
    int *len;                 // [n_slots]
    // per-call scratch for up to `room` tokens
    int room;
    float *x, *ln, *rstd, *q_raw, *k_raw, *q, *kk, *vv, *att, *mid, *gate, *up, *act, *qr, *kr, *xg;
    int32_t *pos, *klen, *seg;
    float *lse;
    bool fresh;  // every token of this call starts or continues a slot that was empty: prompts
    const float **kp, **vp;
};

size_t tp_kv_bytes_per_token(const tp_model *m) {
    return 2 * sizeof(float) * (size_t)m->cfg.num_layers * (size_t)m->cfg.num_kv_heads * (size_t)m->cfg.head_dim;
}

tp_generator *tp_generator_new(tp_model *m, int n_slots, int cap, tp_err *err) {
    const tp_backend *be = tp_model_backend(m);
    if (be->device || !be->attention_decode) {
        tp_err_set(err, "generation runs on the cpu backend for now (%s has no KV-cache kernels yet)", be->name);
        return NULL;
    }
    tp_generator *g = tp_xcalloc(1, sizeof *g);
    g->m = m, g->be = be, g->n_slots = n_slots, g->cap = cap, g->L = m->cfg.num_layers;
    g->KV = m->cfg.num_kv_heads * m->cfg.head_dim;
    size_t floats = (size_t)n_slots * g->L * (size_t)cap * g->KV;
    g->k = malloc(floats * sizeof(float) + 1), g->v = malloc(floats * sizeof(float) + 1);
    if (!g->k || !g->v) {
        tp_err_set(err, "out of memory: a KV cache of %d sequences x %d tokens needs %.2f GiB", n_slots, cap,
                   2.0 * (double)floats * sizeof(float) / (1 << 30));
        tp_generator_free(g);
        return NULL;
    }
    g->len = tp_xcalloc((size_t)n_slots, sizeof *g->len);
    return g;
}

void tp_generator_free(tp_generator *g) {
    if (!g) return;
    float *bufs[] = {g->k, g->v, g->x, g->ln, g->rstd, g->q_raw, g->k_raw, g->q, g->kk, g->vv, g->att, g->mid,
                     g->gate, g->up, g->act, g->qr, g->kr, g->xg};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(g->len), free(g->pos), free(g->klen), free(g->kp), free(g->vp), free(g->seg), free(g->lse);
    free(g);
}

int tp_generator_len(const tp_generator *g, int slot) { return g->len[slot]; }
void tp_generator_reset(tp_generator *g, int slot) { g->len[slot] = 0; }

static float *kv_at(const tp_generator *g, float *base, int slot, int layer, int t) {
    return base + (((size_t)slot * g->L + layer) * g->cap + t) * g->KV;
}

void tp_generator_copy(tp_generator *g, int dst, int src, int count) {
    if (count < 0 || count > g->len[src]) count = g->len[src];
    size_t n = (size_t)count * g->KV * sizeof(float);
    for (int l = 0; l < g->L; l++) {
        memcpy(kv_at(g, g->k, dst, l, 0), kv_at(g, g->k, src, l, 0), n);
        memcpy(kv_at(g, g->v, dst, l, 0), kv_at(g, g->v, src, l, 0), n);
    }
    g->len[dst] = count;
}

static void grow(tp_generator *g, int n) {
    if (n <= g->room) return;
    const tp_model_config *c = &g->m->cfg;
    size_t N = (size_t)n, C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)g->KV;
    float **bufs[] = {&g->x, &g->ln, &g->mid, &g->xg, &g->q_raw, &g->q, &g->att, &g->k_raw, &g->kk, &g->vv,
                      &g->gate, &g->up, &g->act, &g->rstd, &g->qr, &g->kr};
    size_t sizes[] = {N * C, N * C, N * C, N * C, N * Q, N * Q, N * Q, N * KV, N * KV, N * KV,
                      N * F, N * F, N * F, N, N * c->num_heads, N * c->num_kv_heads};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) *bufs[i] = tp_xrealloc(*bufs[i], sizes[i] * sizeof(float));
    g->pos = tp_xrealloc(g->pos, N * sizeof *g->pos), g->klen = tp_xrealloc(g->klen, N * sizeof *g->klen);
    g->seg = tp_xrealloc(g->seg, N * sizeof *g->seg), g->lse = tp_xrealloc(g->lse, N * c->num_heads * sizeof *g->lse);
    g->kp = tp_xrealloc(g->kp, N * sizeof *g->kp), g->vp = tp_xrealloc(g->vp, N * sizeof *g->vp);
    g->room = n;
}

static void layer(tp_generator *g, int l, int n, const int *slot) {
    const tp_backend *be = g->be;
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, KVH = c->num_kv_heads, HD = c->head_dim;
    int Q = NH * HD, KV = g->KV;
    float eps = (float)c->rms_norm_eps;
    be->rmsnorm_forward(g->ln, g->rstd, g->x, w->ln1, n, C, eps);
    float *q = c->qk_norm ? g->q_raw : g->q, *k = c->qk_norm ? g->k_raw : g->kk;
    be->linear_forward(q, g->ln, w->wq, w->bq, n, C, Q);
    be->linear_forward(k, g->ln, w->wk, w->bk, n, C, KV);
    be->linear_forward(g->vv, g->ln, w->wv, w->bv, n, C, KV);
    if (c->qk_norm) {
        be->rmsnorm_forward(g->q, g->qr, g->q_raw, w->q_norm, n * NH, HD, eps);
        be->rmsnorm_forward(g->kk, g->kr, g->k_raw, w->k_norm, n * KVH, HD, eps);
    }
    be->rope_forward(g->q, g->pos, m->inv_freq, n, NH, HD);
    be->rope_forward(g->kk, g->pos, m->inv_freq, n, KVH, HD);
    for (int i = 0; i < n; i++) {  // into the cache, then every token attends to its slot's prefix
        memcpy(kv_at(g, g->k, slot[i], l, g->pos[i]), g->kk + (size_t)i * KV, (size_t)KV * sizeof(float));
        memcpy(kv_at(g, g->v, slot[i], l, g->pos[i]), g->vv + (size_t)i * KV, (size_t)KV * sizeof(float));
        g->kp[i] = kv_at(g, g->k, slot[i], l, 0), g->vp[i] = kv_at(g, g->v, slot[i], l, 0);
    }
    // Whole prompts: the training forward's flash attention over packed rows; otherwise each
    // token against its slot's cache.
    if (g->fresh)
        be->attention_forward(g->att, g->lse, g->q, g->kk, g->vv, g->seg, n, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    else
        be->attention_decode(g->att, g->q, g->kp, g->vp, g->klen, n, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    be->linear_forward(g->mid, g->att, w->wo, w->bo, n, Q, C);
    be->add_inplace(g->mid, g->x, (long)n * C);
    be->rmsnorm_forward(g->ln, g->rstd, g->mid, w->ln2, n, C, eps);
    be->linear_forward(g->gate, g->ln, w->w_gate, NULL, n, C, F);
    be->linear_forward(g->up, g->ln, w->w_up, NULL, n, C, F);
    be->swiglu_forward(g->act, g->gate, g->up, (long)n * F);
    be->linear_forward(g->x, g->act, w->w_down, NULL, n, F, C);
    be->add_inplace(g->x, g->mid, (long)n * C);
}

int tp_generator_forward(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out, const int *out_idx,
                         float *logits, tp_err *err) {
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    if (n <= 0) return 0;
    grow(g, n);
    // Positions: after what the slot holds, in call order.
    int *seen = tp_xcalloc((size_t)g->n_slots, sizeof *seen);
    for (int i = 0; i < n; i++) {
        if (slot[i] < 0 || slot[i] >= g->n_slots || token[i] < 0 || token[i] >= c->vocab_size) {
            free(seen);
            tp_err_set(err, "generate: bad slot %d or token %d", slot[i], token[i]);
            return -1;
        }
        g->pos[i] = g->len[slot[i]] + seen[slot[i]]++;
        // fresh: the slot was empty and its tokens in this call are consecutive
        g->seg[i] = g->pos[i] == 0 ? i : (i > 0 && slot[i - 1] == slot[i] ? g->seg[i - 1] : -1);
        g->klen[i] = g->pos[i] + 1;
        if (g->pos[i] >= g->cap) {
            free(seen);
            tp_err_set(err, "generate: sequence in slot %d would exceed %d tokens", slot[i], g->cap);
            return -1;
        }
    }
    g->fresh = true;
    for (int i = 0; i < n && g->fresh; i++) g->fresh = g->seg[i] >= 0 && g->pos[i] == i - g->seg[i];
    g->be->embedding_forward(g->x, token, m->W.embed, n, c->hidden_size);
    for (int l = 0; l < c->num_layers; l++) layer(g, l, n, slot);
    for (int i = 0; i < n; i++) g->len[slot[i]] = g->pos[i] + 1 > g->len[slot[i]] ? g->pos[i] + 1 : g->len[slot[i]];
    free(seen);
    if (n_out > 0) {
        int32_t *rows = tp_xmalloc((size_t)n_out * sizeof *rows);
        for (int i = 0; i < n_out; i++) rows[i] = out_idx[i];
        g->be->gather_rows(g->xg, g->x, rows, n_out, c->hidden_size);
        g->be->rmsnorm_forward(g->ln, g->rstd, g->xg, m->W.norm, n_out, c->hidden_size, (float)c->rms_norm_eps);
        g->be->linear_forward(logits, g->ln, m->W.lm_head, NULL, n_out, c->hidden_size, c->vocab_size);
        free(rows);
    }
    return 0;
}
