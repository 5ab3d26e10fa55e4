// jsonl.h — reading and writing JSON Lines, one jv value per line.
//
// Reader: any input tp_input_open() accepts; tracks the line number and the byte
// offset of each record; accepts CRLF line ends, a UTF-8 BOM at the start, a last
// line without a newline, and skips blank lines. A malformed line is an error
// "FILE:LINE: message" — or, with skip_bad, a warning that is counted.
//
// Writer: each record is serialised in full and handed to one write(2), so a
// crash or a full disk never leaves a torn line in the output.
#ifndef TP_JSONL_H
#define TP_JSONL_H

#include <jv.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "error.h"
#include "input.h"

typedef struct tp_jsonl_opts {
    bool skip_bad;      // count and skip malformed lines instead of failing
    bool allow_scalar;  // accept any JSON value per line, not only objects
    int max_warnings;   // skipped lines reported one by one (0: 10; negative: none, no summary)
} tp_jsonl_opts;

typedef struct tp_jsonl_reader tp_jsonl_reader;

tp_jsonl_reader *tp_jsonl_open(const char *path, const tp_jsonl_opts *opts, tp_err *err);
tp_jsonl_reader *tp_jsonl_from_input(tp_input *in, const tp_jsonl_opts *opts);  // takes ownership of in
// 1 and *out (owned by the caller) for a record, 0 at the end, -1 on error.
int tp_jsonl_next(tp_jsonl_reader *r, jv *out, tp_err *err);
// The next non-blank line, unparsed (valid until the next call): for programs that
// parse records on worker threads. 1 found, 0 at the end, -1 on error.
int tp_jsonl_next_line(tp_jsonl_reader *r, const char **line, size_t *len, tp_err *err);
// Parses one line as tp_jsonl_next does, with its messages ("NAME:LINE: ...").
int tp_jsonl_parse_record(const char *name, uint64_t line_no, const char *line, size_t n, bool allow_scalar, jv *out,
                          tp_err *err);
uint64_t tp_jsonl_line(const tp_jsonl_reader *r);    // line number of the last record (1-based)
uint64_t tp_jsonl_offset(const tp_jsonl_reader *r);  // byte offset where it starts
// The last record's text without its line end, valid until the next call: lets a
// filter pass records through unchanged without printing them again.
const char *tp_jsonl_text(const tp_jsonl_reader *r, size_t *len);
uint64_t tp_jsonl_skipped(const tp_jsonl_reader *r);  // lines skipped with skip_bad
const char *tp_jsonl_name(const tp_jsonl_reader *r);
// Closes; with skip_bad, a summary warning names how many lines were skipped.
void tp_jsonl_close(tp_jsonl_reader *r);

typedef struct tp_jsonl_writer tp_jsonl_writer;

// path "-" is stdout; append opens with O_APPEND.
tp_jsonl_writer *tp_jsonl_writer_open(const char *path, bool append, tp_err *err);
tp_jsonl_writer *tp_jsonl_writer_fd(int fd, const char *name);
int tp_jsonl_write(tp_jsonl_writer *w, jv value, tp_err *err);  // value is borrowed
int tp_jsonl_write_text(tp_jsonl_writer *w, const char *text, size_t len, tp_err *err);  // text without newline
int tp_jsonl_writer_close(tp_jsonl_writer *w, tp_err *err);

#endif
