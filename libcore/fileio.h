// fileio.h — whole writes, output files, and files that appear atomically.
#ifndef TP_FILEIO_H
#define TP_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

#include "error.h"

// Whether the path (or any string) ends with suffix.
bool tp_ends_with(const char *s, const char *suffix);

// Whether a and b name the same file, so that writing one would destroy the other:
// the same regular file by st_dev/st_ino (hard links, symlinks, "./x" and "x"), or, when
// neither exists yet, the same name in the same directory. Two "-" are the same (one
// standard stream); "-" is never the same as a path. Devices and pipes (/dev/null) can
// be shared.
bool tp_same_file(const char *a, const char *b);

// Opens an output: "-" is stdout (fd 1). append: O_APPEND instead of O_TRUNC.
// Returns the fd or -1 with err set.
int tp_output_open(const char *path, bool append, tp_err *err);

// Writes all of iov (retrying short writes and EINTR). If it fails after a partial
// write to a regular file, it truncates the file back to where this call started,
// so a full disk never leaves half a record behind. name is for the message.
int tp_writev_all(int fd, struct iovec *iov, int iovcnt, const char *name, tp_err *err);
int tp_write_all(int fd, const void *p, size_t n, const char *name, tp_err *err);

// A file written under a temporary name in the same directory and renamed over
// `path` on commit (after fsync), so readers see the old file or the new one,
// never a half-written one.
typedef struct tp_atomic_file {
    int fd;
    char *path;
    char *tmp_path;
} tp_atomic_file;

int tp_atomic_open(tp_atomic_file *f, const char *path, tp_err *err);
int tp_atomic_commit(tp_atomic_file *f, tp_err *err);  // closes f either way
void tp_atomic_abort(tp_atomic_file *f);               // removes the temporary file

#endif
