// generate.c — KV-cache forward passes (generate.h). One layer for n new tokens:
//   h = x + o_proj(attention over the cache(rope(norm_qk(q)), cache += rope(norm_qk(k)), v))
//   out = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
// the same ops, in the same order, as model.c's training forward, through the model's
// backend: on a GPU the cache, the activations and the logits stay in device memory and
// each call uploads only its small integer arrays.
#include "generate.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/attention_shared.h"
#include "cpu/cpu_ops.h"
#include "cpu/head_screen.h"
#include "cpu/kv_bf16.h"
#include "cpu/linear_bf16.h"
#include "cpu/linear_rows.h"
#include "cpu/rope_table.h"
#include "sample.h"

// The per-call integer arrays, host side and one backend copy: [IDS_COUNT][room].
enum { IDS_TOKEN, IDS_POS, IDS_KLEN, IDS_SEG, IDS_ROW0, IDS_KVROW, IDS_OUT, IDS_COUNT };

// A decode step recorded as a CUDA graph: the same n tokens and n_out logit rows, replayed
// while the backend's epoch (scratch, weights) and the generator's buffers are unchanged.
typedef struct step_graph {
    int n, n_out;
    unsigned long epoch, used;
    void *exec;
} step_graph;
enum { MAX_GRAPHS = 32 };

// bf16 copies of a layer's matrices (cpu decode: half the bytes to read per step).
typedef struct w16_layer {
    uint16_t *wq, *wk, *wv, *wo, *gate, *up, *down;
} w16_layer;

// The bf16 product is made for decode-sized calls; longer ones go in chunks of this many rows.
enum { W16_MAX_ROWS = 64 };

struct tp_generator {
    tp_model *m;
    const tp_backend *be;
    int n_slots, cap, L, KV;  // KV = KVH * HD floats a token, a layer
    void *k, *v;              // backend [n_slots][L][cap][KV], fp32 or (kv16) bf16
    bool kv16;
    int *len;                 // [n_slots]
    // Slot s's first share_n[s] rows equal slot share_src[s]'s (a copy; -1: none): the
    // samples of one prompt. A copy of a copy points at the first slot when all its rows
    // came from there, else at the copy it was made from. A decode step's attention reads
    // such rows once for the tokens of the slots that point at the same source (cpu), unless
    // TP_SHARED_ROWS=0 (for comparing: the same bits).
    int *share_src, *share_n;
    bool share_rows;
    bool layer_regions;  // cpu decode: a layer in two parallel regions (TP_LAYER_REGIONS=0: op by op)
    int32_t *share_row0, *share_len;  // host [room]: the call's tokens' shared rows (cpu decode)
    bool shared_call;                 // some token of the call has them
    // per-call scratch (backend memory) for up to `room` tokens and `room_out` logit rows
    int room, room_out;
    float *x, *ln, *rstd, *q_raw, *k_raw, *q, *kk, *vv, *att, *mid, *gate, *up, *act, *qr, *kr, *xg, *lse;
    float *rope_cs;  // cpu: [room, HD] cos and sin of the call's positions, shared by the layers
    float *logits, *last_logits;
    int32_t *ids, *dev_ids;  // host / backend [IDS_COUNT * room]
    bool fresh;  // every token of this call starts or continues a slot that was empty: prompts
    w16_layer *w16;   // [L] when tp_generator_bf16_weights was called, else NULL
    uint16_t *head16;
    uint16_t *w16_block;  // where w16's matrices and head16 live
    // An int8 screen of the head for steps that keep only each row's argmax (greedy), made
    // at the first such step (cpu); screen_tried: made or found impossible.
    head_screen *screen;
    bool screen_tried;
    long screen_rows, screen_left;  // rows given to it, rows it left to the full product
    // Decode steps as graphs (backends that have them; TP_CUDA_GRAPHS=0 turns them off).
    // A step shape is captured the second time it runs at the same epoch: the first, eager,
    // run grows every scratch buffer and bf16 weight copy it needs.
    bool graphs;
    step_graph graph[MAX_GRAPHS];
    int warm_n, warm_out;
    unsigned long warm_epoch, clock, graph_launches;
};

size_t tp_kv_bytes_per_token(const tp_model *m) {
    return 2 * sizeof(float) * (size_t)m->cfg.num_layers * (size_t)m->cfg.num_kv_heads * (size_t)m->cfg.head_dim;
}

static void bfree(const tp_backend *be, void *p) {
    if (p) be->free(p);
}

static double gib(size_t bytes) { return (double)bytes / (1 << 30); }

size_t tp_generator_kv_bytes_per_token(const tp_generator *g) {
    return tp_kv_bytes_per_token(g->m) / (g->kv16 ? 2 : 1);
}

static size_t kv_elem(const tp_generator *g) { return g->kv16 ? sizeof(uint16_t) : sizeof(float); }

tp_generator *tp_generator_new(tp_model *m, int n_slots, int cap, tp_err *err) {
    return tp_generator_new_kv(m, n_slots, cap, false, err);
}

tp_generator *tp_generator_new_kv(tp_model *m, int n_slots, int cap, bool kv_bf16, tp_err *err) {
    const tp_backend *be = tp_model_backend(m);
    if (kv_bf16 && be->device) {
        tp_err_set(err, "a bf16 KV cache (--kv-cache bf16) is for the cpu: on a GPU the cache is fp32");
        return NULL;
    }
    tp_generator *g = tp_xcalloc(1, sizeof *g);
    g->m = m, g->be = be, g->n_slots = n_slots, g->cap = cap, g->L = m->cfg.num_layers, g->kv16 = kv_bf16;
    g->KV = m->cfg.num_kv_heads * m->cfg.head_dim;
    // Cache rows are addressed by int32 row numbers (slot * L * cap + layer * cap + position).
    if ((double)n_slots * g->L * cap >= 2147483647.0) {
        tp_err_set(err, "a KV cache of %d sequences x %d tokens x %d layers is too many rows (< 2^31)", n_slots, cap,
                   g->L);
        free(g);
        return NULL;
    }
    size_t bytes = (size_t)n_slots * g->L * (size_t)cap * g->KV * kv_elem(g);
    // cpu: no huge pages for the cache, which is reserved for max-len tokens a slot and
    // filled as sequences grow (each slot-layer's first rows would bring in 2 MB each)
    if (be->device) g->k = be->alloc(bytes), g->v = be->alloc(bytes);
    else g->k = tp_alloc_lines(bytes), g->v = tp_alloc_lines(bytes);
    if (!g->k || !g->v) {
        if (be->device)
            tp_err_set(err, "out of device memory: a KV cache of %d sequences x %d tokens needs %.2f GiB (%.2f GiB free); "
                       "try a smaller --max-batch or --max-len", n_slots, cap, 2 * gib(bytes), gib(be->free_bytes()));
        else
            tp_err_set(err, "out of memory: a KV cache of %d sequences x %d tokens needs %.2f GiB; try a smaller "
                       "--max-batch or --max-len", n_slots, cap, 2 * gib(bytes));
        tp_generator_free(g);
        return NULL;
    }
    g->len = tp_xcalloc((size_t)n_slots, sizeof *g->len);
    g->share_src = tp_xmalloc((size_t)n_slots * sizeof *g->share_src);
    g->share_n = tp_xcalloc((size_t)n_slots, sizeof *g->share_n);
    for (int s = 0; s < n_slots; s++) g->share_src[s] = -1;
    const char *shared = getenv("TP_SHARED_ROWS");
    g->share_rows = !(shared && !strcmp(shared, "0"));
    const char *regions = getenv("TP_LAYER_REGIONS");
    g->layer_regions = !(regions && !strcmp(regions, "0"));
    const char *env = getenv("TP_CUDA_GRAPHS");
    g->graphs = be->graph_begin && !(env && strcmp(env, "0") == 0);
    return g;
}

enum { N_SCRATCH = 18 };
static void scratch_list(tp_generator *g, float **out[N_SCRATCH]) {
    float **bufs[N_SCRATCH] = {&g->x,  &g->ln, &g->mid, &g->xg,  &g->q_raw, &g->q,  &g->att, &g->k_raw, &g->kk,
                               &g->vv, &g->gate, &g->up, &g->act, &g->rstd, &g->qr, &g->kr,  &g->lse, &g->rope_cs};
    memcpy(out, bufs, sizeof bufs);
}

static void drop_graphs(tp_generator *g);

static void free_scratch(tp_generator *g) {
    drop_graphs(g);  // they point into the buffers
    float **bufs[N_SCRATCH];
    scratch_list(g, bufs);
    for (int i = 0; i < N_SCRATCH; i++) bfree(g->be, *bufs[i]), *bufs[i] = NULL;
    bfree(g->be, g->dev_ids), g->dev_ids = NULL;
    free(g->ids), g->ids = NULL;
    g->room = 0;
}

static void free_w16(tp_generator *g) {
    free(g->w16_block), free(g->w16);
    g->w16_block = NULL, g->w16 = NULL, g->head16 = NULL;
    head_screen_free(g->screen), g->screen = NULL, g->screen_tried = false, g->screen_rows = g->screen_left = 0;
}

// Bytes of W [OC, IC] packed for linear_forward_w16, in whole cache lines.
static size_t w16_bytes(int OC, int IC) { return (w16_packed_elems(IC, OC) * sizeof(uint16_t) + 63) / 64 * 64; }

// W [OC, IC] rounded to bf16 and packed for linear_forward_w16 at *at, which moves past it.
static uint16_t *to_bf16(uint16_t **at, const float *w, int OC, int IC) {
    uint16_t *h = *at;
    w16_pack(h, w, IC, OC);
    *at += w16_bytes(OC, IC) / sizeof(uint16_t);
    return h;
}

int tp_generator_bf16_weights(tp_generator *g, tp_err *err) {
    if (g->be->device) {
        tp_err_set(err, "bf16 decode weights are for the cpu backend (on a GPU, --matmul picks the products)");
        return -1;
    }
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, Q = c->num_heads * c->head_dim, KV = g->KV;
    free_w16(g);
    // One block in the order a step reads it, so that it sits in huge pages whole (the
    // matrices of a small model are each under 2 MB). A layer's matrices, [OC, IC] each:
    const int shape[7][2] = {{Q, C}, {KV, C}, {KV, C}, {C, Q}, {F, C}, {F, C}, {C, F}};
    size_t bytes = w16_bytes(c->vocab_size, C);
    for (int i = 0; i < 7; i++) bytes += (size_t)g->L * w16_bytes(shape[i][0], shape[i][1]);
    uint16_t *at = g->w16_block = tp_alloc_big(bytes);
    if (!at) tp_die("out of memory (%zu bytes of bf16 weights)", bytes);
    g->w16 = tp_xcalloc((size_t)g->L, sizeof *g->w16);
    for (int l = 0; l < g->L; l++) {
        const tp_layer_tensors *w = &m->W.layers[l];
        w16_layer *h = &g->w16[l];
        uint16_t **dst[7] = {&h->wq, &h->wk, &h->wv, &h->wo, &h->gate, &h->up, &h->down};
        const float *src[7] = {w->wq, w->wk, w->wv, w->wo, w->w_gate, w->w_up, w->w_down};
        for (int i = 0; i < 7; i++) *dst[i] = to_bf16(&at, src[i], shape[i][0], shape[i][1]);
    }
    g->head16 = to_bf16(&at, m->W.lm_head, c->vocab_size, C);
    return 0;
}

// out [n, OC] = x [n, IC] · W^T (+ b), through the bf16 copy when there is one.
static void lin(const tp_generator *g, float *out, const float *x, const float *w, const uint16_t *w16, const float *b,
                int n, int IC, int OC) {
    if (!w16) {
        g->be->linear_forward(out, x, w, b, n, IC, OC);
        return;
    }
    for (int i = 0; i < n; i += W16_MAX_ROWS) {
        int rows = n - i < W16_MAX_ROWS ? n - i : W16_MAX_ROWS;
        linear_forward_w16(out + (size_t)i * OC, x + (size_t)i * IC, w16, b, rows, IC, OC);
    }
}

static void drop_graphs(tp_generator *g) {
    for (int i = 0; i < MAX_GRAPHS; i++)
        if (g->graph[i].exec) g->be->graph_free(g->graph[i].exec), g->graph[i].exec = NULL;
    g->warm_n = 0;
}

// Products of one input: out[i] = ln · W_i^T (+ b_i) with ln = rmsnorm(x) · norm (x itself
// when norm is NULL); g->ln is the scratch for ln. The backend does it in one kernel where
// it can (a GPU at decode sizes); the cpu's bf16 copies go through lin.
static void norm_lin_many(const tp_generator *g, float *const out[], const float *x, const float *norm,
                          const float *const w[], const uint16_t *const w16[], const float *const b[], const int OC[],
                          int count, int n, int IC) {
    float eps = (float)g->m->cfg.rms_norm_eps;
    if (!g->w16) {
        g->be->rmsnorm_linear_forward_many(count, out, g->ln, x, norm, eps, w, b, OC, n, IC);
        return;
    }
    if (norm) g->be->rmsnorm_forward(g->ln, NULL, x, norm, n, IC, eps), x = g->ln;
    for (int i = 0; i < count; i++) lin(g, out[i], x, w[i], w16[i], b[i], n, IC, OC[i]);
}

// act = silu(ln · Wg^T) * (ln · Wu^T), ln = rmsnorm(x) · norm.
static void norm_lin_swiglu(const tp_generator *g, const float *x, const float *norm, const float *wg,
                            const uint16_t *wg16, const float *wu, const uint16_t *wu16, int n, int IC, int F) {
    if (!g->w16) {
        g->be->rmsnorm_linear_swiglu_forward(g->act, g->gate, g->up, g->ln, x, norm, (float)g->m->cfg.rms_norm_eps,
                                             wg, wu, n, IC, F);
        return;
    }
    norm_lin_many(g, (float *[]){g->gate, g->up}, x, norm, (const float *[]){wg, wu}, (const uint16_t *[]){wg16, wu16},
                  (const float *[]){NULL, NULL}, (int[]){F, F}, 2, n, IC);
    g->be->swiglu_forward(g->act, g->gate, g->up, (long)n * F);
}

// out = x · W^T (+ b) + residual.
static void lin_residual(const tp_generator *g, float *out, const float *x, const float *w, const uint16_t *w16,
                         const float *b, const float *residual, int n, int IC, int OC) {
    if (!g->w16) {
        g->be->linear_residual_forward(out, x, w, b, residual, n, IC, OC);
        return;
    }
    lin(g, out, x, w, w16, b, n, IC, OC);
    g->be->add_inplace(out, residual, (long)n * OC);
}

// On the cpu, a decode call (up to W16_MAX_ROWS tokens with bf16 weights, else up to
// LINEAR_ROWS_MAX: linear_forward_rows's, past which the BLAS's bits would differ) runs a
// layer's products and the small operations between them in two parallel regions: each
// thread normalises a share of the rows, then computes its columns of every product and
// adds the residual and the SwiGLU to the columns it computed, with a barrier where the
// next part needs the whole of the last (a norm needs whole rows, a product every column
// of its input). Op by op (TP_LAYER_REGIONS=0: the same bits) forks ~9 regions a layer and
// runs the norms, SwiGLU, RoPE and residual adds on one thread, over rows the other
// thread half wrote: a batch-8 step at the SmolLM2-135M shape, bf16, took 5% longer.
static bool in_regions(const tp_generator *g, int n) {
    if (g->be->device || !g->layer_regions) return false;
    return g->w16 ? n <= W16_MAX_ROWS : n <= LINEAR_ROWS_MAX && linear_rows_available();
}

// Thread t of T's columns of out = x · W^T (+ b) (+ residual), through the bf16 copy when
// there is one.
static void product_share(const tp_generator *g, float *out, const float *x, const float *w, const uint16_t *w16,
                          const float *b, const float *residual, int n, int IC, int OC, int t, int T) {
    if (g->w16) linear_forward_w16_share(out, x, w16, b, residual, n, IC, OC, t, T);
    else linear_forward_rows_share(out, x, w, b, residual, n, IC, OC, t, T);
}

static void share_columns(const tp_generator *g, int OC, int t, int T, int *c0, int *c1) {
    if (g->w16) w16_share_columns(OC, t, T, c0, c1);
    else rows_share_columns(OC, t, T, c0, c1);
}

// q, k, v = ln · W^T (+ b), ln = rmsnorm(x) · norm; then (a share of the tokens each) q
// and k normalised per head (qk_norm) and rotated, k and v into the cache rows kv_rows.
static void qkv_regions(const tp_generator *g, const tp_layer_tensors *w, const w16_layer *h, void *kc, void *vc,
                        const int32_t *kv_rows, int n) {
    const tp_model_config *c = &g->m->cfg;
    int C = c->hidden_size, NH = c->num_heads, KVH = c->num_kv_heads, HD = c->head_dim, Q = NH * HD, KV = g->KV;
    float eps = (float)c->rms_norm_eps;
    float *q = c->qk_norm ? g->q_raw : g->q, *k = c->qk_norm ? g->k_raw : g->kk;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads(), n0 = n * t / T, n1 = n * (t + 1) / T;
        rmsnorm_forward_rows(g->ln, g->x, w->ln1, C, eps, n0, n1);
#pragma omp barrier
        product_share(g, q, g->ln, w->wq, h->wq, w->bq, NULL, n, C, Q, t, T);
        product_share(g, k, g->ln, w->wk, h->wk, w->bk, NULL, n, C, KV, t, T);
        product_share(g, g->vv, g->ln, w->wv, h->wv, w->bv, NULL, n, C, KV, t, T);
#pragma omp barrier
        if (c->qk_norm) {
            rmsnorm_forward_rows(g->q, g->q_raw, w->q_norm, HD, eps, n0 * NH, n1 * NH);
            rmsnorm_forward_rows(g->kk, g->k_raw, w->k_norm, HD, eps, n0 * KVH, n1 * KVH);
        }
        if (n0 < n1)
            rope_kv_cache_table(g->q + (size_t)n0 * Q, g->kk + (size_t)n0 * KV, g->vv + (size_t)n0 * KV, kc, vc,
                                g->kv16, kv_rows + n0, g->rope_cs + (size_t)n0 * HD, n1 - n0, NH, KVH, HD);
    }
}

// mid = x + o(att), then x = mid + down(silu(ln · Wg^T) * (ln · Wu^T)), ln = rmsnorm(mid) · norm.
static void out_mlp_regions(const tp_generator *g, const tp_layer_tensors *w, const w16_layer *h, int n) {
    const tp_model_config *c = &g->m->cfg;
    int C = c->hidden_size, F = c->intermediate_size, Q = c->num_heads * c->head_dim;
    float eps = (float)c->rms_norm_eps;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads(), c0, c1;
        product_share(g, g->mid, g->att, w->wo, h->wo, w->bo, g->x, n, Q, C, t, T);
#pragma omp barrier
        rmsnorm_forward_rows(g->ln, g->mid, w->ln2, C, eps, n * t / T, n * (t + 1) / T);
#pragma omp barrier
        product_share(g, g->gate, g->ln, w->w_gate, h->gate, NULL, NULL, n, C, F, t, T);
        product_share(g, g->up, g->ln, w->w_up, h->up, NULL, NULL, n, C, F, t, T);
        share_columns(g, F, t, T, &c0, &c1);
        swiglu_forward_columns(g->act, g->gate, g->up, n, F, c0, c1);
#pragma omp barrier
        product_share(g, g->x, g->act, w->w_down, h->down, NULL, g->mid, n, F, C, t, T);
    }
}

void tp_generator_free(tp_generator *g) {
    if (!g) return;
    drop_graphs(g);
    free_w16(g);
    free_scratch(g);
    bfree(g->be, g->logits), bfree(g->be, g->k), bfree(g->be, g->v);
    free(g->len), free(g->share_src), free(g->share_n), free(g->share_row0), free(g->share_len);
    free(g);
}

int tp_generator_len(const tp_generator *g, int slot) { return g->len[slot]; }
// Slot's rows from `keep` on are about to change: slots that share more than that with it
// keep only its first `keep` rows, or (keep 0) share with the first of them instead, whose
// copy is equal; the slot's own share is cut the same way.
static void rows_change(tp_generator *g, int slot, int keep) {
    int heir = -1;
    for (int d = 0; d < g->n_slots; d++)
        if (g->share_src[d] == slot && g->share_n[d] > keep) {
            if (keep > 0) g->share_n[d] = keep;
            else if (heir < 0) heir = d;
        }
    for (int d = heir + 1; heir >= 0 && d < g->n_slots; d++)
        if (g->share_src[d] == slot)
            g->share_src[d] = heir, g->share_n[d] = g->share_n[d] < g->share_n[heir] ? g->share_n[d] : g->share_n[heir];
    if (heir >= 0) g->share_src[heir] = -1, g->share_n[heir] = 0;
    if (g->share_n[slot] > keep) g->share_n[slot] = keep;
    if (g->share_n[slot] == 0) g->share_src[slot] = -1;
}

void tp_generator_reset(tp_generator *g, int slot) {
    rows_change(g, slot, 0);
    g->len[slot] = 0;
}
void tp_generator_truncate(tp_generator *g, int slot, int n) {
    if (n >= 0 && n < g->len[slot]) rows_change(g, slot, n), g->len[slot] = n;
}

// Row number of (slot, layer 0, position t); layer l's rows start l * cap rows further.
static int32_t kv_row(const tp_generator *g, int slot, int t) { return (int32_t)((size_t)slot * g->L * g->cap + t); }
// Row 0 of layer `layer` in a cache, and row `row` after it.
static void *layer_base(const tp_generator *g, void *cache, int layer) {
    return (char *)cache + (size_t)layer * g->cap * g->KV * kv_elem(g);
}
static void *row_at(const tp_generator *g, void *base, size_t row) {
    return (char *)base + row * g->KV * kv_elem(g);
}

void tp_generator_copy(tp_generator *g, int dst, int src, int count) {
    if (count < 0 || count > g->len[src]) count = g->len[src];
    if (dst == src) {
        tp_generator_truncate(g, dst, count);
        return;
    }
    rows_change(g, dst, 0);
    size_t n = (size_t)count * g->KV * kv_elem(g), to = (size_t)kv_row(g, dst, 0), from = (size_t)kv_row(g, src, 0);
    for (int l = 0; l < g->L; l++) {
        void *k = layer_base(g, g->k, l), *v = layer_base(g, g->v, l);
        g->be->copy(row_at(g, k, to), row_at(g, k, from), n);
        g->be->copy(row_at(g, v, to), row_at(g, v, from), n);
    }
    g->len[dst] = count;
    // The copy shares its rows with the slot they came from, or with that slot's own
    // source when they are all shared from there.
    bool via = g->share_src[src] >= 0 && g->share_n[src] >= count;
    g->share_src[dst] = count > 0 ? (via ? g->share_src[src] : src) : -1;
    g->share_n[dst] = count;
}

static int out_of_memory(tp_generator *g, const char *what, size_t bytes, tp_err *err) {
    tp_err_set(err, "out of %smemory: %s need %.2f GiB%s", g->be->device ? "device " : "", what, gib(bytes),
               g->be->device ? "; try a smaller --max-batch" : "");
    return -1;
}

static int grow(tp_generator *g, int n, tp_err *err) {
    if (n <= g->room) return 0;
    free_scratch(g);
    const tp_model_config *c = &g->m->cfg;
    size_t N = (size_t)n, C = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t Q = (size_t)c->num_heads * c->head_dim, KV = (size_t)g->KV;
    size_t sizes[N_SCRATCH] = {N * C, N * C, N * C,  N * C,  N * Q, N * Q, N * Q, N * KV, N * KV, N * KV,
                               N * F, N * F, N * F, N, N * c->num_heads, N * c->num_kv_heads, N * c->num_heads,
                               g->be->device ? 1 : N * c->head_dim};
    float **bufs[N_SCRATCH];
    scratch_list(g, bufs);
    size_t total = 0;
    bool ok = true;
    for (int i = 0; i < N_SCRATCH; i++) {
        total += sizes[i] * sizeof(float);
        ok = ok && (*bufs[i] = g->be->alloc(sizes[i] * sizeof(float)));
    }
    g->ids = tp_xmalloc(IDS_COUNT * N * sizeof *g->ids);
    g->dev_ids = g->be->alloc(IDS_COUNT * N * sizeof *g->ids);
    g->share_row0 = tp_xrealloc(g->share_row0, N * sizeof *g->share_row0);
    g->share_len = tp_xrealloc(g->share_len, N * sizeof *g->share_len);
    if (!ok || !g->dev_ids) {
        free_scratch(g);
        char what[80];
        snprintf(what, sizeof what, "activations for %d tokens", n);
        return out_of_memory(g, what, total, err);
    }
    g->room = n;
    return 0;
}

static int grow_logits(tp_generator *g, int n_out, tp_err *err) {
    if (n_out <= g->room_out) return 0;
    drop_graphs(g);
    bfree(g->be, g->logits);
    size_t bytes = (size_t)n_out * g->m->cfg.vocab_size * sizeof(float);
    g->logits = g->be->alloc(bytes);
    g->room_out = g->logits ? n_out : 0;
    char what[80];
    snprintf(what, sizeof what, "logits of %d tokens", n_out);
    return g->logits ? 0 : out_of_memory(g, what, bytes, err);
}

static int32_t *ids(const tp_generator *g, int32_t *base, int which) { return base + (size_t)which * g->room; }

// Layer l on n tokens: x is its input and, on return, its output.
static void layer(tp_generator *g, int l, int n) {
    const tp_backend *be = g->be;
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    const tp_layer_tensors *w = &m->W.layers[l];
    int C = c->hidden_size, F = c->intermediate_size, NH = c->num_heads, KVH = c->num_kv_heads, HD = c->head_dim;
    int Q = NH * HD, KV = g->KV;
    float eps = (float)c->rms_norm_eps;
    const float *inv_freq = m->dev_inv_freq ? m->dev_inv_freq : m->inv_freq;
    const int32_t *pos = ids(g, g->dev_ids, IDS_POS);
    const w16_layer *h = g->w16 ? &g->w16[l] : &(w16_layer){0};
    float *q = c->qk_norm ? g->q_raw : g->q, *k = c->qk_norm ? g->k_raw : g->kk;
    // Rotated, into the cache, then every token attends to its slot's prefix. Whole
    // prompts: the training forward's flash attention over packed rows; otherwise each
    // token against its slot's cache.
    void *kc = layer_base(g, g->k, l), *vc = layer_base(g, g->v, l);
    const int32_t *kv_rows = ids(g, g->dev_ids, IDS_KVROW), *row0 = ids(g, g->dev_ids, IDS_ROW0);
    const int32_t *klen = ids(g, g->dev_ids, IDS_KLEN);
    if (in_regions(g, n)) {
        qkv_regions(g, w, h, kc, vc, kv_rows, n);
    } else if (be->device && !c->qk_norm) {  // one kernel at decode sizes
        be->rmsnorm_qkv_rope_cache_forward(g->q, g->kk, g->vv, kc, vc, g->ln, g->x, w->ln1, eps,
                                           (const float *[]){w->wq, w->wk, w->wv},
                                           (const float *[]){w->bq, w->bk, w->bv}, kv_rows, pos, inv_freq, n, C, NH,
                                           KVH, HD);
    } else {
        norm_lin_many(g, (float *[]){q, k, g->vv}, g->x, w->ln1, (const float *[]){w->wq, w->wk, w->wv},
                      (const uint16_t *[]){h->wq, h->wk, h->wv}, (const float *[]){w->bq, w->bk, w->bv},
                      (int[]){Q, KV, KV}, 3, n, C);
        if (be->device && c->qk_norm) {  // the norms, RoPE and the cache writes in one kernel
            be->qk_norm_rope_kv_cache_forward(g->q, g->kk, g->q_raw, g->k_raw, g->vv, kc, vc, w->q_norm, w->k_norm, eps,
                                              kv_rows, pos, inv_freq, n, NH, KVH, HD);
        } else {
            if (c->qk_norm) {
                be->rmsnorm_forward(g->q, g->qr, g->q_raw, w->q_norm, n * NH, HD, eps);
                be->rmsnorm_forward(g->kk, g->kr, g->k_raw, w->k_norm, n * KVH, HD, eps);
            }
            if (!be->device)
                rope_kv_cache_table(g->q, g->kk, g->vv, kc, vc, g->kv16, kv_rows, g->rope_cs, n, NH, KVH, HD);
            else be->rope_kv_cache_forward(g->q, g->kk, g->vv, kc, vc, kv_rows, pos, inv_freq, n, NH, KVH, HD);
        }
    }
    float scale = 1.0f / sqrtf((float)HD);
    if (g->fresh)
        be->attention_forward(g->att, g->lse, g->q, g->kk, g->vv, ids(g, g->dev_ids, IDS_SEG), n, NH, KVH, HD, scale);
    else if (g->shared_call)
        attention_decode_shared(g->att, g->q, kc, vc, g->kv16, row0, klen, g->share_row0, g->share_len, n, NH, KVH, HD,
                                scale);
    else if (g->kv16)
        attention_decode_bf16(g->att, g->q, kc, vc, row0, klen, n, NH, KVH, HD, scale);
    else
        be->attention_decode(g->att, g->q, kc, vc, row0, klen, n, NH, KVH, HD, scale);
    if (in_regions(g, n)) {
        out_mlp_regions(g, w, h, n);
        return;
    }
    lin_residual(g, g->mid, g->att, w->wo, h->wo, w->bo, g->x, n, Q, C);  // mid = x + o(att)
    norm_lin_swiglu(g, g->mid, w->ln2, w->w_gate, h->gate, w->w_up, h->up, n, C, F);
    lin_residual(g, g->x, g->act, w->w_down, h->down, NULL, g->mid, n, F, C);  // x = mid + down(act)
}

// Each token's shared rows (cpu): a copy's are its source's first share_n; a source's are
// all of its own (the attention takes the least of a group's).
static void plan_shares(tp_generator *g, int n, const int *slot, const int32_t *pos) {
    g->shared_call = false;
    if (g->be->device || !g->share_rows) return;
    bool *source = tp_xcalloc((size_t)g->n_slots, sizeof *source);
    for (int d = 0; d < g->n_slots; d++)
        if (g->share_src[d] >= 0) source[g->share_src[d]] = true;
    for (int i = 0; i < n; i++) {
        int s = slot[i], from = g->share_src[s] >= 0 ? g->share_src[s] : source[s] ? s : -1;
        g->share_row0[i] = from >= 0 ? kv_row(g, from, 0) : -1;
        g->share_len[i] = from < 0 ? 0 : from == s ? pos[i] + 1 : g->share_n[s];
        g->shared_call = g->shared_call || g->share_len[i] > 0;
    }
    free(source);
}

// Fills the call's integer arrays (positions after what each slot holds, in call order).
static int plan(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out, const int *out_idx,
                tp_err *err) {
    int *seen = tp_xcalloc((size_t)g->n_slots, sizeof *seen);
    int32_t *pos = ids(g, g->ids, IDS_POS), *seg = ids(g, g->ids, IDS_SEG);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (slot[i] < 0 || slot[i] >= g->n_slots || token[i] < 0 || token[i] >= g->m->cfg.vocab_size) {
            rc = -1, tp_err_set(err, "generate: bad slot %d or token %d", slot[i], token[i]);
            break;
        }
        pos[i] = g->len[slot[i]] + seen[slot[i]]++;
        if (pos[i] >= g->cap) {
            rc = -1, tp_err_set(err, "generate: sequence in slot %d would exceed %d tokens", slot[i], g->cap);
            break;
        }
        ids(g, g->ids, IDS_TOKEN)[i] = token[i];
        // fresh: the slot was empty and its tokens in this call are consecutive
        seg[i] = pos[i] == 0 ? i : (i > 0 && slot[i - 1] == slot[i] ? seg[i - 1] : -1);
        ids(g, g->ids, IDS_KLEN)[i] = pos[i] + 1;
        ids(g, g->ids, IDS_ROW0)[i] = kv_row(g, slot[i], 0);
        ids(g, g->ids, IDS_KVROW)[i] = kv_row(g, slot[i], pos[i]);
    }
    for (int i = 0; i < n_out && rc == 0; i++) {
        if (out_idx[i] < 0 || out_idx[i] >= n) rc = -1, tp_err_set(err, "generate: logits of pair %d of %d", out_idx[i], n);
        else ids(g, g->ids, IDS_OUT)[i] = out_idx[i];
    }
    free(seen);
    if (rc < 0) return -1;
    plan_shares(g, n, slot, pos);
    g->fresh = true;
    for (int i = 0; i < n && g->fresh; i++) g->fresh = seg[i] >= 0 && pos[i] == i - seg[i];
    return 0;
}

// top[i] := the index of row i's largest logit (the first of equal ones) for the n_out
// rows of final hidden states in g->ln, through the head's screen where there is one
// (the same indices as the full product, without computing most of it); rows it leaves,
// and every row without a screen, through the full product into dst.
static void head_argmax(tp_generator *g, int n_out, float *dst, int32_t *top) {
    const tp_model_config *c = &g->m->cfg;
    int C = c->hidden_size, V = c->vocab_size;
    tp_generator_prepare_argmax(g);
    int left = n_out;
    // fp32 weights: the full product of more rows than linear_forward_rows takes is the
    // BLAS's, whose bits the screen's exact rows would not reproduce.
    if (g->screen && (g->head16 || n_out <= LINEAR_ROWS_MAX)) {
        left = head_screen_argmax(g->screen, g->m->W.lm_head, g->ln, n_out, top);
        g->screen_rows += n_out, g->screen_left += left;
        // A screen that leaves most rows (states or a head it bounds loosely) costs more
        // than it saves: past 64 rows, it goes once it has left over half of them.
        if (g->screen_rows >= 64 && 2 * g->screen_left > g->screen_rows) head_screen_free(g->screen), g->screen = NULL;
    } else {
        for (int i = 0; i < n_out; i++) top[i] = -1;
    }
    if (left == 0) return;
    // The rows left go through the full product together (one pass over the head); xg,
    // the rows before the final norm, is free now.
    int k = 0;
    for (int i = 0; i < n_out; i++)
        if (top[i] < 0) memcpy(g->xg + (size_t)k++ * C, g->ln + (size_t)i * C, (size_t)C * sizeof *g->xg);
    lin(g, dst, g->xg, g->m->W.lm_head, g->head16, NULL, k, C, V);
    static const tp_sampler greedy = {.greedy = true, .temperature = 0, .top_p = 1};
    k = 0;
    for (int i = 0; i < n_out; i++)
        if (top[i] < 0) top[i] = tp_sample(&greedy, dst + (size_t)k++ * V, V, NULL, NULL);
}

// The forward pass of the planned call: embedding, layers, then logits of n_out rows into
// dst, or with top (cpu), each row's argmax into top (dst: scratch for n_out rows' logits).
static void run_step(tp_generator *g, int n, int n_out, float *dst, int32_t *top) {
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    const tp_backend *be = g->be;
    be->embedding_forward(g->x, ids(g, g->dev_ids, IDS_TOKEN), m->W.embed, n, c->hidden_size);
    if (!be->device) rope_table(g->rope_cs, ids(g, g->ids, IDS_POS), m->inv_freq, n, c->head_dim);
    for (int l = 0; l < c->num_layers; l++) layer(g, l, n);
    if (n_out <= 0) return;
    be->gather_rows(g->xg, g->x, ids(g, g->dev_ids, IDS_OUT), n_out, c->hidden_size);
    be->rmsnorm_forward(g->ln, g->rstd, g->xg, m->W.norm, n_out, c->hidden_size, (float)c->rms_norm_eps);
    if (top) head_argmax(g, n_out, dst, top);
    else lin(g, dst, g->ln, m->W.lm_head, g->head16, NULL, n_out, c->hidden_size, c->vocab_size);
}

// A decode step through a graph: replayed when one of this shape and epoch exists,
// captured when the same shape ran eagerly just before at this epoch, else run eagerly.
// Every pointer the step reads is fixed (the per-call integers are uploaded into the same
// buffer, the attention reads each sequence's length from it), so a replay is the step.
static int graph_step(tp_generator *g, int n, int n_out, float *dst, tp_err *err) {
    const tp_backend *be = g->be;
    unsigned long epoch = be->graph_epoch();
    step_graph *hit = NULL, *victim = &g->graph[0];
    for (int i = 0; i < MAX_GRAPHS && !hit; i++) {
        step_graph *s = &g->graph[i];
        if (s->exec && s->n == n && s->n_out == n_out && s->epoch == epoch) hit = s;
        if (!s->exec || (victim->exec && s->used < victim->used)) victim = s;
    }
    if (!hit && !(g->warm_n == n && g->warm_out == n_out && g->warm_epoch == epoch)) {
        run_step(g, n, n_out, dst, NULL);
        g->warm_n = n, g->warm_out = n_out, g->warm_epoch = be->graph_epoch();
        return 0;
    }
    if (!hit) {
        if (victim->exec) be->graph_free(victim->exec), victim->exec = NULL;
        void *exec = NULL;
        if (be->graph_begin() == 0) {
            run_step(g, n, n_out, dst, NULL);
            exec = be->graph_end();
        }
        if (!exec) {
            char msg[sizeof err->msg];
            be->sync(msg, sizeof msg);
            tp_err_set(err, "generate: capturing a decode step as a CUDA graph failed (%s); TP_CUDA_GRAPHS=0 runs "
                       "without graphs", msg);
            return -1;
        }
        *victim = (step_graph){.n = n, .n_out = n_out, .epoch = epoch, .exec = exec};
        hit = victim;
    }
    hit->used = ++g->clock;
    be->graph_launch(hit->exec);
    g->graph_launches++;
    return 0;
}

unsigned long tp_generator_graph_launches(const tp_generator *g) { return g->graph_launches; }

// tp_generator_forward's call, with each out row's argmax into top instead of logits when
// top is not NULL (cpu only).
static int forward(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out, const int *out_idx,
                   float *logits, int32_t *top, tp_err *err) {
    const tp_model *m = g->m;
    const tp_model_config *c = &m->cfg;
    const tp_backend *be = g->be;
    if (n <= 0) return 0;
    if (n_out > n) n_out = n;
    if (grow(g, n, err) < 0 || plan(g, n, slot, token, n_out, out_idx, err) < 0) return -1;
    // On the cpu the caller's buffer is written directly; on a device the logits stay
    // there (tp_generator_logits) and are copied out only when asked for.
    float *dst = logits && !be->device ? logits : NULL;
    if (n_out > 0 && !dst) {
        if (grow_logits(g, n_out, err) < 0) return -1;
        dst = g->logits;
    }
    be->upload(g->dev_ids, g->ids, IDS_COUNT * (size_t)g->room * sizeof *g->ids);
    if (!g->graphs || g->fresh || top) run_step(g, n, n_out, dst, top);
    else if (graph_step(g, n, n_out, dst, err) < 0) return -1;
    const int32_t *pos = ids(g, g->ids, IDS_POS);
    for (int i = 0; i < n; i++) g->len[slot[i]] = pos[i] + 1 > g->len[slot[i]] ? pos[i] + 1 : g->len[slot[i]];
    if (top) g->last_logits = NULL;  // dst holds only the rows the screen left
    else if (n_out > 0) {
        g->last_logits = dst;
        if (logits && dst != logits) be->download(logits, dst, (size_t)n_out * c->vocab_size * sizeof *logits);
    }
    char msg[sizeof err->msg];
    if (be->sync(msg, sizeof msg) < 0) {
        tp_err_set(err, "generate: %s", msg);
        return -1;
    }
    return 0;
}

int tp_generator_forward(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out, const int *out_idx,
                         float *logits, tp_err *err) {
    return forward(g, n, slot, token, n_out, out_idx, logits, NULL, err);
}

int tp_generator_forward_argmax(tp_generator *g, int n, const int *slot, const int32_t *token, int n_out,
                                const int *out_idx, int32_t *top, tp_err *err) {
    if (g->be->device) {
        tp_err_set(err, "generate: argmax steps are for the cpu backend (a GPU samples on the device)");
        return -1;
    }
    return forward(g, n, slot, token, n_out, out_idx, NULL, top, err);
}

void tp_generator_prepare_argmax(tp_generator *g) {
    if (g->be->device || g->screen_tried) return;
    g->screen_tried = true;
    const char *env = getenv("TP_HEAD_SCREEN");
    if (env && !strcmp(env, "0")) return;
    const tp_model_config *c = &g->m->cfg;
    const float *w = g->m->W.lm_head;
    g->screen = g->head16 ? head_screen_new(w, c->vocab_size, c->hidden_size)
                          : head_screen_new_fp32(w, c->vocab_size, c->hidden_size);
}

bool tp_generator_has_screen(const tp_generator *g) { return g->screen != NULL; }

long tp_generator_screened_rows(const tp_generator *g) {
    return g->screen ? head_screen_last_candidates(g->screen) : -1;
}

const float *tp_generator_logits(const tp_generator *g) { return g->last_logits; }
