#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool tp_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

// The directory of a path (".", when it has no slash) and where its last name starts.
static const char *last_name(const char *path, char *dir, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) return snprintf(dir, cap, "."), path;
    snprintf(dir, cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return slash + 1;
}

bool tp_same_file(const char *a, const char *b) {
    bool dash_a = !strcmp(a, "-"), dash_b = !strcmp(b, "-");
    if (dash_a || dash_b) return dash_a && dash_b;
    struct stat sa, sb;
    bool has_a = !stat(a, &sa), has_b = !stat(b, &sb);
    if (has_a && has_b) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino && S_ISREG(sa.st_mode);
    if (has_a || has_b) return false;
    // Neither exists yet: the same name in the same directory.
    char dir_a[PATH_MAX], dir_b[PATH_MAX];
    const char *name_a = last_name(a, dir_a, sizeof dir_a), *name_b = last_name(b, dir_b, sizeof dir_b);
    if (strcmp(name_a, name_b) || stat(dir_a, &sa) || stat(dir_b, &sb)) return !strcmp(a, b);
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int tp_output_open(const char *path, bool append, tp_err *err) {
    if (!strcmp(path, "-")) return STDOUT_FILENO;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0) tp_err_set(err, "%s: %s", path, strerror(errno));
    return fd;
}

static void undo_partial_write(int fd, size_t written) {
    struct stat st;
    if (written == 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) return;
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end >= (off_t)written && ftruncate(fd, end - (off_t)written) == 0)
        lseek(fd, end - (off_t)written, SEEK_SET);
}

int tp_writev_all(int fd, struct iovec *iov, int iovcnt, const char *name, tp_err *err) {
    size_t written = 0;
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt);
        if (n < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            undo_partial_write(fd, written);
            tp_err_set(err, "%s: write failed: %s", name, strerror(e));
            return -1;
        }
        written += (size_t)n;
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

int tp_write_all(int fd, const void *p, size_t n, const char *name, tp_err *err) {
    struct iovec iov = {(void *)p, n};
    return tp_writev_all(fd, &iov, 1, name, err);
}

int tp_atomic_open(tp_atomic_file *f, const char *path, tp_err *err) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    size_t n = 2 * strlen(path) + 32;
    f->path = tp_xstrdup(path);
    f->tmp_path = tp_xmalloc(n);
    // Hidden name in the same directory: rename(2) is only atomic within one file system.
    char *copy = tp_xstrdup(path);
    char *dir = dirname(copy);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(f->tmp_path, n, "%s/.%s.tmp.XXXXXX", dir, base);
    free(copy);
    f->fd = mkostemp(f->tmp_path, O_CLOEXEC);
    if (f->fd < 0) {
        tp_err_set(err, "%s: cannot create temporary file: %s", path, strerror(errno));
        free(f->path);
        free(f->tmp_path);
        f->path = f->tmp_path = NULL;
        return -1;
    }
    fchmod(f->fd, 0644);
    return 0;
}

void tp_atomic_abort(tp_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp_path) unlink(f->tmp_path);
    free(f->path);
    free(f->tmp_path);
    f->fd = -1;
    f->path = f->tmp_path = NULL;
}

int tp_atomic_commit(tp_atomic_file *f, tp_err *err) {
    int failed = fsync(f->fd) ? errno : 0;
    if (close(f->fd) && !failed) failed = errno;
    f->fd = -1;
    if (failed) {
        tp_err_set(err, "%s: cannot write: %s", f->path, strerror(failed));
        tp_atomic_abort(f);
        return -1;
    }
    f->fd = -1;
    if (rename(f->tmp_path, f->path)) {
        tp_err_set(err, "%s: cannot rename into place: %s", f->path, strerror(errno));
        tp_atomic_abort(f);
        return -1;
    }
    // Make the rename itself durable.
    char *copy = tp_xstrdup(f->path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
    free(f->path);
    free(f->tmp_path);
    f->path = f->tmp_path = NULL;
    return 0;
}
