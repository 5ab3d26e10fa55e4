// pack.h — greedy packing of tokenized samples into fixed-length rows.
//
// Samples go into the current row while they fit; otherwise the row is padded and
// emitted and a new one starts (next-fit, so the sample order is kept). A row
// carries input_ids, loss_mask, position_ids (restarting at 0 for each sample) and
// seq_starts (the offset of each sample in the row, then of the padding, if any),
// so attention never crosses samples. With split, a sample that does not fit is
// cut at the row's end and continues in the next row (positions continue).
#ifndef TP_PACK_H
#define TP_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct {
    const int32_t *input_ids, *position_ids, *seq_starts;
    const uint8_t *loss_mask;
    size_t len, n_starts, pad;  // len == the row length; pad tokens at the end
} tp_packed_row;

typedef int (*tp_pack_emit)(void *ctx, const tp_packed_row *row, tp_err *err);

typedef struct {
    size_t row_len;
    int32_t pad_id;
    bool split;
    int32_t *ids, *pos, *starts;
    uint8_t *mask;
    size_t used, n_starts;
    uint64_t rows, pad_tokens;
} tp_packer;

void tp_packer_init(tp_packer *p, size_t row_len, int32_t pad_id, bool split);
// Adds one sample (n >= 1 tokens). Without split, n must be <= row_len.
int tp_packer_add(tp_packer *p, const int32_t *ids, const uint8_t *mask, size_t n, tp_pack_emit emit, void *ctx,
                  tp_err *err);
int tp_packer_finish(tp_packer *p, tp_pack_emit emit, void *ctx, tp_err *err);  // emits the last row
void tp_packer_free(tp_packer *p);

#endif
