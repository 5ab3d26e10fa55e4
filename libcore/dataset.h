// dataset.h — training samples read from tensor streams into memory, and the padded
// batches the model core takes.
//
// A record is one sample or one packed row: input_ids (int [T]), loss_mask (uint8 [T]),
// optional position_ids (int [T], default 0..T-1) and seq_starts (int [S], default [0]).
// Every record is checked when read (shapes, dtypes, ids in the vocabulary, positions,
// sequence starts); errors name the stream and the record.
#ifndef TP_DATASET_H
#define TP_DATASET_H

#include <jv.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

typedef struct tp_sample {
    size_t off;          // first token in the dataset's token arrays
    uint32_t len;        // T
    size_t starts_off;   // first sequence start in starts[]
    uint32_t n_starts;   // S
    uint32_t targets;    // tokens counted by the loss (see tp_batch)
} tp_sample;

typedef struct tp_dataset {
    int32_t *ids, *pos;  // [tokens]
    uint8_t *mask;       // [tokens]
    int32_t *starts;     // [all sequence starts]
    tp_sample *samples;
    size_t n, tokens, n_starts_total;
    uint64_t targets;
    uint32_t max_len;
    int32_t max_id;
    jv metadata;  // __metadata__ of the first stream's first record (jv_null() when none)
} tp_dataset;

// Reads every record of every path ("-": standard input). vocab_size > 0 refuses ids at
// or past it. All streams must carry the same tokenizer_hash when they carry one.
int tp_dataset_load(tp_dataset *d, const char *const *paths, int n_paths, int32_t vocab_size, tp_err *err);
void tp_dataset_free(tp_dataset *d);

// Room for a batch, reused from step to step.
typedef struct tp_batch_buf {
    int32_t *ids, *pos, *seg;
    uint8_t *mask;
    size_t cap;
    tp_batch batch;
} tp_batch_buf;

// The samples idx[0..n) as n rows padded to the longest: padding tokens (pad_id, loss
// mask 0) form a sequence of their own, so they change nothing the real tokens see.
void tp_dataset_batch(const tp_dataset *d, const size_t *idx, int n, int32_t pad_id, tp_batch_buf *out);
void tp_batch_buf_free(tp_batch_buf *b);

#endif
