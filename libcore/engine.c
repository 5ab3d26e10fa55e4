// engine.c — the sampling loop (engine.h) on the KV-cache generator.
#include "engine.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/cpu_ops.h"
#include "chat.h"
#include "generate.h"
#include "ops.h"
#include "rng.h"

struct tp_engine {
    tp_model *m;
    const tp_tokenizer *tok;
    tp_engine_opts o;
    tp_generator *gen;
    int V;
    bool *slot_used;      // [max_batch]
    int waiting;          // samples whose first token is drawn, waiting for a slot
    tp_request **queue;   // submitted, not yet handed back, in order
    int head, len, cap;
    uint64_t submitted;
    tp_sample_scratch *scs;  // [n_scs]: a sampling scratch for each thread (cpu)
    int n_scs;
    float *logits;        // [max_batch, V] host rows (cpu backend)
    bool on_device;       // logits stay on the device and are sampled there
    sample_params *params;  // [draw_cap]: a step's rows, or a new request's n samples
    int32_t *drawn;         // [draw_cap]
    int draw_cap;
    float *row;             // [V] a logits row brought to the host (device log-probs)
    float *exps;            // [V] a row's exp(z - max) for its log-probs
};

tp_engine *tp_engine_new(tp_model *m, const tp_tokenizer *tok, const tp_engine_opts *o, tp_err *err) {
    if (o->max_batch < 1 || o->max_len < 2) {
        tp_err_set(err, "engine: %d slots of %d tokens", o->max_batch, o->max_len);
        return NULL;
    }
    tp_engine *e = tp_xcalloc(1, sizeof *e);
    e->m = m, e->tok = tok, e->o = *o, e->V = m->cfg.vocab_size;
    e->gen = tp_generator_new_kv(m, o->max_batch, o->max_len, o->kv_bf16, err);
    if (!e->gen || (o->bf16_weights && tp_generator_bf16_weights(e->gen, err) < 0)) {
        tp_generator_free(e->gen);
        free(e);
        return NULL;
    }
    if (o->greedy) tp_generator_prepare_argmax(e->gen);
    e->slot_used = tp_xcalloc((size_t)o->max_batch, sizeof *e->slot_used);
    e->on_device = tp_model_backend(m)->device;
    if (!e->on_device) e->logits = tp_xmalloc((size_t)o->max_batch * e->V * sizeof *e->logits);
    e->draw_cap = o->max_batch;
    e->params = tp_xmalloc((size_t)e->draw_cap * sizeof *e->params);
    e->drawn = tp_xmalloc((size_t)e->draw_cap * sizeof *e->drawn);
    return e;
}

size_t tp_engine_kv_bytes_per_token(const tp_engine *e) { return tp_generator_kv_bytes_per_token(e->gen); }

void tp_engine_free(tp_engine *e) {
    if (!e) return;
    for (int q = e->head; q < e->len; q++) tp_request_free(e->queue[q]);
    tp_generator_free(e->gen);
    for (int t = 0; t < e->n_scs; t++) tp_sample_scratch_free(&e->scs[t]);
    free(e->scs);
    free(e->slot_used), free(e->queue), free(e->logits), free(e->params), free(e->drawn), free(e->row), free(e->exps);
    free(e);
}

void tp_request_free(tp_request *r) {
    if (!r) return;
    for (int k = 0; k < r->n; k++) {
        tp_ids_free(&r->s[k].tokens);
        free(r->s[k].logprob), free(r->s[k].top_logprob), free(r->s[k].top);
    }
    tp_ids_free(&r->prompt);
    free(r->s);
    free(r);
}

static int take_slot(tp_engine *e) {
    for (int i = 0; i < e->o.max_batch; i++)
        if (!e->slot_used[i]) return e->slot_used[i] = true, i;
    return -1;
}

bool tp_engine_can_submit(const tp_engine *e) {
    if (e->waiting > 0) return false;  // earlier requests' samples take free slots first
    for (int i = 0; i < e->o.max_batch; i++)
        if (!e->slot_used[i]) return true;
    return false;
}

int tp_engine_waiting(const tp_engine *e) { return e->waiting; }

// A sample of r ended: its slot goes straight to a sibling still waiting for one (cut back
// to the prompt, which every sibling shares), else it is free.
static void release(tp_engine *e, tp_request *r, tp_sample_out *s) {
    if (s->slot < 0) {  // it ended on its first token, before it had a slot
        e->waiting--;
        return;
    }
    for (int k = 0; k < r->n; k++) {
        tp_sample_out *w = &r->s[k];
        if (w->slot < 0 && !w->finish) {
            tp_generator_truncate(e->gen, s->slot, (int)r->prompt.count);
            w->slot = s->slot, s->slot = -1;
            e->waiting--;
            return;
        }
    }
    e->slot_used[s->slot] = false;
    s->slot = -1;
}

// Waiting samples of r take free slots, copying the prompt from a sibling that has one.
static void admit(tp_engine *e, tp_request *r) {
    int src = -1;
    for (int k = 0; k < r->n && src < 0; k++) src = r->s[k].slot;
    for (int k = 0; k < r->n && src >= 0 && e->waiting > 0; k++) {
        tp_sample_out *w = &r->s[k];
        if (w->slot >= 0 || w->finish) continue;
        int slot = take_slot(e);
        if (slot < 0) return;
        tp_generator_copy(e->gen, slot, src, (int)r->prompt.count);  // one prefill, shared
        w->slot = slot;
        e->waiting--;
    }
}

bool tp_engine_busy(const tp_engine *e) { return e->head < e->len; }

int tp_engine_text(const tp_engine *e, const tp_sample_out *s, tp_buf *out, tp_err *err) {
    out->len = 0;
    return tp_engine_text_append(e, s, 0, out, err);
}

int tp_engine_text_append(const tp_engine *e, const tp_sample_out *s, size_t from, tp_buf *out, tp_err *err) {
    // Token texts concatenate (byte-level BPE), so decoding in pieces gives the same bytes.
    if (from < s->tokens.count &&
        tp_tokenizer_decode(e->tok, s->tokens.ids + from, s->tokens.count - from, true, out, err) < 0)
        return -1;
    if (s->cut && s->text_len < out->len) out->len = s->text_len;
    return 0;
}

static bool is_eos(const tp_engine *e, int32_t t) {
    for (int i = 0; i < e->o.n_eos; i++)
        if (e->o.eos[i] == t) return true;
    return false;
}

// After a token was appended: does the sample end here, and why.
static void stop_at(tp_sample_out *s, const tp_buf *text, const char *stop) {
    const char *at = stop ? memmem(text->data, text->len, stop, strlen(stop)) : NULL;
    if (at && !s->finish) s->finish = "stop", s->cut = true, s->text_len = (size_t)(at - text->data);
}

static void check_stop(tp_engine *e, tp_request *r, tp_sample_out *s) {
    int32_t t = s->tokens.ids[s->tokens.count - 1];
    if (!r->o.ignore_eos && is_eos(e, t)) {
        s->finish = "stop";
    } else if (r->o.n_stop || (e->o.stop && !r->o.ignore_eos)) {
        // A stop string completed by this token lies within the last few tokens' text (a
        // token is at least a byte): that window is searched, and only a hit pays for
        // decoding the whole text, where the cut is placed. Linear in the completion.
        const char *stops[17];
        int n = 0;
        size_t longest = 0;
        for (int k = 0; k < r->o.n_stop; k++) stops[n++] = r->o.stop[k];
        if (e->o.stop && !r->o.ignore_eos) stops[n++] = e->o.stop;
        for (int k = 0; k < n; k++) longest = strlen(stops[k]) > longest ? strlen(stops[k]) : longest;
        size_t count = s->tokens.count, window = longest + 8, from = count > window ? count - window : 0;
        tp_buf text = {0};
        tp_err err;
        bool hit = false;
        if (tp_tokenizer_decode(e->tok, s->tokens.ids + from, count - from, true, &text, &err) == 0)
            for (int k = 0; k < n && !hit; k++) hit = memmem(text.data, text.len, stops[k], strlen(stops[k])) != NULL;
        if (hit && from > 0) text.len = 0;  // (decode appends)
        if (hit && (from == 0 || tp_tokenizer_decode(e->tok, s->tokens.ids, count, true, &text, &err) == 0))
            for (int k = 0; k < n; k++) stop_at(s, &text, stops[k]);
        tp_buf_free(&text);
    }
    if (!s->finish && ((int)s->tokens.count >= r->o.max_new || (int)(r->prompt.count + s->tokens.count) >= e->o.max_len))
        s->finish = "length";
    if (s->finish) {
        release(e, r, s);
        r->done++;
    }
}

// The sampling chain of ops.h's sample_rows for one sample: u comes from the sample's own
// stream, drawn once a token as tp_sample does.
static sample_params device_params(const tp_sampler *sm, uint64_t *rng) {
    sample_params p = {.inv_temperature = sm->temperature > 0 ? (float)(1.0 / sm->temperature) : 1.0f,
                       .top_k = sm->top_k, .top_p = (float)sm->top_p, .min_p = (float)sm->min_p,
                       .greedy = tp_sampler_is_greedy(sm)};
    if (!p.greedy) p.u = (double)(tp_splitmix64(rng) >> 11) * 0x1.0p-53;
    return p;
}

// log softmax(z)[token] and the k largest entries (ties: the smaller id first), in double.
// log softmax(z) [token], and the k best tokens with theirs. The exps are fp32 in vectors
// (cpu_ops.h's exp_shift_inplace, 1.7 ulp) into w [V], summed in double: one double exp a
// token took 0.4 ms a row at 49,152 tokens, 3 ms of a batch-8 step streaming log-probs.
static double row_logprobs(const float *z, int V, int32_t token, int k, int32_t *top, double *top_lp, float *w) {
    float mx = max_not_nan(z, V);
    memcpy(w, z, sizeof *w * (size_t)V);
    exp_shift_inplace(w, mx, V);
    double lse = mx + log(sum_in_double(w, V));
    int have = 0;
    for (int v = 0; v < V && k > 0; v++) {  // insertion into the k best so far
        if (have == k && z[v] <= z[top[k - 1]]) continue;
        int at = have < k ? have++ : k - 1;
        while (at > 0 && z[top[at - 1]] < z[v]) top[at] = top[at - 1], at--;
        top[at] = v;
    }
    for (int i = 0; i < k; i++) top_lp[i] = (double)z[top[i]] - lse;
    return (double)z[token] - lse;
}

// The drawn tokens' log-probs (and alternatives) for the samples whose request asks,
// from row i of the step's logits (row 0 for all when shared).
static void record_logprobs(tp_engine *e, int n, tp_request **of, tp_sample_out **who, bool shared) {
    const tp_backend *be = tp_model_backend(e->m);
    long on_host = -1;  // the device row now in e->row (shared: one copy serves every sample)
    for (int i = 0; i < n; i++) {
        const tp_request_opts *o = &of[i]->o;
        if (!o->logprobs) continue;
        size_t row = shared ? 0 : (size_t)i;
        const float *z = e->logits + row * e->V;
        if (e->on_device) {
            if (!e->row) e->row = tp_xmalloc((size_t)e->V * sizeof *e->row);
            if (on_host != (long)row)
                be->download(e->row, tp_generator_logits(e->gen) + row * e->V, (size_t)e->V * sizeof *e->row);
            on_host = (long)row, z = e->row;
        }
        tp_sample_out *s = who[i];
        int k = o->top_logprobs < 0 ? 0 : o->top_logprobs > 20 ? 20 : o->top_logprobs;
        size_t t = s->tokens.count;  // the index the drawn token will have
        if (t >= s->lp_cap) {
            s->lp_cap = s->lp_cap ? 2 * s->lp_cap : 64;
            s->logprob = tp_xrealloc(s->logprob, s->lp_cap * sizeof *s->logprob);
            s->top = tp_xrealloc(s->top, s->lp_cap * (size_t)(k ? k : 1) * sizeof *s->top);
            s->top_logprob = tp_xrealloc(s->top_logprob, s->lp_cap * (size_t)(k ? k : 1) * sizeof *s->top_logprob);
        }
        if (!e->exps) e->exps = tp_xmalloc((size_t)e->V * sizeof *e->exps);
        s->logprob[t] = row_logprobs(z, e->V, e->drawn[i], k, s->top + t * (size_t)k, s->top_logprob + t * (size_t)k,
                                     e->exps);
    }
}

// e->drawn[i] becomes sample who[i]'s next token (with its log-probs when asked for).
static void take_drawn(tp_engine *e, int n, tp_request **of, tp_sample_out **who, bool shared) {
    record_logprobs(e, n, of, who, shared);
    for (int i = 0; i < n; i++) {
        tp_ids_push(&who[i]->tokens, e->drawn[i]);
        check_stop(e, of[i], who[i]);
    }
}

// Whether a step of these requests' samples needs only each row's argmax, not its logits:
// every one greedy and none asking for log-probs, on the cpu (a GPU samples on the device).
static bool argmax_only(const tp_engine *e, int n, tp_request **of) {
    if (e->on_device) return false;
    for (int i = 0; i < n; i++) {
        const tp_request_opts *o = &of[i]->o;
        if (!tp_sampler_is_greedy(&o->sampler) || o->logprobs) return false;
    }
    return true;
}

// The next token of samples who[0..n-1] (of requests of[i]) from the last forward's logits:
// row i for sample i, or row 0 for all of them when shared (the n samples of one prompt).
static int draw(tp_engine *e, int n, tp_request **of, tp_sample_out **who, bool shared, tp_err *err) {
    if (n > e->draw_cap) {  // a request of more samples than slots
        e->draw_cap = n;
        e->params = tp_xrealloc(e->params, (size_t)n * sizeof *e->params);
        e->drawn = tp_xrealloc(e->drawn, (size_t)n * sizeof *e->drawn);
    }
    if (e->on_device) {
        const float *logits = tp_generator_logits(e->gen);
        for (int i = 0; i < n; i++) e->params[i] = device_params(&of[i]->o.sampler, &who[i]->rng);
        const tp_backend *be = tp_model_backend(e->m);
        if (shared)
            for (int i = 0; i < n; i++) be->sample_rows(e->drawn + i, logits, e->params + i, 1, e->V);
        else
            be->sample_rows(e->drawn, logits, e->params, n, e->V);
        char msg[sizeof err->msg];
        if (be->sync(msg, sizeof msg) < 0) {
            tp_err_set(err, "sampling: %s", msg);
            return -1;
        }
    } else {
        // Every sample draws from its own generator, so rows are independent and drawn in
        // parallel, a scratch per thread (a row takes 0.1-2 ms at 49k-152k tokens).
        int threads = omp_get_max_threads();
        if (threads > e->n_scs) {
            e->scs = tp_xrealloc(e->scs, (size_t)threads * sizeof *e->scs);
            memset(e->scs + e->n_scs, 0, (size_t)(threads - e->n_scs) * sizeof *e->scs);
            e->n_scs = threads;
        }
#pragma omp parallel for schedule(dynamic) if (n > 1)
        for (int i = 0; i < n; i++)
            e->drawn[i] = tp_sample(&of[i]->o.sampler, e->logits + (shared ? 0 : (size_t)i * e->V), e->V,
                                    &who[i]->rng, &e->scs[omp_get_thread_num()]);
    }
    take_drawn(e, n, of, who, shared);
    return 0;
}

tp_request *tp_engine_submit(tp_engine *e, const int32_t *prompt, int P, const tp_request_opts *ro, void *user,
                             tp_err *err) {
    if (P < 1 || P + 1 > e->o.max_len) {
        tp_err_set(err, "the prompt of %d tokens does not fit --max-len %d (room for at least one new token)", P,
                   e->o.max_len);
        return NULL;
    }
    if (ro->n < 1 || ro->max_new < 1 || !tp_engine_can_submit(e)) {
        tp_err_set(err, "engine: no free slot for a new request (%d slots)", e->o.max_batch);
        return NULL;
    }
    tp_request *r = tp_xcalloc(1, sizeof *r);
    r->user = user, r->index = e->submitted, r->n = ro->n, r->o = *ro;
    for (int i = 0; i < P; i++) tp_ids_push(&r->prompt, prompt[i]);
    r->s = tp_xcalloc((size_t)r->n, sizeof *r->s);
    int first = take_slot(e), last = P - 1;
    int *slots = tp_xmalloc((size_t)P * sizeof *slots);
    for (int i = 0; i < P; i++) slots[i] = first;
    tp_generator_reset(e->gen, first);
    int rc = tp_generator_forward(e->gen, P, slots, r->prompt.ids, 1, &last, e->logits, err);
    free(slots);
    if (rc < 0) {
        e->slot_used[first] = false;
        tp_request_free(r);
        return NULL;
    }
    // Every sample's first token comes from the prompt's logits now; sample 0 has the
    // prompt's slot, the others copy it when slots are free (now or as samples end).
    tp_request **of = tp_xmalloc((size_t)r->n * sizeof *of);
    tp_sample_out **who = tp_xmalloc((size_t)r->n * sizeof *who);
    for (int k = 0; k < r->n; k++) {
        tp_sample_out *s = &r->s[k];
        s->slot = k == 0 ? first : -1;
        // (seed, sample): the same tokens however requests are batched
        s->rng = tp_splitmix64_skip(ro->seed * 0x9E3779B97F4A7C15ull, (uint64_t)k * 977);
        for (int w = 0; w < 4; w++) tp_splitmix64(&s->rng);
        of[k] = r, who[k] = s;
    }
    e->waiting += r->n - 1;
    rc = draw(e, r->n, of, who, true, err);
    free(of), free(who);
    if (rc < 0) {
        for (int k = 0; k < r->n; k++) {
            if (r->s[k].slot >= 0) e->slot_used[r->s[k].slot] = false;
            else if (!r->s[k].finish) e->waiting--;
        }
        tp_request_free(r);
        return NULL;
    }
    admit(e, r);
    if (e->len == e->cap) e->cap = e->cap ? 2 * e->cap : 16, e->queue = tp_xrealloc(e->queue, (size_t)e->cap * sizeof *e->queue);
    e->queue[e->len++] = r;
    e->submitted++;
    return r;
}

int tp_engine_step(tp_engine *e, tp_err *err) {
    int cap = e->o.max_batch, n = 0;
    int *slots = tp_xmalloc((size_t)cap * sizeof *slots), *outs = tp_xmalloc((size_t)cap * sizeof *outs);
    int32_t *tok = tp_xmalloc((size_t)cap * sizeof *tok);
    tp_sample_out **who = tp_xmalloc((size_t)cap * sizeof *who);
    tp_request **of = tp_xmalloc((size_t)cap * sizeof *of);
    for (int q = e->head; q < e->len && e->waiting > 0; q++) admit(e, e->queue[q]);
    for (int q = e->head; q < e->len; q++)
        for (int k = 0; k < e->queue[q]->n; k++) {
            tp_sample_out *s = &e->queue[q]->s[k];
            if (s->finish || s->slot < 0 || n == cap) continue;
            slots[n] = s->slot, outs[n] = n, tok[n] = s->tokens.ids[s->tokens.count - 1];
            who[n] = s, of[n] = e->queue[q];
            n++;
        }
    int rc = 0;
    if (n > 0 && argmax_only(e, n, of)) {  // the same tokens as draw's argmax, most logits never computed
        rc = tp_generator_forward_argmax(e->gen, n, slots, tok, n, outs, e->drawn, err);
        if (rc == 0) take_drawn(e, n, of, who, false);
    } else if (n > 0) {
        rc = tp_generator_forward(e->gen, n, slots, tok, n, outs, e->logits, err);
        if (rc == 0) rc = draw(e, n, of, who, false, err);
    }
    free(slots), free(outs), free(tok), free(who), free(of);
    return rc < 0 ? -1 : n;
}

tp_request *tp_engine_next_done(tp_engine *e) {
    if (e->head < e->len && e->queue[e->head]->done == e->queue[e->head]->n) return e->queue[e->head++];
    return NULL;
}

void tp_engine_cancel(tp_engine *e, tp_request *r) {
    for (int k = 0; k < r->n; k++)
        if (!r->s[k].finish) {
            r->s[k].finish = "abort";
            if (r->s[k].slot >= 0) e->slot_used[r->s[k].slot] = false;
            else e->waiting--;
            r->s[k].slot = -1;
            r->done++;
        }
}

void tp_engine_remove(tp_engine *e, tp_request *r) {
    for (int q = e->head; q < e->len; q++)
        if (e->queue[q] == r) {
            memmove(e->queue + q, e->queue + q + 1, (size_t)(e->len - q - 1) * sizeof *e->queue);
            e->len--;
            return;
        }
}

static void add_id(int32_t *ids, int *n, int cap, int32_t id) {
    if (id < 0 || *n >= cap) return;
    for (int i = 0; i < *n; i++)
        if (ids[i] == id) return;
    ids[(*n)++] = id;
}

int tp_engine_eos(const tp_model *m, const tp_tokenizer *tok, int tmpl, int32_t *ids, int cap, const char **stop) {
    int n = 0;
    jv e = jv_object_get(jv_copy(m->config_json), jv_string("eos_token_id"));
    if (jv_get_kind(e) == JV_KIND_NUMBER) add_id(ids, &n, cap, (int32_t)jv_number_value(e));
    if (jv_get_kind(e) == JV_KIND_ARRAY)
        for (int i = 0; i < jv_array_length(jv_copy(e)); i++) {
            jv x = jv_array_get(jv_copy(e), i);
            if (jv_get_kind(x) == JV_KIND_NUMBER) add_id(ids, &n, cap, (int32_t)jv_number_value(x));
            jv_free(x);
        }
    jv_free(e);
    const char *s = tp_tokenizer_config_token(tok, "eos_token");
    if (s) add_id(ids, &n, cap, tp_tokenizer_token_id(tok, s));
    const char *eot = tp_template_end_of_turn((tp_template)tmpl);
    int32_t id = tp_tokenizer_token_id(tok, eot);
    add_id(ids, &n, cap, id);
    *stop = id >= 0 ? NULL : eot;
    return n;
}
