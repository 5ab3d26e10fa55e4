#include "input.h"
#include "buf.h"
#include "fileio.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

enum { SNIFF_BYTES = 512, ARCHIVE_BLOCK = 1 << 16 };

struct tp_input {
    char *name;
    char format[48];
    // The raw source: a file descriptor or a memory block.
    int fd;
    bool own_fd;
    const uint8_t *mem;
    size_t mem_len, mem_pos;
    // Bytes read from fd to detect the format; served before reading fd again.
    uint8_t peek[SNIFF_BYTES];
    size_t peek_len, peek_pos;
    // Set when zstd is decompressed here: libzstd hands out each block as soon as
    // it is complete, so a stream flushed into a pipe is readable at once.
    ZSTD_DCtx *zstd;
    uint8_t *zstd_in;
    ZSTD_inBuffer zstd_buf;
    bool source_ended, frame_pending;
    // gzip likewise, with zlib: members back to back, and anything else after the
    // last member is an error (libarchive would silently stop there).
    z_stream *gzip;
    uint8_t *gzip_in;
    bool gzip_member_done;
    // A decoder error found while the caller's buffer already held good bytes:
    // those are returned first, the error on the next read.
    tp_err pending_error;
    bool has_pending_error;
    bool archive_empty;  // a compressed file holding zero bytes
    // Set when the bytes are decompressed or extracted by libarchive.
    struct archive *ar;
    uint8_t *ar_block;
    uint64_t offset;
};

typedef enum { KIND_PLAIN, KIND_COMPRESSED, KIND_ZIP, KIND_TAR } source_kind;

static const struct { const char *magic; size_t len; source_kind kind; } magics[] = {
    {"\x1f\x8b", 2, KIND_COMPRESSED},                 // gzip
    {"\xfd" "7zXZ\x00", 6, KIND_COMPRESSED},          // xz
    {"BZh", 3, KIND_COMPRESSED},                      // bzip2
    {"\x28\xb5\x2f\xfd", 4, KIND_COMPRESSED},         // zstd
    {"\x04\x22\x4d\x18", 4, KIND_COMPRESSED},         // lz4
    {"PK\x03\x04", 4, KIND_ZIP},
    {"PK\x05\x06", 4, KIND_ZIP},                      // empty zip
};
enum { N_MAGICS = sizeof magics / sizeof magics[0], TAR_MAGIC_END = 262 };

// A POSIX tar header: "ustar" at 257 and a valid header checksum (the sum of the
// 512 header bytes with the checksum field counted as spaces).
static bool is_tar_header(const uint8_t *p, size_t n) {
    if (n < 512 || memcmp(p + 257, "ustar", 5) != 0) return false;
    unsigned long stored = 0, sum = 0;
    int i = 148;
    while (i < 156 && p[i] == ' ') i++;
    for (; i < 156 && p[i] >= '0' && p[i] <= '7'; i++) stored = stored * 8 + (unsigned long)(p[i] - '0');
    for (i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? ' ' : p[i];
    return sum == stored;
}

static source_kind sniff(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < N_MAGICS; i++)
        if (n >= magics[i].len && !memcmp(p, magics[i].magic, magics[i].len)) return magics[i].kind;
    return is_tar_header(p, n) ? KIND_TAR : KIND_PLAIN;
}

// Whether more bytes could change what sniff() says. On a pipe we must not wait
// for bytes the writer has not sent yet (a single short record or line followed
// by a pause), so sniffing stops as soon as the answer is settled.
static bool sniff_undecided(const uint8_t *p, size_t n) {
    if (n == 0) return true;
    for (size_t i = 0; i < N_MAGICS; i++) {
        size_t m = n < magics[i].len ? n : magics[i].len;
        if (!memcmp(p, magics[i].magic, m)) return n < magics[i].len;
    }
    if (n >= 512 || p[0] == 0) return false;
    // Could these be the start of a tar header? A NUL-padded name (non-NUL bytes,
    // then only NULs), octal digits, spaces or NULs in the mode field, no newline.
    bool seen_nul = false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') return false;
        if (i < 100) {
            if (p[i] == 0) seen_nul = true;
            else if (seen_nul) return false;
        } else if (i < 108 && p[i] != 0 && p[i] != ' ' && (p[i] < '0' || p[i] > '7')) {
            return false;
        }
    }
    return true;
}

// Reads raw (not yet decompressed) bytes: the sniffed bytes first, then the source.
static ssize_t fd_read(int fd, void *buf, size_t cap) {
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n >= 0 || errno != EINTR) return n;
    }
}

static ssize_t source_read(tp_input *in, void *buf, size_t cap) {
    if (in->peek_pos < in->peek_len) {
        size_t n = in->peek_len - in->peek_pos;
        if (n > cap) n = cap;
        memcpy(buf, in->peek + in->peek_pos, n);
        in->peek_pos += n;
        return (ssize_t)n;
    }
    if (in->mem) {
        size_t n = in->mem_len - in->mem_pos;
        if (n > cap) n = cap;
        memcpy(buf, in->mem + in->mem_pos, n);
        in->mem_pos += n;
        return (ssize_t)n;
    }
    return fd_read(in->fd, buf, cap);
}

static ssize_t zstd_read(tp_input *in, void *buf, size_t cap, tp_err *err) {
    ZSTD_outBuffer out = {buf, cap, 0};
    for (;;) {
        // Called with no new input too: it first hands out output it holds back.
        size_t in_before = in->zstd_buf.pos, out_before = out.pos;
        size_t hint = ZSTD_decompressStream(in->zstd, &out, &in->zstd_buf);
        if (ZSTD_isError(hint)) {
            tp_err *e = out.pos ? &in->pending_error : err;
            tp_err_set(e, "%s: corrupt zstd data after %llu bytes: %s", in->name,
                       (unsigned long long)(in->offset + out.pos), ZSTD_getErrorName(hint));
            in->has_pending_error = out.pos > 0;
            return out.pos ? (ssize_t)out.pos : -1;
        }
        // Between frames an idle call asks for the next header; only progress tells.
        if (in->zstd_buf.pos > in_before || out.pos > out_before) in->frame_pending = hint != 0;
        if (out.pos == out.size) return (ssize_t)out.pos;
        if (in->zstd_buf.pos < in->zstd_buf.size) continue;
        if (out.pos > 0) return (ssize_t)out.pos;  // never block while holding data
        if (in->source_ended) {
            if (!in->frame_pending) return 0;
            tp_err_set(err, "%s: truncated zstd data after %llu bytes", in->name, (unsigned long long)in->offset);
            return -1;
        }
        ssize_t n = source_read(in, in->zstd_in, ZSTD_DStreamInSize());
        if (n < 0) {
            tp_err_set(err, "%s: read failed: %s", in->name, strerror(errno));
            return -1;
        }
        if (n == 0) in->source_ended = true;
        in->zstd_buf = (ZSTD_inBuffer){in->zstd_in, (size_t)n, 0};
    }
}

static ssize_t gzip_fail(tp_input *in, size_t delivered, tp_err *err, const char *what) {
    tp_err *e = delivered ? &in->pending_error : err;
    tp_err_set(e, "%s: %s after %llu bytes", in->name, what, (unsigned long long)(in->offset + delivered));
    in->has_pending_error = delivered > 0;
    return delivered ? (ssize_t)delivered : -1;
}

static ssize_t gzip_read(tp_input *in, void *buf, size_t cap, tp_err *err) {
    z_stream *z = in->gzip;
    z->next_out = buf;
    z->avail_out = (uInt)(cap > UINT32_MAX ? UINT32_MAX : cap);
    for (;;) {
        if (in->gzip_member_done && z->avail_in > 0) {
            // Another member may follow (cat a.gz b.gz); anything else is not ours to skip.
            if (z->next_in[0] != 0x1f)
                return gzip_fail(in, (size_t)(z->next_out - (Bytef *)buf), err, "unexpected data after the gzip stream");
            inflateReset(z);
            in->gzip_member_done = false;
        }
        if (!in->gzip_member_done) {
            // Also with no new input: zlib may hold output back when the buffer was full.
            int rc = inflate(z, Z_NO_FLUSH);
            if (rc == Z_STREAM_END) {
                in->gzip_member_done = true;
            } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
                char what[160];
                snprintf(what, sizeof what, "corrupt gzip data (%s)", z->msg ? z->msg : "inflate failed");
                return gzip_fail(in, (size_t)(z->next_out - (Bytef *)buf), err, what);
            }
        }
        if (z->avail_out == 0) return (ssize_t)cap;
        if (z->avail_in > 0) continue;
        size_t delivered = (size_t)(z->next_out - (Bytef *)buf);
        if (delivered) return (ssize_t)delivered;  // never block while holding data
        if (in->source_ended) return in->gzip_member_done ? 0 : gzip_fail(in, 0, err, "truncated gzip data");
        ssize_t n = source_read(in, in->gzip_in, ARCHIVE_BLOCK);
        if (n < 0) return gzip_fail(in, 0, err, strerror(errno));
        if (n == 0) in->source_ended = true;
        z->next_in = in->gzip_in;
        z->avail_in = (uInt)n;
    }
}

static bool is_gzip(const uint8_t *p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }

static bool is_zstd(const uint8_t *p, size_t n) { return n >= 4 && !memcmp(p, "\x28\xb5\x2f\xfd", 4); }


// zstd and gzip are decoded here, not by libarchive, unless the name says tar.
static bool names_tar(const char *name) {
    return tp_ends_with(name, ".tar.zst") || tp_ends_with(name, ".tzst") || tp_ends_with(name, ".tar.gz") ||
           tp_ends_with(name, ".tgz");
}

static la_ssize_t archive_read_cb(struct archive *a, void *user, const void **out) {
    tp_input *in = user;
    if (in->mem && in->peek_pos >= in->peek_len) {
        // Memory needs no copy: hand libarchive the rest of the block.
        *out = in->mem + in->mem_pos;
        size_t n = in->mem_len - in->mem_pos;
        in->mem_pos = in->mem_len;
        return (la_ssize_t)n;
    }
    ssize_t n = source_read(in, in->ar_block, ARCHIVE_BLOCK);
    if (n < 0) {
        archive_set_error(a, errno, "read failed: %s", strerror(errno));
        return -1;
    }
    *out = in->ar_block;
    return n;
}

static const char *strip_dot_slash(const char *s) {
    while (s[0] == '.' && s[1] == '/') s += 2;
    return s;
}

// Member names match with any leading "./" and trailing "/" ignored (tar stores "dir/").
static bool same_member(const char *a, const char *b) {
    a = strip_dot_slash(a);
    b = strip_dot_slash(b);
    size_t la = strlen(a), lb = strlen(b);
    while (la && a[la - 1] == '/') la--;
    while (lb && b[lb - 1] == '/') lb--;
    return la == lb && !memcmp(a, b, la);
}

static int open_archive(tp_input *in, const char *archive_name, const char *member, tp_err *err) {
    in->ar_block = tp_xmalloc(ARCHIVE_BLOCK);
    in->ar = archive_read_new();
    archive_read_support_filter_all(in->ar);
    archive_read_support_format_tar(in->ar);
    archive_read_support_format_zip(in->ar);
    archive_read_support_format_raw(in->ar);  // lowest bid: a compressed plain file
    archive_read_support_format_empty(in->ar);  // a compressed file holding nothing
    if (archive_read_open(in->ar, in, NULL, archive_read_cb, NULL) != ARCHIVE_OK) {
        tp_err_set(err, "%s: %s", archive_name, archive_error_string(in->ar));
        return -1;
    }
    struct archive_entry *entry;
    bool first = true;
    for (;;) {
        int r = archive_read_next_header(in->ar, &entry);
        if (r == ARCHIVE_EOF && !member && first && archive_format(in->ar) == ARCHIVE_FORMAT_EMPTY) {
            const char *filter = archive_filter_count(in->ar) > 1 ? archive_filter_name(in->ar, 0) : "plain";
            snprintf(in->format, sizeof in->format, "%s", filter);
            in->archive_empty = true;
            return 0;
        }
        if (r == ARCHIVE_EOF) {
            if (member) tp_err_set(err, "%s: archive has no member '%s'", archive_name, member);
            else tp_err_set(err, "%s: archive has no files", archive_name);
            return -1;
        }
        if (r < ARCHIVE_WARN) {
            tp_err_set(err, "%s: %s", archive_name, archive_error_string(in->ar));
            return -1;
        }
        const char *filter = archive_filter_count(in->ar) > 1 ? archive_filter_name(in->ar, 0) : NULL;
        if (archive_format(in->ar) == ARCHIVE_FORMAT_RAW) {
            if (member) {
                tp_err_set(err, "%s: not a tar or zip archive, so it has no member '%s'", archive_name, member);
                return -1;
            }
            snprintf(in->format, sizeof in->format, "%s", filter ? filter : "plain");
            return 0;
        }
        const char *fmt = (archive_format(in->ar) & ARCHIVE_FORMAT_BASE_MASK) == ARCHIVE_FORMAT_ZIP ? "zip" : "tar";
        snprintf(in->format, sizeof in->format, "%s%s%s", fmt, filter ? "/" : "", filter ? filter : "");
        const char *path = strip_dot_slash(archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "");
        if (!member) {
            if (first)
                tp_err_set(err, "%s: is a %s archive; name the member to read, e.g. %s/%s", archive_name, fmt,
                           archive_name, path);
            return -1;
        }
        first = false;
        if (!same_member(path, member)) continue;
        if (archive_entry_filetype(entry) != AE_IFREG) {
            tp_err_set(err, "%s/%s: not a regular file in the archive", archive_name, member);
            return -1;
        }
        return 0;
    }
}

static tp_input *input_new(const char *name) {
    tp_input *in = tp_xcalloc(1, sizeof *in);
    in->name = tp_xstrdup(name);
    in->fd = -1;
    snprintf(in->format, sizeof in->format, "plain");
    return in;
}

// Decides between plain reading and libarchive once the first bytes are known.
static tp_input *finish_open(tp_input *in, const char *archive_name, const char *member, tp_err *err) {
    const uint8_t *head = in->mem ? in->mem : in->peek;
    size_t head_len = in->mem ? in->mem_len : in->peek_len;
    if (!in->mem) {
        while (in->peek_len < SNIFF_BYTES && sniff_undecided(in->peek, in->peek_len)) {
            ssize_t n = fd_read(in->fd, in->peek + in->peek_len, SNIFF_BYTES - in->peek_len);
            if (n < 0) {
                tp_err_set(err, "%s: read failed: %s", in->name, strerror(errno));
                tp_input_close(in);
                return NULL;
            }
            if (n == 0) break;
            in->peek_len += (size_t)n;
        }
        head_len = in->peek_len;
    }
    source_kind kind = sniff(head, head_len);
    if (kind == KIND_PLAIN && !member) return in;
    if (is_zstd(head, head_len) && !member && !names_tar(archive_name)) {
        in->zstd = ZSTD_createDCtx();
        if (!in->zstd) tp_die("out of memory creating a zstd context");
        in->zstd_in = tp_xmalloc(ZSTD_DStreamInSize());
        snprintf(in->format, sizeof in->format, "zstd");
        return in;
    }
    if (is_gzip(head, head_len) && !member && !names_tar(archive_name)) {
        in->gzip = tp_xcalloc(1, sizeof *in->gzip);
        if (inflateInit2(in->gzip, 15 + 16) != Z_OK) tp_die("out of memory starting zlib");
        in->gzip_in = tp_xmalloc(ARCHIVE_BLOCK);
        snprintf(in->format, sizeof in->format, "gzip");
        return in;
    }
    if (kind == KIND_PLAIN) {
        tp_err_set(err, "%s: not a tar or zip archive, so it has no member '%s'", archive_name, member);
        tp_input_close(in);
        return NULL;
    }
    if (open_archive(in, archive_name, member, err)) {
        tp_input_close(in);
        return NULL;
    }
    return in;
}

tp_input *tp_input_open(const char *path, tp_err *err) {
    if (!*path) {
        tp_err_set(err, "an empty file name");
        return NULL;
    }
    if (!strcmp(path, "-")) {
        tp_input *in = input_new("<stdin>");
        in->fd = STDIN_FILENO;
        return finish_open(in, in->name, NULL, err);
    }
    struct stat st;
    char *archive = NULL;
    const char *member = NULL;
    if (stat(path, &st) != 0) {
        int e = errno;
        // ARCHIVE/MEMBER: the first leading part of the path that is an existing non-directory.
        for (const char *slash = strchr(path + 1, '/'); slash && (e == ENOENT || e == ENOTDIR);
             slash = strchr(slash + 1, '/')) {
            char *prefix = strndup(path, (size_t)(slash - path));
            if (prefix && stat(prefix, &st) == 0 && !S_ISDIR(st.st_mode)) {
                archive = prefix;
                member = slash + 1;
                break;
            }
            free(prefix);
        }
        if (!archive) {
            tp_err_set(err, "%s: %s", path, strerror(e));
            return NULL;
        }
    } else if (S_ISDIR(st.st_mode)) {
        tp_err_set(err, "%s: is a directory", path);
        return NULL;
    }
    const char *file = archive ? archive : path;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tp_err_set(err, "%s: %s", file, strerror(errno));
        free(archive);
        return NULL;
    }
    tp_input *in = input_new(path);
    in->fd = fd;
    in->own_fd = true;
    tp_input *r = finish_open(in, file, member, err);
    free(archive);
    return r;
}

tp_input *tp_input_open_mem(const void *data, size_t len, const char *name, const char *member, tp_err *err) {
    tp_input *in = input_new(name);
    in->mem = data;
    in->mem_len = len;
    return finish_open(in, name, member, err);
}

ssize_t tp_input_read(tp_input *in, void *buf, size_t cap, tp_err *err) {
    ssize_t n;
    if (in->has_pending_error) {
        *err = in->pending_error;
        return -1;
    }
    if (in->zstd || in->gzip) {
        n = in->zstd ? zstd_read(in, buf, cap, err) : gzip_read(in, buf, cap, err);
        if (n < 0) return -1;
    } else if (in->archive_empty) {
        n = 0;
    } else if (in->ar) {
        n = archive_read_data(in->ar, buf, cap);
        if (n < 0) {
            tp_err_set(err, "%s: corrupt or truncated %s data after %llu bytes: %s", in->name, in->format,
                       (unsigned long long)in->offset, archive_error_string(in->ar));
            return -1;
        }
    } else {
        n = source_read(in, buf, cap);
        if (n < 0) {
            tp_err_set(err, "%s: read failed: %s", in->name, strerror(errno));
            return -1;
        }
    }
    in->offset += (uint64_t)n;
    return n;
}

ssize_t tp_input_read_full(tp_input *in, void *buf, size_t n, tp_err *err) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = tp_input_read(in, (char *)buf + got, n - got, err);
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

const char *tp_input_name(const tp_input *in) { return in->name; }
uint64_t tp_input_offset(const tp_input *in) { return in->offset; }
const char *tp_input_format(const tp_input *in) { return in->format; }

void tp_input_close(tp_input *in) {
    if (!in) return;
    if (in->ar) archive_read_free(in->ar);
    ZSTD_freeDCtx(in->zstd);
    free(in->zstd_in);
    if (in->gzip) inflateEnd(in->gzip);
    free(in->gzip);
    free(in->gzip_in);
    if (in->own_fd && in->fd >= 0) close(in->fd);
    free(in->ar_block);
    free(in->name);
    free(in);
}

int tp_input_read_all(const char *path, tp_buf *out, tp_err *err) {
    tp_input *in = tp_input_open(path, err);
    if (!in) return -1;
    for (;;) {
        tp_buf_reserve(out, 1 << 20);
        ssize_t got = tp_input_read(in, out->data + out->len, out->cap - out->len, err);
        if (got < 0) {
            tp_input_close(in);
            return -1;
        }
        if (got == 0) break;
        out->len += (size_t)got;
    }
    tp_input_close(in);
    return 0;
}
