// input.h — the one way every program opens its inputs.
//
// tp_input_open(path) reads, as one byte stream and without temporary files:
//   - "-" (standard input) or a plain file;
//   - a gzip, xz, bzip2, zstd or lz4 compressed file, detected by its magic bytes.
//     zstd and gzip are decoded here (libzstd, zlib): data flushed into a pipe is
//     readable at once, and bytes after the last gzip member are an error. xz,
//     bzip2 and lz4 go through libarchive, which reads ahead (on a pipe it waits for
//     a full buffer or the end) and stops quietly at trailing garbage;
//   - one member of a tar archive (plain or compressed) or a zip archive, named as
//     ARCHIVE/MEMBER, e.g. "data.tar.gz/gsm8k/train.jsonl". The archive is the
//     first leading part of the path that is an existing file, not a directory.
// Offsets and errors refer to the decompressed bytes.
#ifndef TP_INPUT_H
#define TP_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "error.h"

typedef struct tp_input tp_input;

tp_input *tp_input_open(const char *path, tp_err *err);
// Reads from memory (not copied; must outlive the input). Compression and archives
// are detected as for files; member may be NULL.
tp_input *tp_input_open_mem(const void *data, size_t len, const char *name, const char *member, tp_err *err);

// Reads up to cap bytes. Returns the count (> 0), 0 at the end, -1 on error (err names the input).
// It returns what is available rather than wait to fill buf; bytes of buf past the
// count may have been used as scratch by a decoder.
ssize_t tp_input_read(tp_input *in, void *buf, size_t cap, tp_err *err);
// Reads exactly n bytes unless the input ends first; returns the count read, -1 on error.
ssize_t tp_input_read_full(tp_input *in, void *buf, size_t n, tp_err *err);

const char *tp_input_name(const tp_input *in);  // for messages: path, "ARCHIVE/MEMBER" or "<stdin>"
uint64_t tp_input_offset(const tp_input *in);   // bytes delivered so far
const char *tp_input_format(const tp_input *in); // "plain", "gzip", "tar/gzip", "zip", ...
void tp_input_close(tp_input *in);
// Reads a whole file (decompressed, as tp_input_open sees it), appending to out.
int tp_input_read_all(const char *path, tp_buf *out, tp_err *err);

#endif
