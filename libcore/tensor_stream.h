// tensor_stream.h — records of tensors, back to back (man 5 thinkpipe-stream).
//
// A stream is a sequence of safetensors blobs: each record is an 8-byte header
// length, the JSON header and the data section, exactly as one .safetensors file.
// The first record may carry stream metadata in __metadata__ (producer, tokenizer
// hash, template, vocab size). A whole stream may be zstd-compressed (or gzip, xz,
// ... — anything tp_input_open() reads); readers detect that from the magic bytes.
// Errors name the record and its byte offset in the (decompressed) stream.
#ifndef TP_TENSOR_STREAM_H
#define TP_TENSOR_STREAM_H

#include <jv.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "input.h"
#include "safetensors.h"
#include "tensor.h"

typedef struct tp_record {
    tp_st_header header;  // header.tensors[i].data points into the record's data
    uint64_t index;       // 0-based record number
    uint64_t offset;      // byte offset of the record in the stream
    uint64_t size;        // bytes: 8 + header + data
} tp_record;

const tp_tensor *tp_record_find(const tp_record *rec, const char *name);

typedef struct tp_stream_reader tp_stream_reader;

tp_stream_reader *tp_stream_open(const char *path, tp_err *err);
tp_stream_reader *tp_stream_from_input(tp_input *in);  // takes ownership
// 1 with *rec (valid until the next call or close), 0 at a clean end, -1 on error.
int tp_stream_next(tp_stream_reader *r, const tp_record **rec, tp_err *err);
// The first record's __metadata__ (jv_null() before it is read or when absent); borrowed.
jv tp_stream_metadata(const tp_stream_reader *r);
const char *tp_stream_name(const tp_stream_reader *r);
void tp_stream_close(tp_stream_reader *r);

typedef struct tp_stream_writer tp_stream_writer;

// zstd_level 0 writes plain records; 1..19 a zstd stream (libzstd, streaming).
tp_stream_writer *tp_stream_writer_open(const char *path, int zstd_level, tp_err *err);
tp_stream_writer *tp_stream_writer_fd(int fd, const char *name, int zstd_level, tp_err *err);
// Writes one record; metadata (borrowed) is an object of strings or jv_null().
int tp_stream_write(tp_stream_writer *w, const tp_tensor_ref *tensors, int count, jv metadata, tp_err *err);
// Pushes everything written so far to the file descriptor (a zstd block flush),
// so a reader on a pipe sees the records without waiting for the end.
int tp_stream_writer_flush(tp_stream_writer *w, tp_err *err);
// Ends the zstd frame, closes the file; returns -1 if anything failed.
int tp_stream_writer_close(tp_stream_writer *w, tp_err *err);
uint64_t tp_stream_writer_records(const tp_stream_writer *w);
uint64_t tp_stream_writer_bytes(const tp_stream_writer *w);  // uncompressed bytes written

#endif
