// dataset.c — tensor-stream samples in memory and padded batches of them.
#include "dataset.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tensor_stream.h"

static void grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    *p = tp_xrealloc(*p, c * elem);
    *cap = c;
}

typedef struct caps {
    size_t tokens, starts, samples;
} caps;

static int fail(tp_err *err, const char *name, const tp_record *rec, const char *what) {
    tp_err_set(err, "%s: record %llu (byte %llu): %s", name, (unsigned long long)rec->index,
               (unsigned long long)rec->offset, what);
    return -1;
}

static int int_tensor(const tp_tensor *t, int64_t len, bool need_len) {
    bool is_int = t->dtype == TP_I32 || t->dtype == TP_I64 || t->dtype == TP_U32 || t->dtype == TP_I16 || t->dtype == TP_U16;
    return is_int && t->ndim == 1 && (!need_len || t->shape[0] == len);
}

// Appends one record's sample to d.
static int add_record(tp_dataset *d, caps *c, const char *name, const tp_record *rec, int32_t vocab_size, tp_err *err) {
    const tp_tensor *ids = tp_record_find(rec, "input_ids"), *mask = tp_record_find(rec, "loss_mask");
    const tp_tensor *pos = tp_record_find(rec, "position_ids"), *starts = tp_record_find(rec, "seq_starts");
    if (!ids || !mask) return fail(err, name, rec, "needs input_ids and loss_mask (made by tokenize --template)");
    int64_t T = ids->ndim == 1 ? ids->shape[0] : -1;
    if (!int_tensor(ids, T, false) || T < 1 || T > (1 << 24)) return fail(err, name, rec, "input_ids must be a non-empty 1-D integer tensor");
    if (mask->ndim != 1 || mask->shape[0] != T || (mask->dtype != TP_U8 && mask->dtype != TP_BOOL))
        return fail(err, name, rec, "loss_mask must be uint8 [T] like input_ids");
    if (pos && !int_tensor(pos, T, true)) return fail(err, name, rec, "position_ids must be an integer tensor [T]");
    if (starts && (!int_tensor(starts, 0, false) || starts->shape[0] < 1))
        return fail(err, name, rec, "seq_starts must be a non-empty 1-D integer tensor");
    size_t had = c->tokens;
    grow((void **)&d->ids, &c->tokens, d->tokens + (size_t)T, sizeof *d->ids);
    if (c->tokens != had) {  // positions and mask share the token capacity
        d->pos = tp_xrealloc(d->pos, c->tokens * sizeof *d->pos);
        d->mask = tp_xrealloc(d->mask, c->tokens);
    }
    size_t S = starts ? (size_t)starts->shape[0] : 1;
    grow((void **)&d->starts, &c->starts, d->n_starts_total + S, sizeof *d->starts);
    grow((void **)&d->samples, &c->samples, d->n + 1, sizeof *d->samples);
    size_t off = d->tokens;
    for (int64_t t = 0; t < T; t++) {
        double id = tp_tensor_get(ids->data, ids->dtype, (uint64_t)t);
        if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
            char what[160];
            snprintf(what, sizeof what, "token id %.0f at position %lld is outside the model's vocabulary (%d)", id,
                     (long long)t, vocab_size);
            return fail(err, name, rec, what);
        }
        d->ids[off + t] = (int32_t)id;
        if (d->ids[off + t] > d->max_id) d->max_id = d->ids[off + t];
        double p = pos ? tp_tensor_get(pos->data, pos->dtype, (uint64_t)t) : (double)t;
        if (p < 0 || p > (1 << 30)) return fail(err, name, rec, "position_ids out of range");
        d->pos[off + t] = (int32_t)p;
        d->mask[off + t] = tp_tensor_get(mask->data, mask->dtype, (uint64_t)t) != 0;
    }
    for (size_t k = 0; k < S; k++) {
        double s = starts ? tp_tensor_get(starts->data, starts->dtype, k) : 0;
        double prev = k ? d->starts[d->n_starts_total + k - 1] : -1;
        if ((k == 0 && s != 0) || s <= prev || s >= (double)T)
            return fail(err, name, rec, "seq_starts must start at 0 and increase within the row");
        d->starts[d->n_starts_total + k] = (int32_t)s;
    }
    tp_sample *smp = &d->samples[d->n];
    *smp = (tp_sample){off, (uint32_t)T, d->n_starts_total, (uint32_t)S, 0};
    // Targets: tokens with the mask set whose predecessor is in the same sequence.
    size_t k = 0;
    for (int64_t t = 1; t < T; t++) {
        while (k + 1 < S && d->starts[d->n_starts_total + k + 1] <= t) k++;
        if (d->mask[off + t] && d->starts[d->n_starts_total + k] < t) smp->targets++;
    }
    d->targets += smp->targets;
    d->tokens += (size_t)T;
    d->n_starts_total += S;
    if ((uint32_t)T > d->max_len) d->max_len = (uint32_t)T;
    d->n++;
    return 0;
}

static int same_hash(jv a, jv b) {
    const char *x = tp_json_get_string(a, "tokenizer_hash"), *y = tp_json_get_string(b, "tokenizer_hash");
    return !x || !y || strcmp(x, y) == 0;
}

int tp_dataset_load(tp_dataset *d, const char *const *paths, int n_paths, int32_t vocab_size, tp_err *err) {
    memset(d, 0, sizeof *d);
    d->metadata = jv_null();
    d->max_id = -1;
    caps c = {0};
    for (int f = 0; f < n_paths; f++) {
        tp_stream_reader *r = tp_stream_open(paths[f], err);
        if (!r) return -1;
        const tp_record *rec;
        int got;
        bool first = true;
        while ((got = tp_stream_next(r, &rec, err)) == 1) {
            if (first) {
                jv meta = tp_stream_metadata(r);
                if (f == 0) {
                    d->metadata = jv_copy(meta);
                } else if (!same_hash(d->metadata, meta)) {
                    tp_err_set(err, "%s: tokenizer_hash %s differs from %s's (%s): the streams were made with different tokenizers",
                               paths[f], tp_json_get_string(meta, "tokenizer_hash"), paths[0],
                               tp_json_get_string(d->metadata, "tokenizer_hash"));
                    got = -1;
                    break;
                }
                first = false;
            }
            if (add_record(d, &c, tp_stream_name(r), rec, vocab_size, err) < 0) {
                got = -1;
                break;
            }
        }
        tp_stream_close(r);
        if (got < 0) return -1;
    }
    if (d->n == 0) {
        tp_err_set(err, "%s: no records", n_paths == 1 ? paths[0] : "the data");
        return -1;
    }
    return 0;
}

void tp_dataset_free(tp_dataset *d) {
    free(d->ids), free(d->pos), free(d->mask), free(d->starts), free(d->samples);
    jv_free(d->metadata);
    memset(d, 0, sizeof *d);
}

void tp_dataset_batch(const tp_dataset *d, const size_t *idx, int n, int32_t pad_id, tp_batch_buf *out) {
    int T = 0;
    for (int r = 0; r < n; r++)
        if ((int)d->samples[idx[r]].len > T) T = (int)d->samples[idx[r]].len;
    size_t need = (size_t)n * T;
    if (need > out->cap) {
        out->ids = tp_xrealloc(out->ids, need * sizeof *out->ids);
        out->pos = tp_xrealloc(out->pos, need * sizeof *out->pos);
        out->seg = tp_xrealloc(out->seg, need * sizeof *out->seg);
        out->mask = tp_xrealloc(out->mask, need);
        out->cap = need;
    }
    for (int r = 0; r < n; r++) {
        const tp_sample *s = &d->samples[idx[r]];
        size_t row = (size_t)r * T;
        memcpy(out->ids + row, d->ids + s->off, s->len * sizeof *out->ids);
        memcpy(out->pos + row, d->pos + s->off, s->len * sizeof *out->pos);
        memcpy(out->mask + row, d->mask + s->off, s->len);
        uint32_t k = 0;
        for (uint32_t t = 0; t < s->len; t++) {
            while (k + 1 < s->n_starts && (uint32_t)d->starts[s->starts_off + k + 1] <= t) k++;
            out->seg[row + t] = (int32_t)(row + (size_t)d->starts[s->starts_off + k]);
        }
        for (int t = (int)s->len; t < T; t++) {
            out->ids[row + t] = pad_id;
            out->pos[row + t] = t - (int)s->len;
            out->mask[row + t] = 0;
            out->seg[row + t] = (int32_t)(row + s->len);
        }
    }
    out->batch = (tp_batch){n, T, out->ids, out->pos, out->seg, out->mask};
}

void tp_batch_buf_free(tp_batch_buf *b) {
    free(b->ids), free(b->pos), free(b->seg), free(b->mask);
    memset(b, 0, sizeof *b);
}
