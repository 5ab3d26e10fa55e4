// model.c — forward and backward passes of the transformer, written as calls to the ops
// of kernels/ops.h. One layer:
//   h   = x + o_proj(attention(rope(norm_qk(q_proj(ln1(x)))), rope(norm_qk(k_proj(..))), v_proj(..)))
//   out = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
// and the head: logits = lm_head(norm(x_L)), cross-entropy on the targets, computed a
// chunk of tokens at a time so [N, V] logits never exist.
//
// Every op and buffer goes through the model's backend (backend.h): the same code runs on
// the CPU and, with device memory, on a GPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "model_impl.h"
#include "ops.h"

// Activations of one layer for N tokens (Q = NH*HD, KV = KVH*HD). The void * ones are of
// the backend's activation type (act_bytes).
typedef struct layer_acts {
    attn_acts at;            // the attention block's (ops.h): ln1, q, k, v, att, ...
    float *mid;              // residual after attention [N, C]
    void *ln2;               // [N, C]
    float *rstd2;            // [N]
    void *gate, *up, *act;   // [N, F]
} layer_acts;

struct tp_activations {
    const tp_backend *be;  // whose memory the buffers are
    int N;          // capacity in tokens
    int n_slots;    // layers with stored activations: L, or 1 when recomputing
    float *res;     // residual stream at each layer's input and the last output [L+1, N, C]
    layer_acts *slot;
    float *lnf, *rstdf;  // final norm [N, C], [N]
    // backward scratch
    float *dres, *dln, *dlnf;
    attn_scratch ds;           // the attention block's backward scratch (datt of act_bytes)
    void *dgate, *dup, *dact;  // [N, F], as layer_acts.gate
    size_t act_bytes;          // bytes an element of the void * activations and training's logits
    // head, one chunk of tokens at a time: chunk rows of fp32 logits, or in training
    // train_chunk rows of act_bytes each in the same buffer (twice the rows in bf16)
    int chunk, train_chunk;
    int32_t *rows, *target;  // [N], host: the flat index of each target token's predictor, the target
    float *xg, *dxg, *logits;  // [train_chunk, C], [train_chunk, C], [chunk, V] floats
    // The batch's integers where the backend reads them: on a device, copies in dev_ints
    // (ids, pos, seg, rows, target: [N] each); on the cpu, the host arrays themselves.
    int32_t *dev_ints;
    const int32_t *ids, *pos, *seg, *rows_b, *target_b;
    size_t bytes;     // allocated, for out-of-memory messages
    bool failed;      // an allocation failed
};

const tp_backend *tp_model_backend(const tp_model *m) { return m->be ? m->be : tp_backend_cpu(); }

// bytes of the backend's memory (falloc: n floats; act_alloc: n elements of act_bytes); a
// failure is remembered and reported by the caller with the total asked for.
static void *balloc(tp_activations *a, size_t bytes) {
    bytes = bytes ? bytes : 1;
    a->bytes += bytes;
    void *p = a->be->alloc(bytes);
    if (!p) a->failed = true;
    return p;
}
static float *falloc(tp_activations *a, size_t n) { return balloc(a, n * sizeof(float)); }
static void *act_alloc(tp_activations *a, size_t n) { return balloc(a, n * a->act_bytes); }

static void bfree(const tp_backend *be, void *p) {
    if (p) be->free(p);
}

void tp_activations_free(tp_activations *a) {
    if (!a) return;
    for (int s = 0; s < a->n_slots; s++) {
        layer_acts *l = &a->slot[s];
        const attn_acts *t = &l->at;
        void *bufs[] = {t->ln, t->rstd, t->q_raw, t->q_rstd, t->k_raw, t->k_rstd, t->q, t->k, t->v,
                        t->att, t->lse, l->mid, l->ln2, l->rstd2, l->gate, l->up, l->act};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) bfree(a->be, bufs[i]);
    }
    const bool joined = a->ds.dqkv != NULL;  // dq, dk, dv inside it
    void *bufs[] = {a->res, a->lnf, a->rstdf, a->dres, a->dln, joined ? NULL : a->ds.dq, joined ? NULL : a->ds.dk,
                    joined ? NULL : a->ds.dv, a->ds.dqkv, a->ds.dq_raw, a->ds.dk_raw, a->ds.datt, a->dgate, a->dup,
                    a->dact, a->dlnf, a->xg, a->dxg, a->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) bfree(a->be, bufs[i]);
    bfree(a->be, a->dev_ints);
    free(a->slot);
    free(a->rows);
    free(a->target);
    free(a);
}

// Logits of the backend's chunk size (cpu: 8M floats, 55 tokens of Qwen's 151,936 vocabulary).
static int head_chunk(const tp_backend *be, int V, int N) {
    int c = (int)(be->head_chunk_floats / (size_t)V);
    if (c < 16) c = 16;
    return c < N ? c : N;
}

static tp_activations *activations_new(const tp_model *m, int N) {
    const tp_model_config *c = &m->cfg;
    size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, n = (size_t)N;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)c->num_kv_heads * c->head_dim;
    tp_activations *a = tp_xcalloc(1, sizeof *a);
    a->be = tp_model_backend(m);
    a->N = N;
    a->act_bytes = a->be->act_bytes();
    a->n_slots = m->recompute ? 1 : c->num_layers;
    a->res = falloc(a, (size_t)(c->num_layers + 1) * n * C);
    a->slot = tp_xcalloc((size_t)a->n_slots, sizeof *a->slot);
    for (int s = 0; s < a->n_slots; s++) {
        layer_acts *l = &a->slot[s];
        attn_acts *t = &l->at;
        t->ln = act_alloc(a, n * C), t->rstd = falloc(a, n);
        if (c->qk_norm) {
            t->q_raw = act_alloc(a, n * Q), t->q_rstd = falloc(a, n * (size_t)c->num_heads);
            t->k_raw = act_alloc(a, n * KV), t->k_rstd = falloc(a, n * (size_t)c->num_kv_heads);
        }
        t->q = act_alloc(a, n * Q), t->k = act_alloc(a, n * KV), t->v = act_alloc(a, n * KV);
        t->att = act_alloc(a, n * Q), t->lse = falloc(a, n * (size_t)c->num_heads);
        l->mid = falloc(a, n * C);
        l->ln2 = act_alloc(a, n * C), l->rstd2 = falloc(a, n);
        l->gate = act_alloc(a, n * F), l->up = act_alloc(a, n * F), l->act = act_alloc(a, n * F);
    }
    a->lnf = falloc(a, n * C), a->rstdf = falloc(a, n);
    a->chunk = head_chunk(a->be, c->vocab_size, N);
    a->train_chunk = (int)((size_t)a->chunk * sizeof(float) / a->act_bytes);
    a->train_chunk = a->train_chunk < N ? a->train_chunk : N;
    a->rows = tp_xmalloc(n * sizeof *a->rows), a->target = tp_xmalloc(n * sizeof *a->target);
    if (a->be->device) {
        a->bytes += 5 * n * sizeof(int32_t);
        a->dev_ints = a->be->alloc(5 * n * sizeof(int32_t));
        if (!a->dev_ints) a->failed = true;
    }
    a->xg = falloc(a, (size_t)a->train_chunk * C), a->logits = falloc(a, (size_t)a->chunk * (size_t)c->vocab_size);
    return a;
}

static void activations_grad_buffers(tp_activations *a, const tp_model_config *c) {
    if (a->dres) return;
    size_t C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size, n = (size_t)a->N;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)c->num_kv_heads * c->head_dim;
    a->dres = falloc(a, n * C), a->dln = falloc(a, n * C), a->dlnf = falloc(a, n * C);
    a->dxg = falloc(a, (size_t)a->train_chunk * C);
    attn_scratch *ds = &a->ds;
    ds->dln = a->dln;
    ds->datt = act_alloc(a, n * Q);
    if (c->qk_norm) {  // ops.h attn_scratch: fp32 where the per-head norms' backward reads them
        ds->dq = falloc(a, n * Q), ds->dk = falloc(a, n * KV), ds->dv = falloc(a, n * KV);
        ds->dq_raw = falloc(a, n * Q), ds->dk_raw = falloc(a, n * KV);
    } else {  // dq, dk, dv one after another in the memory of dqkv (ops.h: either is used)
        ds->dqkv = act_alloc(a, n * (Q + 2 * KV));
        char *at = ds->dqkv;
        if (at) ds->dq = at, ds->dk = at + n * Q * a->act_bytes, ds->dv = at + n * (Q + KV) * a->act_bytes;
    }
    a->dgate = act_alloc(a, n * F), a->dup = act_alloc(a, n * F), a->dact = act_alloc(a, n * F);
}

static int out_of_memory(const tp_model *m, tp_activations *a, int N, tp_err *err) {
    const tp_backend *be = tp_model_backend(m);
    tp_err_set(err,
               "out of %s memory: activations for %d tokens need %.2f GiB (%.2f GiB free); "
               "try a smaller --micro-batch or --batch-tokens, or --recompute",
               be->device ? "device" : "host", N, (double)a->bytes / (1 << 30), (double)be->free_bytes() / (1 << 30));
    return -1;
}

// Activations for N tokens (reallocated when N grows, or the recompute setting or the
// backend's act_bytes changed).
static tp_activations *activations_for(tp_model *m, int N, bool grads, tp_err *err) {
    tp_activations *a = m->acts;
    const tp_backend *be = tp_model_backend(m);
    if (!(a && a->N >= N && a->n_slots == (m->recompute ? 1 : m->cfg.num_layers) && a->be == be &&
          a->act_bytes == be->act_bytes())) {
        tp_activations_free(a);
        a = m->acts = activations_new(m, N);
    }
    if (grads) activations_grad_buffers(a, &m->cfg);
    if (a->failed) {
        out_of_memory(m, a, N, err);
        tp_activations_free(a);
        m->acts = NULL;
        return NULL;
    }
    return a;
}

// The batch's integers where the backend reads them (see tp_activations.ids).
static void bind_batch(tp_activations *a, const tp_batch *b, int N) {
    if (!a->be->device) {
        a->ids = b->input_ids, a->pos = b->position_ids, a->seg = b->seg_start;
        a->rows_b = a->rows, a->target_b = a->target;
        return;
    }
    size_t bytes = (size_t)N * sizeof(int32_t);
    int32_t *d = a->dev_ints;
    a->be->upload(d, b->input_ids, bytes);
    a->be->upload(d + a->N, b->position_ids, bytes);
    a->be->upload(d + 2 * (size_t)a->N, b->seg_start, bytes);
    a->ids = d, a->pos = d + a->N, a->seg = d + 2 * (size_t)a->N;
    a->rows_b = d + 3 * (size_t)a->N, a->target_b = d + 4 * (size_t)a->N;
}

// The targets found on the host, copied to where the backend reads them.
static void bind_targets(tp_activations *a, int n_t) {
    if (a->be->device && n_t > 0) {
        a->be->upload((void *)a->rows_b, a->rows, (size_t)n_t * sizeof(int32_t));
        a->be->upload((void *)a->target_b, a->target, (size_t)n_t * sizeof(int32_t));
    }
}

static void zero(const tp_backend *be, float *p, size_t n) { be->memzero(p, n * sizeof *p); }

// ---- forward ----

// The attention block's view of layer l's weights and of the batch.
static attn_weights attn_weights_of(const tp_model *m, const tp_layer_tensors *w) {
    bool qk = m->cfg.qk_norm;
    return (attn_weights){w->ln1, w->wq, w->wk, w->wv, w->wo, w->bq, w->bk, w->bv, w->bo,
                          qk ? w->q_norm : NULL, qk ? w->k_norm : NULL};
}
static attn_batch attn_batch_of(const tp_model *m, const tp_activations *s, int N) {
    const tp_model_config *c = &m->cfg;
    return (attn_batch){N, c->hidden_size, c->num_heads, c->num_kv_heads, c->head_dim, (float)c->rms_norm_eps,
                        s->pos, s->seg, m->dev_inv_freq ? m->dev_inv_freq : m->inv_freq};
}

static void layer_forward(const tp_model *m, int l, layer_acts *a, const tp_activations *s, const float *x, float *out,
                          int N) {
    const tp_backend *be = s->be;
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    int C = c->hidden_size, F = c->intermediate_size;
    attn_weights aw = attn_weights_of(m, w);
    attn_batch ab = attn_batch_of(m, s, N);
    be->attn_forward(a->mid, a->ln2, a->rstd2, &a->at, x, &aw, w->ln2, &ab);  // mid = x + attn; ln2 = norm(mid)
    be->mlp_up_forward(a->act, a->gate, a->up, a->ln2, w->w_gate, w->w_up, N, C, F);
    be->mlp_down_forward(out, a->act, w->w_down, a->mid, N, F, C);  // out = mid + down(act)
}

static layer_acts *slot_of(tp_activations *a, int l) { return &a->slot[a->n_slots == 1 ? 0 : l]; }

// Embedding, every layer and the final norm; the residual stream of layer l's input is
// a->res[l], the final normalised hidden state a->lnf.
static void trunk_forward(tp_model *m, tp_activations *a, int N) {
    const tp_model_config *c = &m->cfg;
    size_t NC = (size_t)N * c->hidden_size;
    a->be->embedding_forward(a->res, a->ids, m->W.embed, N, c->hidden_size);
    for (int l = 0; l < c->num_layers; l++)
        layer_forward(m, l, slot_of(a, l), a, a->res + l * NC, a->res + (l + 1) * NC, N);
    a->be->rmsnorm_forward(a->lnf, a->rstdf, a->res + c->num_layers * NC, m->W.norm, N, c->hidden_size,
                           (float)c->rms_norm_eps);
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

// Reports the backend's first error since the last check (a failed launch, say).
static int backend_check(const tp_backend *be, tp_err *err) {
    char msg[512];
    if (be->sync(msg, sizeof msg) == 0) return 0;
    tp_err_set(err, "%s backend: %s", be->name, msg);
    return -1;
}

// Logits [n_out, V] (host) of the tokens out_rows (host), or of all N when out_rows is NULL,
// a chunk of rows at a time.
static void head_logits(tp_model *m, tp_activations *a, const int32_t *out_rows, int n_out, float *logits, int N) {
    const tp_backend *be = a->be;
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    if (!out_rows) {
        for (int i = 0; i < N; i++) a->rows[i] = i;
        out_rows = a->rows, n_out = N;
    }
    int32_t *idx = be->device ? (int32_t *)a->rows_b : NULL;
    for (int i = 0; i < n_out; i += a->chunk) {
        int n = n_out - i < a->chunk ? n_out - i : a->chunk;
        if (idx) be->upload(idx, out_rows + i, (size_t)n * sizeof *idx);
        be->gather_rows(a->xg, a->lnf, idx ? idx : out_rows + i, n, C);
        float *dst = be->device ? a->logits : logits + (size_t)i * V;
        be->linear_forward(dst, a->xg, m->W.lm_head, NULL, n, C, V);
        if (be->device) be->download(logits + (size_t)i * V, a->logits, (size_t)n * V * sizeof(float));
    }
}

// Activations for the batch, filled by the forward pass up to the final norm (no grads).
static tp_activations *run_trunk(tp_model *m, const tp_batch *b, tp_err *err) {
    int N = b->B * b->T;
    tp_activations *a = activations_for(m, N, false, err);
    if (!a) return NULL;
    bind_batch(a, b, N);
    trunk_forward(m, a, N);
    return a;
}

int tp_model_forward(tp_model *m, const tp_batch *b, tp_loss *loss, const int32_t *out_rows, int n_out, float *logits,
                     tp_err *err) {
    if (check_batch(m, b, err) < 0) return -1;
    int N = b->B * b->T, C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    if (out_rows)
        for (int i = 0; i < n_out; i++)
            if (out_rows[i] < 0 || out_rows[i] >= N) {
                tp_err_set(err, "forward: output row %d is outside the batch (%d tokens)", out_rows[i], N);
                return -1;
            }
    tp_activations *a = run_trunk(m, b, err);
    if (!a) return -1;
    const tp_backend *be = a->be;
    if (logits) head_logits(m, a, out_rows, n_out, logits, N);
    if (loss) {
        *loss = (tp_loss){0, 0};
        int n_t = collect_targets(b, a->rows, a->target);
        bind_targets(a, n_t);
        for (int i = 0; i < n_t; i += a->chunk) {
            int n = n_t - i < a->chunk ? n_t - i : a->chunk;
            be->gather_rows(a->xg, a->lnf, a->rows_b + i, n, C);
            be->linear_forward(a->logits, a->xg, m->W.lm_head, NULL, n, C, V);
            loss->sum += be->crossentropy_forward_backward(a->logits, a->target_b + i, n, V, 0.0f);
        }
        loss->count = n_t;
    }
    return backend_check(be, err);
}

// The k most likely tokens of one row of logits (already divided by the temperature) and
// their log-probs, best first (ties: the smaller id).
static void row_top(const float *z, int V, int k, int32_t *ids, double *lp) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    for (int j = 0; j < V; j++) sum += exp((double)z[j] - mx);
    double lse = mx + log(sum);
    int have = 0;
    for (int j = 0; j < V; j++) {
        if (have == k && z[j] <= z[ids[k - 1]]) continue;
        int at = have < k ? have++ : k - 1;
        while (at > 0 && z[j] > z[ids[at - 1]]) ids[at] = ids[at - 1], at--;
        ids[at] = j;
    }
    for (int i = 0; i < have; i++) lp[i] = (double)z[ids[i]] - lse;
}

int tp_model_logprobs_top(tp_model *m, const tp_batch *b, const int32_t *rows, const int32_t *targets, int n,
                          float temperature, double *out, int k, int32_t *top_ids, double *top_lp, tp_err *err) {
    if (check_batch(m, b, err) < 0) return -1;
    int N = b->B * b->T, C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    if (n > N || temperature <= 0 || k < 0 || k > V) {
        tp_err_set(err, "logprobs: %d rows for %d tokens, temperature %g, %d top tokens", n, N, temperature, k);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= N || targets[i] < 0 || targets[i] >= V) {
            tp_err_set(err, "logprobs: row %d or target %d out of range", rows[i], targets[i]);
            return -1;
        }
    tp_activations *a = run_trunk(m, b, err);
    if (!a) return -1;
    const tp_backend *be = a->be;
    memcpy(a->rows, rows, (size_t)n * sizeof *rows);
    memcpy(a->target, targets, (size_t)n * sizeof *targets);
    bind_targets(a, n);
    float *host = k > 0 && be->device ? tp_xmalloc((size_t)a->chunk * V * sizeof *host) : NULL;
    for (int i = 0; i < n; i += a->chunk) {
        int rows_now = n - i < a->chunk ? n - i : a->chunk;
        be->gather_rows(a->xg, a->lnf, a->rows_b + i, rows_now, C);
        be->linear_forward(a->logits, a->xg, m->W.lm_head, NULL, rows_now, C, V);
        if (temperature != 1.0f) be->scale(a->logits, (size_t)rows_now * V, 1.0f / temperature);
        if (k > 0) {  // before the loss op overwrites the logits with its gradient
            const float *z = a->logits;
            if (host) be->download(host, a->logits, (size_t)rows_now * V * sizeof *host), z = host;
            for (int r = 0; r < rows_now; r++)
                row_top(z + (size_t)r * V, V, k, top_ids + (size_t)(i + r) * k, top_lp + (size_t)(i + r) * k);
        }
        // One row at a time through the loss op: -loss is the row's log-probability.
        for (int r = 0; r < rows_now; r++)
            out[i + r] = -be->crossentropy_forward_backward(a->logits + (size_t)r * V, a->target_b + i + r, 1, V, 0.0f);
    }
    free(host);
    return backend_check(be, err);
}

int tp_model_logprobs(tp_model *m, const tp_batch *b, const int32_t *rows, const int32_t *targets, int n,
                      float temperature, double *out, tp_err *err) {
    return tp_model_logprobs_top(m, b, rows, targets, n, temperature, out, 0, NULL, NULL, err);
}

// ---- backward ----

// dres holds d/d(out) of layer l on entry and d/d(x) on return.
static void layer_backward(tp_model *m, int l, layer_acts *a, tp_activations *s, const float *x, int N) {
    const tp_backend *be = s->be;
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    tp_layer_tensors *g = &m->G.layers[l];
    int C = c->hidden_size, F = c->intermediate_size;
    // MLP: out = mid + down(act); mlp_backward writes dx (no zeroing first)
    be->mlp_backward(s->dln, g->w_gate, g->w_up, g->w_down, s->dres, a->ln2, a->act, a->gate, a->up, w->w_gate,
                     w->w_up, w->w_down, s->dact, s->dgate, s->dup, N, C, F);
    be->rmsnorm_backward(s->dres, g->ln2, s->dln, a->mid, w->ln2, a->rstd2, N, C);  // dres: d/d(mid)
    // attention: mid = x + o(att)
    attn_weights aw = attn_weights_of(m, w);
    bool qk = c->qk_norm;
    attn_grads ag = {g->ln1, g->wq, g->wk, g->wv, g->wo, g->bq, g->bk, g->bv, g->bo,
                     qk ? g->q_norm : NULL, qk ? g->k_norm : NULL};
    attn_batch ab = attn_batch_of(m, s, N);
    be->attn_backward(s->dres, &ag, &a->at, x, &aw, &s->ds, &ab);  // dres: d/d(x)
}

// Logits, loss and their gradient a chunk of target tokens at a time; leaves d/d(lnf) in a->dlnf.
static void head_forward_backward(tp_model *m, tp_activations *a, const tp_batch *b, float loss_scale, tp_loss *loss,
                                  int N) {
    const tp_backend *be = a->be;
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    zero(be, a->dlnf, (size_t)N * C);
    int n_t = collect_targets(b, a->rows, a->target);
    bind_targets(a, n_t);
    if (loss_scale == 0.0f) loss_scale = n_t ? 1.0f / (float)n_t : 0.0f;
    *loss = (tp_loss){0, n_t};
    for (int i = 0; i < n_t; i += a->train_chunk) {
        int n = n_t - i < a->train_chunk ? n_t - i : a->train_chunk;
        be->gather_rows(a->xg, a->lnf, a->rows_b + i, n, C);
        loss->sum += be->head_loss_backward(a->dxg, m->G.lm_head, a->xg, m->W.lm_head, a->target_b + i, a->logits, n,
                                            C, V, loss_scale);
        be->scatter_add_rows(a->dlnf, a->dxg, a->rows_b + i, n, C);
    }
}

int tp_model_forward_backward(tp_model *m, const tp_batch *b, float loss_scale, tp_loss *loss, tp_err *err) {
    if (!b->loss_mask) {
        tp_err_set(err, "batch: a backward pass needs a loss mask");
        return -1;
    }
    if (check_batch(m, b, err) < 0) return -1;
    if (m->dev_w && !m->dev_g) {
        tp_err_set(err, "backward: the model was moved to the device without gradients");
        return -1;
    }
    if (!tp_model_grads(m)) tp_model_zero_grad(m);
    const tp_model_config *c = &m->cfg;
    int N = b->B * b->T, C = c->hidden_size;
    size_t NC = (size_t)N * C;
    tp_activations *a = activations_for(m, N, true, err);
    if (!a) return -1;
    const tp_backend *be = a->be;
    bind_batch(a, b, N);
    trunk_forward(m, a, N);
    head_forward_backward(m, a, b, loss_scale, loss, N);
    zero(be, a->dres, NC);
    be->rmsnorm_backward(a->dres, m->G.norm, a->dlnf, a->res + c->num_layers * NC, m->W.norm, a->rstdf, N, C);
    for (int l = c->num_layers - 1; l >= 0; l--) {
        layer_acts *s = slot_of(a, l);
        // Recomputing refills the one shared slot from the stored layer input.
        if (m->recompute) layer_forward(m, l, s, a, a->res + l * NC, a->res + (l + 1) * NC, N);
        layer_backward(m, l, s, a, a->res + l * NC, N);
    }
    be->embedding_backward(m->G.embed, a->dres, a->ids, N, C);
    return backend_check(be, err);
}

void tp_model_zero_grad(tp_model *m) {
    if (m->dev_w) {  // on a device the gradients were allocated with the model (tp_model_use_backend)
        if (m->dev_g) m->be->memzero(m->dev_g, m->n_floats * sizeof(float));
        return;
    }
    if (!m->g) {
        m->g = tp_xcalloc(m->n_floats ? m->n_floats : 1, sizeof *m->g);
        tp_model_bind(m, m->g, &m->G);
        return;
    }
    memset(m->g, 0, m->n_floats * sizeof *m->g);
}

float *tp_model_weights(tp_model *m) { return m->dev_w ? m->dev_w : m->w; }
float *tp_model_grads(tp_model *m) { return m->dev_w ? m->dev_g : m->g; }

static void free_device(tp_model *m) {
    if (!m->be) return;
    bfree(m->be, m->dev_w), bfree(m->be, m->dev_g), bfree(m->be, m->dev_inv_freq);
    m->dev_w = m->dev_g = m->dev_inv_freq = NULL;
}

int tp_model_use_backend(tp_model *m, const tp_backend *be, bool train, tp_err *err) {
    if (tp_model_backend(m)->device) tp_model_pull(m, m->dev_g != NULL);
    tp_activations_free(m->acts);
    m->acts = NULL;
    free_device(m);
    m->be = be;
    tp_model_bind(m, m->w, &m->W);
    if (m->g) tp_model_bind(m, m->g, &m->G);
    if (!be->device) return 0;
    size_t bytes = m->n_floats * sizeof(float), half = (size_t)(m->cfg.head_dim / 2) * sizeof(float);
    m->dev_w = be->alloc(bytes);
    m->dev_inv_freq = be->alloc(half);
    if (train) m->dev_g = be->alloc(bytes);
    if (!m->dev_w || !m->dev_inv_freq || (train && !m->dev_g)) {
        free_device(m);
        size_t want = bytes * (train ? 2 : 1);
        tp_err_set(err, "out of device memory: the model's %zu parameters need %.2f GiB%s (%.2f GiB free)",
                   m->n_floats, (double)want / (1 << 30), train ? " with their gradients" : "",
                   (double)be->free_bytes() / (1 << 30));
        m->be = NULL;
        return -1;
    }
    be->upload(m->dev_w, m->w, bytes);
    if (be->weights_changed) be->weights_changed();
    be->upload(m->dev_inv_freq, m->inv_freq, half);
    tp_model_bind(m, m->dev_w, &m->W);
    if (train) {
        be->memzero(m->dev_g, bytes);
        tp_model_bind(m, m->dev_g, &m->G);
    }
    return backend_check(be, err);
}

int tp_model_place(tp_model *m, const char *device, const char *matmul, bool train, char *desc, int cap,
                   tp_err *err) {
    const tp_backend *be = tp_backend_named(device ? device : "auto", err);
    if (!be) return -1;
    if (!matmul) matmul = be->device ? "bf16" : "fp32";
    if (tp_backend_set_matmul(be, matmul) < 0) {
        tp_err_set(err, "--matmul %s: fp32, tf32 or bf16", matmul);
        return -1;
    }
    if (tp_model_use_backend(m, be, train, err) < 0) return -1;
    char dev[200];
    tp_backend_describe(be, dev, sizeof dev);
    snprintf(desc, (size_t)cap, "%s%s%s", dev, be->device ? ", matrix products in " : "", be->device ? matmul : "");
    return 0;
}

void tp_model_pull(tp_model *m, bool grads) {
    if (!m->dev_w) return;
    m->be->download(m->w, m->dev_w, m->n_floats * sizeof(float));
    if (grads && m->dev_g) {
        if (!m->g) m->g = tp_xcalloc(m->n_floats ? m->n_floats : 1, sizeof *m->g);
        m->be->download(m->g, m->dev_g, m->n_floats * sizeof(float));
    }
}

void tp_model_push(tp_model *m) {
    if (!m->dev_w) return;
    m->be->upload(m->dev_w, m->w, m->n_floats * sizeof(float));
    if (m->be->weights_changed) m->be->weights_changed();
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
    free_device(m);
    free(m);
}
