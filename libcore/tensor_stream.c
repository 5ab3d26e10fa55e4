#include "tensor_stream.h"
#include "buf.h"
#include "fileio.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

enum { READ_BUF = 1 << 20, WRITE_BUF = 1 << 20 };
#define MAX_RECORD_DATA ((uint64_t)1 << 40)

const tp_tensor *tp_record_find(const tp_record *rec, const char *name) {
    return tp_st_header_find(&rec->header, name);
}

struct tp_stream_reader {
    tp_input *in;
    uint8_t *buf;  // read-ahead: buf[pos..len) not yet consumed
    size_t pos, len;
    uint64_t offset;  // stream offset of buf[pos]
    tp_record rec;
    char *header;
    size_t header_cap;
    uint8_t *data;
    size_t data_cap;
    jv metadata;
    uint64_t next_index;
};

tp_stream_reader *tp_stream_from_input(tp_input *in) {
    tp_stream_reader *r = tp_xcalloc(1, sizeof *r);
    r->in = in;
    r->buf = tp_xmalloc(READ_BUF);
    r->metadata = jv_null();
    r->rec.header.metadata = jv_null();
    return r;
}

tp_stream_reader *tp_stream_open(const char *path, tp_err *err) {
    tp_input *in = tp_input_open(path, err);
    return in ? tp_stream_from_input(in) : NULL;
}

// Copies up to n bytes to dst from the read-ahead buffer, refilling it; large
// reads go straight to the destination. Returns bytes copied (< n only at the end).
static ssize_t read_bytes(tp_stream_reader *r, void *dst, size_t n, tp_err *err) {
    size_t got = 0;
    while (got < n) {
        if (r->pos == r->len) {
            if (n - got >= READ_BUF) {
                ssize_t k = tp_input_read_full(r->in, (char *)dst + got, n - got, err);
                if (k < 0) return -1;
                got += (size_t)k;
                r->offset += (uint64_t)k;
                return (ssize_t)got;
            }
            ssize_t k = tp_input_read(r->in, r->buf, READ_BUF, err);
            if (k < 0) return -1;
            if (k == 0) break;
            r->pos = 0;
            r->len = (size_t)k;
        }
        size_t take = r->len - r->pos < n - got ? r->len - r->pos : n - got;
        memcpy((char *)dst + got, r->buf + r->pos, take);
        r->pos += take;
        got += take;
        r->offset += take;
    }
    return (ssize_t)got;
}


// A hint for the common mistake of feeding JSONL or text where a stream is expected.
static const char *looks_like_text(const uint8_t *b) {
    if (b[0] == '{' || b[0] == '[') return " (this looks like JSON text, not a tensor stream)";
    for (int i = 0; i < 8; i++)
        if (!isprint(b[i]) && !isspace(b[i])) return "";
    return " (this looks like text, not a tensor stream)";
}

int tp_stream_next(tp_stream_reader *r, const tp_record **out, tp_err *err) {
    tp_record *rec = &r->rec;
    uint64_t index = r->next_index;
    tp_st_header_free(&rec->header);
    rec->size = 0;
    const char *name = tp_input_name(r->in);
    uint64_t at = r->offset;
    uint8_t lenb[8];
    ssize_t n = read_bytes(r, lenb, 8, err);
    if (n <= 0) return (int)n;
    if (n < 8) {
        tp_err_set(err, "%s: record %llu at byte offset %llu: truncated: %zd of the 8 header-length bytes", name,
                   (unsigned long long)index, (unsigned long long)at, n);
        return -1;
    }
    uint64_t header_len = tp_st_read_header_len(lenb);
    if (header_len < 2 || header_len > TP_ST_MAX_HEADER) {
        tp_err_set(err, "%s: record %llu at byte offset %llu: header length %llu is out of range [2, %llu]%s", name,
                   (unsigned long long)index, (unsigned long long)at, (unsigned long long)header_len,
                   (unsigned long long)TP_ST_MAX_HEADER, index == 0 ? looks_like_text(lenb) : "");
        return -1;
    }
    if (header_len > r->header_cap) {
        r->header_cap = header_len;
        r->header = tp_xrealloc(r->header, header_len);
    }
    n = read_bytes(r, r->header, header_len, err);
    if (n < 0) return -1;
    if ((uint64_t)n < header_len) {
        tp_err_set(err, "%s: record %llu at byte offset %llu: truncated header: %zd of %llu bytes", name,
                   (unsigned long long)index, (unsigned long long)at, n, (unsigned long long)header_len);
        return -1;
    }
    if (tp_st_header_parse(r->header, header_len, &rec->header, err)) {
        tp_err_prefix(err, "%s: record %llu at byte offset %llu", name, (unsigned long long)index,
                      (unsigned long long)at);
        return -1;
    }
    uint64_t data_len = rec->header.data_len;
    if (data_len > MAX_RECORD_DATA) {
        tp_err_set(err, "%s: record %llu at byte offset %llu: %llu bytes of data is implausibly large", name,
                   (unsigned long long)index, (unsigned long long)at, (unsigned long long)data_len);
        return -1;
    }
    // Grow with the bytes that actually arrive, so a corrupt length cannot make us
    // allocate terabytes before finding out the stream is short.
    uint64_t got = 0;
    while (got < data_len) {
        if (r->data_cap < data_len && got == r->data_cap) {
            size_t cap = r->data_cap ? r->data_cap * 2 : 1 << 16;
            if (cap > data_len) cap = (size_t)data_len;
            r->data = tp_xrealloc(r->data, cap);
            r->data_cap = cap;
        }
        size_t want = (size_t)((data_len < r->data_cap ? data_len : r->data_cap) - got);
        n = read_bytes(r, r->data + got, want, err);
        if (n < 0) return -1;
        got += (uint64_t)n;
        if ((size_t)n < want) {
            tp_err_set(err, "%s: record %llu at byte offset %llu: truncated data: %llu of %llu bytes", name,
                       (unsigned long long)index, (unsigned long long)at, (unsigned long long)got,
                       (unsigned long long)data_len);
            return -1;
        }
    }
    for (int i = 0; i < rec->header.count; i++) rec->header.tensors[i].data = r->data + rec->header.tensors[i].begin;
    rec->index = index;
    r->next_index = index + 1;
    rec->offset = at;
    rec->size = 8 + header_len + data_len;
    if (index == 0) {
        jv_free(r->metadata);
        r->metadata = jv_copy(rec->header.metadata);
    }
    *out = rec;
    return 1;
}

jv tp_stream_metadata(const tp_stream_reader *r) { return r->metadata; }
const char *tp_stream_name(const tp_stream_reader *r) { return tp_input_name(r->in); }

void tp_stream_close(tp_stream_reader *r) {
    if (!r) return;
    tp_st_header_free(&r->rec.header);
    jv_free(r->rec.header.metadata);
    jv_free(r->metadata);
    tp_input_close(r->in);
    free(r->buf);
    free(r->header);
    free(r->data);
    free(r);
}

struct tp_stream_writer {
    int fd;
    bool own_fd;
    char *name;
    ZSTD_CCtx *zstd;
    tp_buf out;     // whole records (plain) or compressed bytes (zstd) waiting for write(2)
    tp_buf header;
    uint64_t records, bytes;
    bool failed;
};

tp_stream_writer *tp_stream_writer_fd(int fd, const char *name, int zstd_level, tp_err *err) {
    if (zstd_level < 0 || zstd_level > ZSTD_maxCLevel()) {
        tp_err_set(err, "%s: zstd level %d is out of range [0, %d]", name, zstd_level, ZSTD_maxCLevel());
        return NULL;
    }
    tp_stream_writer *w = tp_xcalloc(1, sizeof *w);
    w->fd = fd;
    w->name = tp_xstrdup(name);
    tp_buf_reserve(&w->out, WRITE_BUF + ZSTD_CStreamOutSize());
    if (zstd_level > 0) {
        w->zstd = ZSTD_createCCtx();
        if (!w->zstd) tp_die("out of memory creating a zstd context");
        ZSTD_CCtx_setParameter(w->zstd, ZSTD_c_compressionLevel, zstd_level);
        ZSTD_CCtx_setParameter(w->zstd, ZSTD_c_checksumFlag, 1);
    }
    return w;
}

tp_stream_writer *tp_stream_writer_open(const char *path, int zstd_level, tp_err *err) {
    int fd = tp_output_open(path, false, err);
    if (fd < 0) return NULL;
    tp_stream_writer *w = tp_stream_writer_fd(fd, strcmp(path, "-") ? path : "<stdout>", zstd_level, err);
    if (!w) {
        if (fd != STDOUT_FILENO) close(fd);
        return NULL;
    }
    w->own_fd = fd != STDOUT_FILENO;
    return w;
}

static int drain(tp_stream_writer *w, tp_err *err) {
    if (!w->out.len) return 0;
    int rc = tp_write_all(w->fd, w->out.data, w->out.len, w->name, err);
    w->out.len = 0;
    if (rc) w->failed = true;
    return rc;
}

static int compress(tp_stream_writer *w, const void *p, size_t n, ZSTD_EndDirective mode, tp_err *err) {
    ZSTD_inBuffer in = {p, n, 0};
    for (;;) {
        if (w->out.cap - w->out.len < ZSTD_CStreamOutSize() && drain(w, err)) return -1;
        ZSTD_outBuffer zout = {w->out.data + w->out.len, w->out.cap - w->out.len, 0};
        size_t left = ZSTD_compressStream2(w->zstd, &zout, &in, mode);
        if (ZSTD_isError(left)) {
            tp_err_set(err, "%s: zstd: %s", w->name, ZSTD_getErrorName(left));
            w->failed = true;
            return -1;
        }
        w->out.len += zout.pos;
        if (mode == ZSTD_e_continue ? in.pos == in.size : left == 0) return 0;
    }
}

int tp_stream_write(tp_stream_writer *w, const tp_tensor_ref *tensors, int count, jv metadata, tp_err *err) {
    if (w->failed) {
        tp_err_set(err, "%s: an earlier write failed", w->name);
        return -1;
    }
    w->header.len = 0;
    uint64_t data_len;
    if (tp_st_header_build(&w->header, tensors, count, metadata, &data_len, err)) {
        tp_err_prefix(err, "%s: record %llu", w->name, (unsigned long long)w->records);
        return -1;
    }
    if (w->zstd) {
        if (compress(w, w->header.data, w->header.len, ZSTD_e_continue, err)) return -1;
        for (int i = 0; i < count; i++) {
            uint64_t numel, nbytes;
            tp_numel(tensors[i].shape, tensors[i].ndim, tensors[i].dtype, &numel, &nbytes);
            if (compress(w, tensors[i].data, nbytes, ZSTD_e_continue, err)) return -1;
        }
    } else if (w->out.len + w->header.len + data_len <= WRITE_BUF) {
        // Whole records collect in the buffer; a write(2) never carries part of one.
        tp_buf_append(&w->out, w->header.data, w->header.len);
        for (int i = 0; i < count; i++) {
            uint64_t numel, nbytes;
            tp_numel(tensors[i].shape, tensors[i].ndim, tensors[i].dtype, &numel, &nbytes);
            tp_buf_append(&w->out, tensors[i].data, nbytes);
        }
    } else {
        if (drain(w, err)) return -1;
        struct iovec *iov = tp_xmalloc(sizeof *iov * (size_t)(count + 1));
        iov[0] = (struct iovec){w->header.data, w->header.len};
        for (int i = 0; i < count; i++) {
            uint64_t numel, nbytes;
            tp_numel(tensors[i].shape, tensors[i].ndim, tensors[i].dtype, &numel, &nbytes);
            iov[i + 1] = (struct iovec){(void *)tensors[i].data, nbytes};
        }
        int rc = tp_writev_all(w->fd, iov, count + 1, w->name, err);
        free(iov);
        if (rc) {
            w->failed = true;
            return -1;
        }
    }
    w->records++;
    w->bytes += w->header.len + data_len;
    return 0;
}

int tp_stream_writer_flush(tp_stream_writer *w, tp_err *err) {
    if (w->failed) {
        tp_err_set(err, "%s: an earlier write failed", w->name);
        return -1;
    }
    if (w->zstd && compress(w, NULL, 0, ZSTD_e_flush, err)) return -1;
    return drain(w, err);
}

int tp_stream_writer_close(tp_stream_writer *w, tp_err *err) {
    if (!w) return 0;
    int rc = 0;
    if (w->failed) {
        tp_err_set(err, "%s: an earlier write failed", w->name);
        rc = -1;
    }
    if (!rc && w->zstd) rc = compress(w, NULL, 0, ZSTD_e_end, err);
    if (!rc) rc = drain(w, err);
    if (w->own_fd && close(w->fd) && !rc) {
        tp_err_set(err, "%s: close failed", w->name);
        rc = -1;
    }
    ZSTD_freeCCtx(w->zstd);
    tp_buf_free(&w->out);
    tp_buf_free(&w->header);
    free(w->name);
    free(w);
    return rc;
}

uint64_t tp_stream_writer_records(const tp_stream_writer *w) { return w->records; }
uint64_t tp_stream_writer_bytes(const tp_stream_writer *w) { return w->bytes; }
