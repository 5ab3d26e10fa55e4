// model.c — forward and backward passes of the transformer, written as calls to the ops
// of kernels/ops.h. One layer:
//   h   = x + o_proj(attention(rope(norm_qk(q_proj(ln1(x)))), rope(norm_qk(k_proj(..))), v_proj(..)))
//   out = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
// and the head: logits = lm_head(norm(x_L)), cross-entropy on the targets, computed a
// chunk of tokens at a time so [N, V] logits never exist.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_impl.h"
#include "ops.h"

// Activations of one layer for N tokens (Q = NH*HD, KV = KVH*HD).
typedef struct layer_acts {
    float *ln1, *rstd1;    // [N, C], [N]
    float *q_raw, *q_rstd; // Qwen3: q before its norm [N, Q], rstd [N*NH]
    float *k_raw, *k_rstd; // Qwen3: [N, KV], [N*KVH]
    float *q, *k, *v;      // [N, Q], [N, KV], [N, KV], after norm and RoPE
    float *att, *lse;      // attention output [N, Q], log-sum-exp [N*NH]
    float *mid;            // residual after attention [N, C]
    float *ln2, *rstd2;    // [N, C], [N]
    float *gate, *up, *act;  // [N, F]
} layer_acts;

struct tp_activations {
    int N;          // capacity in tokens
    int n_slots;    // layers with stored activations: L, or 1 when recomputing
    float *res;     // residual stream at each layer's input and the last output [L+1, N, C]
    layer_acts *slot;
    float *lnf, *rstdf;  // final norm [N, C], [N]
    // backward scratch
    float *dres, *dln, *dq, *dk, *dv, *dq_raw, *dk_raw, *datt, *dgate, *dup, *dact, *dlnf;
    // head, one chunk of tokens at a time
    int chunk;
    int32_t *rows, *target;  // [N]
    float *xg, *dxg, *logits;  // [chunk, C], [chunk, C], [chunk, V]
};

static float *falloc(size_t n) { return tp_xmalloc((n ? n : 1) * sizeof(float)); }

void tp_activations_free(tp_activations *a) {
    if (!a) return;
    for (int s = 0; s < a->n_slots; s++) {
        layer_acts *l = &a->slot[s];
        float *bufs[] = {l->ln1, l->rstd1, l->q_raw, l->q_rstd, l->k_raw, l->k_rstd, l->q, l->k, l->v,
                         l->att, l->lse, l->mid, l->ln2, l->rstd2, l->gate, l->up, l->act};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    }
    float *bufs[] = {a->res, a->lnf, a->rstdf, a->dres, a->dln, a->dq, a->dk, a->dv, a->dq_raw, a->dk_raw,
                     a->datt, a->dgate, a->dup, a->dact, a->dlnf, a->xg, a->dxg, a->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(a->slot);
    free(a->rows);
    free(a->target);
    free(a);
}

// Logits of about 8M floats (32 MB) per chunk: 55 tokens of Qwen's 151,936 vocabulary.
static int head_chunk(int V, int N) {
    int c = (1 << 23) / V;
    if (c < 16) c = 16;
    return c < N ? c : N;
}

static tp_activations *activations_new(const tp_model *m, int N) {
    const tp_model_config *c = &m->cfg;
    size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, n = (size_t)N;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)c->num_kv_heads * c->head_dim;
    tp_activations *a = tp_xcalloc(1, sizeof *a);
    a->N = N;
    a->n_slots = m->recompute ? 1 : c->num_layers;
    a->res = falloc((size_t)(c->num_layers + 1) * n * C);
    a->slot = tp_xcalloc((size_t)a->n_slots, sizeof *a->slot);
    for (int s = 0; s < a->n_slots; s++) {
        layer_acts *l = &a->slot[s];
        l->ln1 = falloc(n * C), l->rstd1 = falloc(n);
        if (c->qk_norm) {
            l->q_raw = falloc(n * Q), l->q_rstd = falloc(n * (size_t)c->num_heads);
            l->k_raw = falloc(n * KV), l->k_rstd = falloc(n * (size_t)c->num_kv_heads);
        }
        l->q = falloc(n * Q), l->k = falloc(n * KV), l->v = falloc(n * KV);
        l->att = falloc(n * Q), l->lse = falloc(n * (size_t)c->num_heads);
        l->mid = falloc(n * C);
        l->ln2 = falloc(n * C), l->rstd2 = falloc(n);
        l->gate = falloc(n * F), l->up = falloc(n * F), l->act = falloc(n * F);
    }
    a->lnf = falloc(n * C), a->rstdf = falloc(n);
    a->chunk = head_chunk(c->vocab_size, N);
    a->rows = tp_xmalloc(n * sizeof *a->rows), a->target = tp_xmalloc(n * sizeof *a->target);
    a->xg = falloc((size_t)a->chunk * C), a->logits = falloc((size_t)a->chunk * (size_t)c->vocab_size);
    return a;
}

static void activations_grad_buffers(tp_activations *a, const tp_model_config *c) {
    if (a->dres) return;
    size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, n = (size_t)a->N;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)c->num_kv_heads * c->head_dim;
    a->dres = falloc(n * C), a->dln = falloc(n * C), a->dlnf = falloc(n * C);
    a->dxg = falloc((size_t)a->chunk * C);
    a->dq = falloc(n * Q), a->dk = falloc(n * KV), a->dv = falloc(n * KV), a->datt = falloc(n * Q);
    if (c->qk_norm) a->dq_raw = falloc(n * Q), a->dk_raw = falloc(n * KV);
    a->dgate = falloc(n * F), a->dup = falloc(n * F), a->dact = falloc(n * F);
}

// Activations for N tokens (reallocated when N grows or the recompute setting changed).
static tp_activations *activations_for(tp_model *m, int N) {
    tp_activations *a = m->acts;
    if (a && a->N >= N && a->n_slots == (m->recompute ? 1 : m->cfg.num_layers)) return a;
    tp_activations_free(a);
    return m->acts = activations_new(m, N);
}

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

// ---- forward ----

static void layer_forward(const tp_model *m, int l, layer_acts *a, const float *x, float *out, const tp_batch *b, int N) {
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, KVH = c->num_kv_heads, HD = c->head_dim;
    int Q = NH * HD, KV = KVH * HD;
    float eps = (float)c->rms_norm_eps;
    rmsnorm_forward(a->ln1, a->rstd1, x, w->ln1, N, C, eps);
    if (c->qk_norm) {
        linear_forward(a->q_raw, a->ln1, w->wq, w->bq, N, C, Q);
        linear_forward(a->k_raw, a->ln1, w->wk, w->bk, N, C, KV);
        rmsnorm_forward(a->q, a->q_rstd, a->q_raw, w->q_norm, N * NH, HD, eps);
        rmsnorm_forward(a->k, a->k_rstd, a->k_raw, w->k_norm, N * KVH, HD, eps);
    } else {
        linear_forward(a->q, a->ln1, w->wq, w->bq, N, C, Q);
        linear_forward(a->k, a->ln1, w->wk, w->bk, N, C, KV);
    }
    linear_forward(a->v, a->ln1, w->wv, w->bv, N, C, KV);
    rope_forward(a->q, b->position_ids, m->inv_freq, N, NH, HD);
    rope_forward(a->k, b->position_ids, m->inv_freq, N, KVH, HD);
    attention_forward(a->att, a->lse, a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    linear_forward(a->mid, a->att, w->wo, w->bo, N, Q, C);
    add_inplace(a->mid, x, (long)N * C);
    rmsnorm_forward(a->ln2, a->rstd2, a->mid, w->ln2, N, C, eps);
    linear_forward(a->gate, a->ln2, w->w_gate, NULL, N, C, F);
    linear_forward(a->up, a->ln2, w->w_up, NULL, N, C, F);
    swiglu_forward(a->act, a->gate, a->up, (long)N * F);
    linear_forward(out, a->act, w->w_down, NULL, N, F, C);
    add_inplace(out, a->mid, (long)N * C);
}

static layer_acts *slot_of(tp_activations *a, int l) { return &a->slot[a->n_slots == 1 ? 0 : l]; }

// Embedding, every layer and the final norm; the residual stream of layer l's input is
// a->res[l], the final normalised hidden state a->lnf.
static void trunk_forward(tp_model *m, tp_activations *a, const tp_batch *b, int N) {
    const tp_model_config *c = &m->cfg;
    size_t NC = (size_t)N * c->hidden_size;
    embedding_forward(a->res, b->input_ids, m->W.embed, N, c->hidden_size);
    for (int l = 0; l < c->num_layers; l++)
        layer_forward(m, l, slot_of(a, l), a->res + l * NC, a->res + (l + 1) * NC, b, N);
    rmsnorm_forward(a->lnf, a->rstdf, a->res + c->num_layers * NC, m->W.norm, N, c->hidden_size, (float)c->rms_norm_eps);
}

// Flat indices of the tokens that are predicted targets, and the target each predicts.
static int collect_targets(const tp_batch *b, int32_t *rows, int32_t *target) {
    int n = 0;
    if (!b->loss_mask) return 0;
    for (int r = 0; r < b->B; r++)
        for (int t = 0; t + 1 < b->T; t++) {
            int i = r * b->T + t;
            if (b->loss_mask[i + 1] && b->seg_start[i + 1] == b->seg_start[i]) {
                rows[n] = i;
                target[n] = b->input_ids[i + 1];
                n++;
            }
        }
    return n;
}

static int check_batch(const tp_model *m, const tp_batch *b, tp_err *err) {
    if (b->B <= 0 || b->T <= 0 || (long)b->B * b->T > (1L << 30)) {
        tp_err_set(err, "batch: bad shape %d x %d", b->B, b->T);
        return -1;
    }
    for (int i = 0; i < b->B * b->T; i++) {
        if (b->input_ids[i] < 0 || b->input_ids[i] >= m->cfg.vocab_size) {
            tp_err_set(err, "batch: token %d at row %d position %d is outside the vocabulary (%d)", b->input_ids[i],
                       i / b->T, i % b->T, m->cfg.vocab_size);
            return -1;
        }
        int row0 = i / b->T * b->T;
        if (b->seg_start[i] < row0 || b->seg_start[i] > i || b->position_ids[i] < 0) {
            tp_err_set(err, "batch: bad sequence start or position at row %d position %d", i / b->T, i % b->T);
            return -1;
        }
    }
    return 0;
}

int tp_model_forward(tp_model *m, const tp_batch *b, tp_loss *loss, const int32_t *out_rows, int n_out, float *logits,
                     tp_err *err) {
    if (check_batch(m, b, err) < 0) return -1;
    int N = b->B * b->T, C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    tp_activations *a = activations_for(m, N);
    trunk_forward(m, a, b, N);
    if (logits) {
        if (!out_rows) {
            linear_forward(logits, a->lnf, m->W.lm_head, NULL, N, C, V);
        } else {
            for (int i = 0; i < n_out; i += a->chunk) {
                int n = n_out - i < a->chunk ? n_out - i : a->chunk;
                gather_rows(a->xg, a->lnf, out_rows + i, n, C);
                linear_forward(logits + (size_t)i * V, a->xg, m->W.lm_head, NULL, n, C, V);
            }
        }
    }
    if (loss) {
        *loss = (tp_loss){0, 0};
        int n_t = collect_targets(b, a->rows, a->target);
        for (int i = 0; i < n_t; i += a->chunk) {
            int n = n_t - i < a->chunk ? n_t - i : a->chunk;
            gather_rows(a->xg, a->lnf, a->rows + i, n, C);
            linear_forward(a->logits, a->xg, m->W.lm_head, NULL, n, C, V);
            loss->sum += crossentropy_forward_backward(a->logits, a->target + i, n, V, 0.0f);
        }
        loss->count = n_t;
    }
    return 0;
}

// ---- backward ----

// dres holds d/d(out) of layer l on entry and d/d(x) on return.
static void layer_backward(tp_model *m, int l, layer_acts *a, tp_activations *s, const float *x, const tp_batch *b,
                           int N) {
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    tp_layer_tensors *g = &m->G.layers[l];
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, KVH = c->num_kv_heads, HD = c->head_dim;
    int Q = NH * HD, KV = KVH * HD;
    size_t n = (size_t)N;
    // MLP: out = mid + down(act)
    zero(s->dact, n * F);
    linear_backward(s->dact, g->w_down, NULL, s->dres, a->act, w->w_down, N, F, C);
    swiglu_backward(s->dgate, s->dup, s->dact, a->gate, a->up, (long)N * F);
    zero(s->dln, n * C);
    linear_backward(s->dln, g->w_gate, NULL, s->dgate, a->ln2, w->w_gate, N, C, F);
    linear_backward(s->dln, g->w_up, NULL, s->dup, a->ln2, w->w_up, N, C, F);
    rmsnorm_backward(s->dres, g->ln2, s->dln, a->mid, w->ln2, a->rstd2, N, C);  // dres: d/d(mid)
    // attention: mid = x + o(att)
    zero(s->datt, n * Q);
    linear_backward(s->datt, g->wo, g->bo, s->dres, a->att, w->wo, N, Q, C);
    zero(s->dq, n * Q), zero(s->dk, n * KV), zero(s->dv, n * KV);
    attention_backward(s->dq, s->dk, s->dv, s->datt, a->att, a->lse, a->q, a->k, a->v, b->seg_start, N, NH, KVH, HD,
                       1.0f / sqrtf((float)HD));
    rope_backward(s->dq, b->position_ids, m->inv_freq, N, NH, HD);
    rope_backward(s->dk, b->position_ids, m->inv_freq, N, KVH, HD);
    float *dq = s->dq, *dk = s->dk;
    if (c->qk_norm) {
        zero(s->dq_raw, n * Q), zero(s->dk_raw, n * KV);
        rmsnorm_backward(s->dq_raw, g->q_norm, s->dq, a->q_raw, w->q_norm, a->q_rstd, N * NH, HD);
        rmsnorm_backward(s->dk_raw, g->k_norm, s->dk, a->k_raw, w->k_norm, a->k_rstd, N * KVH, HD);
        dq = s->dq_raw, dk = s->dk_raw;
    }
    zero(s->dln, n * C);
    linear_backward(s->dln, g->wq, g->bq, dq, a->ln1, w->wq, N, C, Q);
    linear_backward(s->dln, g->wk, g->bk, dk, a->ln1, w->wk, N, C, KV);
    linear_backward(s->dln, g->wv, g->bv, s->dv, a->ln1, w->wv, N, C, KV);
    rmsnorm_backward(s->dres, g->ln1, s->dln, x, w->ln1, a->rstd1, N, C);  // dres: d/d(x)
}

// Logits, loss and their gradient a chunk of target tokens at a time; leaves d/d(lnf) in a->dlnf.
static void head_forward_backward(tp_model *m, tp_activations *a, const tp_batch *b, float loss_scale, tp_loss *loss,
                                  int N) {
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    zero(a->dlnf, (size_t)N * C);
    int n_t = collect_targets(b, a->rows, a->target);
    if (loss_scale == 0.0f) loss_scale = n_t ? 1.0f / (float)n_t : 0.0f;
    *loss = (tp_loss){0, n_t};
    for (int i = 0; i < n_t; i += a->chunk) {
        int n = n_t - i < a->chunk ? n_t - i : a->chunk;
        gather_rows(a->xg, a->lnf, a->rows + i, n, C);
        linear_forward(a->logits, a->xg, m->W.lm_head, NULL, n, C, V);
        loss->sum += crossentropy_forward_backward(a->logits, a->target + i, n, V, loss_scale);
        // a->logits now holds d/d(logits)
        zero(a->dxg, (size_t)n * C);
        linear_backward(a->dxg, m->G.lm_head, NULL, a->logits, a->xg, m->W.lm_head, n, C, V);
        scatter_add_rows(a->dlnf, a->dxg, a->rows + i, n, C);
    }
}

int tp_model_forward_backward(tp_model *m, const tp_batch *b, float loss_scale, tp_loss *loss, tp_err *err) {
    if (!b->loss_mask) {
        tp_err_set(err, "batch: a backward pass needs a loss mask");
        return -1;
    }
    if (check_batch(m, b, err) < 0) return -1;
    if (!m->g) tp_model_zero_grad(m);
    const tp_model_config *c = &m->cfg;
    int N = b->B * b->T, C = c->hidden_size;
    size_t NC = (size_t)N * C;
    tp_activations *a = activations_for(m, N);
    activations_grad_buffers(a, c);
    trunk_forward(m, a, b, N);
    head_forward_backward(m, a, b, loss_scale, loss, N);
    zero(a->dres, NC);
    rmsnorm_backward(a->dres, m->G.norm, a->dlnf, a->res + c->num_layers * NC, m->W.norm, a->rstdf, N, C);
    for (int l = c->num_layers - 1; l >= 0; l--) {
        layer_acts *s = slot_of(a, l);
        // Recomputing refills the one shared slot from the stored layer input.
        if (m->recompute) layer_forward(m, l, s, a->res + l * NC, a->res + (l + 1) * NC, b, N);
        layer_backward(m, l, s, a, a->res + l * NC, b, N);
    }
    embedding_backward(m->G.embed, a->dres, b->input_ids, N, C);
    return 0;
}

void tp_model_zero_grad(tp_model *m) {
    if (!m->g) {
        m->g = tp_xcalloc(m->n_floats ? m->n_floats : 1, sizeof *m->g);
        tp_model_bind(m, m->g, &m->G);
        return;
    }
    zero(m->g, m->n_floats);
}

int tp_batch_seg_start(int32_t *seg_start, int B, int T, const int32_t *const *starts, const int *count) {
    for (int r = 0; r < B; r++) {
        if (count[r] < 1 || starts[r][0] != 0) return -1;
        for (int k = 0; k < count[r]; k++) {
            int32_t s = starts[r][k], e = k + 1 < count[r] ? starts[r][k + 1] : T;
            if (s < 0 || e <= s || e > T) return -1;
            for (int t = s; t < e; t++) seg_start[r * T + t] = r * T + s;
        }
    }
    return 0;
}

void tp_model_free(tp_model *m) {
    if (!m) return;
    jv_free(m->config_json);
    free(m->params);
    free(m->w);
    free(m->g);
    free(m->W.layers);
    free(m->G.layers);
    free(m->inv_freq);
    free(m->load_note);
    tp_activations_free(m->acts);
    free(m);
}
