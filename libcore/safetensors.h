// safetensors.h — safetensors headers, files and sharded checkpoints.
//
// File layout (the Hugging Face spec): 8-byte little-endian header length N, N bytes
// of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {str: str}}, then the data section. Everything a header claims is validated before
// use: bounded length, JSON object, known dtype, shape × dtype size = byte range, and
// ranges that tile the data section exactly (no overlap, no hole, nothing after).
#ifndef TP_SAFETENSORS_H
#define TP_SAFETENSORS_H

#include <jv.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"
#include "tensor.h"

#define TP_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)  // as the reference implementation

typedef struct tp_st_header {
    tp_tensor *tensors;  // in header order; data pointers unset
    int count;
    jv metadata;         // the __metadata__ object, or jv_null()
    uint64_t data_len;   // size of the data section = largest end offset
} tp_st_header;

// The 8-byte little-endian header length that starts every file and record.
uint64_t tp_st_read_header_len(const void *bytes8);

// Parses and validates header JSON (json need not be NUL-terminated). The message
// says what is wrong but not where; callers add the file or stream offset.
int tp_st_header_parse(const char *json, size_t len, tp_st_header *h, tp_err *err);
void tp_st_header_free(tp_st_header *h);
const tp_tensor *tp_st_header_find(const tp_st_header *h, const char *name);

// Builds the 8-byte length + JSON header for tensors laid out back to back in the
// given order, padded with spaces so the data section starts 8-byte aligned.
// metadata: object of strings (borrowed) or jv_null(). Returns the data section size.
int tp_st_header_build(tp_buf *out, const tp_tensor_ref *tensors, int count, jv metadata, uint64_t *data_len,
                       tp_err *err);

// One safetensors file, memory-mapped read-only (or a caller's memory block).
typedef struct tp_safetensors {
    char *path;
    void *map;
    size_t map_len;
    tp_st_header header;
} tp_safetensors;

tp_safetensors *tp_safetensors_open(const char *path, tp_err *err);
tp_safetensors *tp_safetensors_from_mem(const void *data, size_t len, const char *name, tp_err *err);
const tp_tensor *tp_safetensors_find(const tp_safetensors *st, const char *name);
void tp_safetensors_close(tp_safetensors *st);

// Writes a safetensors file atomically (temporary file, fsync, rename).
int tp_safetensors_write(const char *path, const tp_tensor_ref *tensors, int count, jv metadata, tp_err *err);

// A checkpoint: one .safetensors file, or shards listed by model.safetensors.index.json.
// path: a .safetensors file, an index .json, or a directory holding either.
typedef struct tp_weights {
    tp_safetensors **shards;
    int nshards;
    jv metadata;  // the index's "metadata", or the single file's __metadata__
} tp_weights;

tp_weights *tp_weights_open(const char *path, tp_err *err);
// Finds a tensor by name in any shard; NULL when absent.
const tp_tensor *tp_weights_find(const tp_weights *w, const char *name);
void tp_weights_close(tp_weights *w);

#endif
