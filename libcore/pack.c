#include "pack.h"

#include <stdlib.h>
#include <string.h>

void tp_packer_init(tp_packer *p, size_t row_len, int32_t pad_id, bool split) {
    memset(p, 0, sizeof *p);
    p->row_len = row_len;
    p->pad_id = pad_id;
    p->split = split;
    p->ids = tp_xmalloc(row_len * sizeof *p->ids);
    p->pos = tp_xmalloc(row_len * sizeof *p->pos);
    p->starts = tp_xmalloc((row_len + 1) * sizeof *p->starts);
    p->mask = tp_xmalloc(row_len);
}

void tp_packer_free(tp_packer *p) {
    free(p->ids);
    free(p->pos);
    free(p->starts);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

static int flush_row(tp_packer *p, tp_pack_emit emit, void *ctx, tp_err *err) {
    if (p->used == 0) return 0;
    size_t pad = p->row_len - p->used;
    if (pad > 0) {
        p->starts[p->n_starts++] = (int32_t)p->used;
        for (size_t i = p->used; i < p->row_len; i++) {
            p->ids[i] = p->pad_id;
            p->mask[i] = 0;
            p->pos[i] = (int32_t)(i - p->used);
        }
    }
    tp_packed_row row = {p->ids, p->pos, p->starts, p->mask, p->row_len, p->n_starts, pad};
    p->rows++;
    p->pad_tokens += pad;
    p->used = 0;
    p->n_starts = 0;
    return emit(ctx, &row, err);
}

int tp_packer_add(tp_packer *p, const int32_t *ids, const uint8_t *mask, size_t n, tp_pack_emit emit, void *ctx,
                  tp_err *err) {
    if (n > p->row_len && !p->split) {
        tp_err_set(err, "a sample of %zu tokens does not fit a packed row of %zu", n, p->row_len);
        return -1;
    }
    size_t done = 0;
    while (done < n) {
        if (p->used == p->row_len || (!p->split && p->used + n > p->row_len)) {
            if (flush_row(p, emit, ctx, err) < 0) return -1;
        }
        size_t take = n - done;
        if (take > p->row_len - p->used) take = p->row_len - p->used;
        p->starts[p->n_starts++] = (int32_t)p->used;
        memcpy(p->ids + p->used, ids + done, take * sizeof *ids);
        memcpy(p->mask + p->used, mask + done, take);
        for (size_t i = 0; i < take; i++) p->pos[p->used + i] = (int32_t)(done + i);
        p->used += take;
        done += take;
    }
    return 0;
}

int tp_packer_finish(tp_packer *p, tp_pack_emit emit, void *ctx, tp_err *err) { return flush_row(p, emit, ctx, err); }
