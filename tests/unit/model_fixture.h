// model_fixture.h — the expected-output records of tests/ref's model oracles: one
// zstd-compressed safetensors record holding a packed batch (input_ids, position_ids,
// seq_starts [B, S], loss_mask) and reference tensors. Shared by test_model and test_optim.
#ifndef TP_MODEL_FIXTURE_H
#define TP_MODEL_FIXTURE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "tensor_stream.h"
#include "test.h"

typedef struct model_fixture {
    tp_stream_reader *r;
    const tp_record *rec;
    int B, T;
    int32_t *ids, *pos, *seg;
    uint8_t *mask;
    tp_batch batch;
} model_fixture;

static inline double fixture_at(const tp_tensor *t, uint64_t i) { return tp_tensor_get(t->data, t->dtype, i); }

static inline const tp_tensor *fixture_tensor(const model_fixture *f, const char *name) {
    const tp_tensor *t = tp_record_find(f->rec, name);
    CHECK_MSG(t, "fixture has no %s", name);
    return t;
}

// Reads the record at path and builds its batch; -1 (with failed checks) when it cannot.
static inline int model_fixture_open(model_fixture *f, const char *path) {
    tp_err err;
    memset(f, 0, sizeof *f);
    f->r = tp_stream_open(path, &err);
    CHECK_MSG(f->r, "%s", err.msg);
    if (!f->r) return -1;
    int got = tp_stream_next(f->r, &f->rec, &err);
    CHECK_MSG(got == 1, "%s: %s", path, got < 0 ? err.msg : "empty fixture");
    if (got != 1) return -1;
    const tp_tensor *ids = fixture_tensor(f, "input_ids"), *pos = fixture_tensor(f, "position_ids"),
                    *starts = fixture_tensor(f, "seq_starts"), *mask = fixture_tensor(f, "loss_mask");
    if (!ids || !pos || !starts || !mask) return -1;
    f->B = (int)ids->shape[0], f->T = (int)ids->shape[1];
    int S = (int)starts->shape[1];
    CHECK(f->B <= 16);
    if (f->B > 16) return -1;
    size_t N = (size_t)f->B * f->T;
    f->ids = malloc(N * 4), f->pos = malloc(N * 4), f->seg = malloc(N * 4), f->mask = malloc(N);
    for (size_t i = 0; i < N; i++)
        f->ids[i] = (int32_t)fixture_at(ids, i), f->pos[i] = (int32_t)fixture_at(pos, i),
        f->mask[i] = (uint8_t)fixture_at(mask, i);
    int32_t *st = malloc((size_t)f->B * S * 4);
    for (size_t i = 0; i < (size_t)f->B * S; i++) st[i] = (int32_t)fixture_at(starts, i);
    const int32_t *rows[16];
    int count[16];
    for (int r = 0; r < f->B; r++) rows[r] = st + r * S, count[r] = S;
    CHECK(tp_batch_seg_start(f->seg, f->B, f->T, rows, count) == 0);
    free(st);
    f->batch = (tp_batch){f->B, f->T, f->ids, f->pos, f->seg, f->mask};
    return 0;
}

static inline void model_fixture_close(model_fixture *f) {
    tp_stream_close(f->r);
    free(f->ids), free(f->pos), free(f->seg), free(f->mask);
}

// A model directory that must load (a failed check otherwise; NULL then).
static inline tp_model *fixture_load_model(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s%s", dir, name);
    tp_err err;
    tp_model *m = tp_model_load(path, &err);
    CHECK_MSG(m, "%s", err.msg);
    return m;
}

// Logits [T, V] of every position of one sequence by the training forward (malloc'd).
static inline float *fixture_logits(tp_model *m, const int32_t *ids, int T) {
    int32_t *pos = malloc((size_t)T * 4), *seg = calloc((size_t)T, 4);
    for (int t = 0; t < T; t++) pos[t] = t;
    tp_batch b = {1, T, ids, pos, seg, NULL};
    float *out = malloc((size_t)T * m->cfg.vocab_size * 4);
    tp_err err;
    CHECK_MSG(tp_model_forward(m, &b, NULL, NULL, 0, out, &err) == 0, "%s", err.msg);
    free(pos), free(seg);
    return out;
}

// ||a - b|| / ||b|| over n floats against a reference tensor of any float dtype.
static inline double fixture_rel_l2(const float *a, const tp_tensor *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fixture_at(b, i), d = a[i] - r;
        num += d * d, den += r * r;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
