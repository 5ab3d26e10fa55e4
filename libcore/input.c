#include "input.h"

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
    // Set when the bytes are decompressed or extracted by libarchive.
    struct archive *ar;
    uint8_t *ar_block;
    uint64_t offset;
};

typedef enum { KIND_PLAIN, KIND_COMPRESSED, KIND_ZIP, KIND_TAR } source_kind;

static source_kind sniff(const uint8_t *p, size_t n) {
    static const struct { const char *magic; size_t len; source_kind kind; } magics[] = {
        {"\x1f\x8b", 2, KIND_COMPRESSED},                 // gzip
        {"\xfd" "7zXZ\x00", 6, KIND_COMPRESSED},          // xz
        {"BZh", 3, KIND_COMPRESSED},                      // bzip2
        {"\x28\xb5\x2f\xfd", 4, KIND_COMPRESSED},         // zstd
        {"\x04\x22\x4d\x18", 4, KIND_COMPRESSED},         // lz4
        {"PK\x03\x04", 4, KIND_ZIP},
        {"PK\x05\x06", 4, KIND_ZIP},                      // empty zip
    };
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (n >= magics[i].len && !memcmp(p, magics[i].magic, magics[i].len)) return magics[i].kind;
    if (n >= 262 && !memcmp(p + 257, "ustar", 5)) return KIND_TAR;
    return KIND_PLAIN;
}

// Reads raw (not yet decompressed) bytes: the sniffed bytes first, then the source.
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
    for (;;) {
        ssize_t n = read(in->fd, buf, cap);
        if (n >= 0 || errno != EINTR) return n;
    }
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

static int open_archive(tp_input *in, const char *archive_name, const char *member, tp_err *err) {
    in->ar_block = tp_xmalloc(ARCHIVE_BLOCK);
    in->ar = archive_read_new();
    archive_read_support_filter_all(in->ar);
    archive_read_support_format_tar(in->ar);
    archive_read_support_format_zip(in->ar);
    archive_read_support_format_raw(in->ar);  // lowest bid: a compressed plain file
    if (archive_read_open(in->ar, in, NULL, archive_read_cb, NULL) != ARCHIVE_OK) {
        tp_err_set(err, "%s: %s", archive_name, archive_error_string(in->ar));
        return -1;
    }
    struct archive_entry *entry;
    bool first = true;
    for (;;) {
        int r = archive_read_next_header(in->ar, &entry);
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
        if (strcmp(path, strip_dot_slash(member)) != 0) continue;
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
        while (in->peek_len < SNIFF_BYTES) {
            ssize_t n = source_read(in, in->peek + in->peek_len, SNIFF_BYTES - in->peek_len);
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
    if (in->ar) {
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
    if (in->own_fd && in->fd >= 0) close(in->fd);
    free(in->ar_block);
    free(in->name);
    free(in);
}
