#include "jsonl.h"
#include "fileio.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { READ_CHUNK = 1 << 18 };
#define MAX_LINE_BYTES ((size_t)1 << 31)  // jv strings take an int length

struct tp_jsonl_reader {
    tp_input *in;
    tp_jsonl_opts opts;
    char *buf;          // buf[start..len) holds bytes not yet consumed
    size_t start, len, cap;
    uint64_t buf_offset;  // input offset of buf[0]
    bool eof;
    uint64_t line_no, record_line, record_offset, skipped;
    const char *text;
    size_t text_len;
};

tp_jsonl_reader *tp_jsonl_from_input(tp_input *in, const tp_jsonl_opts *opts) {
    tp_jsonl_reader *r = tp_xcalloc(1, sizeof *r);
    r->in = in;
    if (opts) r->opts = *opts;
    if (!r->opts.max_warnings) r->opts.max_warnings = 10;
    r->cap = READ_CHUNK * 2;
    r->buf = tp_xmalloc(r->cap);
    return r;
}

tp_jsonl_reader *tp_jsonl_open(const char *path, const tp_jsonl_opts *opts, tp_err *err) {
    tp_input *in = tp_input_open(path, err);
    return in ? tp_jsonl_from_input(in, opts) : NULL;
}

// Makes room and reads more bytes; returns bytes read, 0 at end, -1 on error.
static ssize_t fill(tp_jsonl_reader *r, tp_err *err) {
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->len - r->start);
        r->buf_offset += r->start;
        r->len -= r->start;
        r->start = 0;
    }
    if (r->cap - r->len < READ_CHUNK) {
        if (r->cap >= MAX_LINE_BYTES) {
            tp_err_set(err, "%s:%llu: line longer than %zu bytes", tp_input_name(r->in),
                       (unsigned long long)r->line_no + 1, MAX_LINE_BYTES);
            return -1;
        }
        r->cap *= 2;
        r->buf = tp_xrealloc(r->buf, r->cap);
    }
    ssize_t n = tp_input_read(r->in, r->buf + r->len, r->cap - r->len, err);
    if (n > 0) r->len += (size_t)n;
    return n;
}

// Finds the next line; sets *line/*n (without the line end). 1 found, 0 end, -1 error.
static int next_line(tp_jsonl_reader *r, char **line, size_t *n, tp_err *err) {
    size_t scanned = r->start;
    for (;;) {
        char *nl = memchr(r->buf + scanned, '\n', r->len - scanned);
        if (nl) {
            *line = r->buf + r->start;
            *n = (size_t)(nl - *line);
            r->start = (size_t)(nl - r->buf) + 1;
            break;
        }
        if (r->eof) {
            if (r->start == r->len) return 0;
            *line = r->buf + r->start;  // last line without a newline
            *n = r->len - r->start;
            r->start = r->len;
            break;
        }
        size_t pending = r->len - r->start;
        ssize_t got = fill(r, err);
        if (got < 0) return -1;
        if (got == 0) r->eof = true;
        scanned = pending;  // fill() moved the pending bytes to the front
    }
    r->line_no++;
    r->record_offset = r->buf_offset + (uint64_t)(*line - r->buf);
    if (*n && (*line)[*n - 1] == '\r') (*n)--;
    if (r->line_no == 1 && *n >= 3 && !memcmp(*line, "\xEF\xBB\xBF", 3)) {
        *line += 3;
        *n -= 3;
    }
    return 1;
}

static bool is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
    return true;
}

static const char *kind_name(jv_kind k) {
    switch (k) {
    case JV_KIND_ARRAY: return "an array";
    case JV_KIND_STRING: return "a string";
    case JV_KIND_NUMBER: return "a number";
    case JV_KIND_NULL: return "null";
    default: return "a boolean";
    }
}

int tp_jsonl_parse_record(const char *name, uint64_t line_no, const char *line, size_t n, bool allow_scalar, jv *out,
                          tp_err *err) {
    jv v = jv_invalid();
    if (tp_json_parse(line, n, &v, err)) {
        tp_err_prefix(err, "%s:%llu: invalid JSON", name, (unsigned long long)line_no);
        return -1;
    }
    if (!allow_scalar && jv_get_kind(v) != JV_KIND_OBJECT) {
        tp_err_set(err, "%s:%llu: expected a JSON object, got %s", name, (unsigned long long)line_no,
                   kind_name(jv_get_kind(v)));
        jv_free(v);
        return -1;
    }
    *out = v;
    return 0;
}

int tp_jsonl_next_line(tp_jsonl_reader *r, const char **line, size_t *len, tp_err *err) {
    for (;;) {
        char *s;
        size_t n;
        int got = next_line(r, &s, &n, err);
        if (got <= 0) return got;
        if (is_blank(s, n)) continue;
        r->record_line = r->line_no;
        r->text = s;
        r->text_len = n;
        *line = s;
        *len = n;
        return 1;
    }
}

int tp_jsonl_next(tp_jsonl_reader *r, jv *out, tp_err *err) {
    for (;;) {
        const char *line;
        size_t n;
        int got = tp_jsonl_next_line(r, &line, &n, err);
        if (got <= 0) return got;
        tp_err bad = {{0}};
        if (tp_jsonl_parse_record(tp_input_name(r->in), r->line_no, line, n, r->opts.allow_scalar, out, &bad) == 0)
            return 1;
        if (!r->opts.skip_bad) {
            *err = bad;
            return -1;
        }
        if (r->opts.max_warnings > 0 && r->skipped < (uint64_t)r->opts.max_warnings) tp_warn("skipping %s", bad.msg);
        r->skipped++;
    }
}

uint64_t tp_jsonl_line(const tp_jsonl_reader *r) { return r->record_line; }
uint64_t tp_jsonl_offset(const tp_jsonl_reader *r) { return r->record_offset; }
uint64_t tp_jsonl_skipped(const tp_jsonl_reader *r) { return r->skipped; }
const char *tp_jsonl_name(const tp_jsonl_reader *r) { return tp_input_name(r->in); }

const char *tp_jsonl_text(const tp_jsonl_reader *r, size_t *len) {
    *len = r->text_len;
    return r->text;
}

void tp_jsonl_close(tp_jsonl_reader *r) {
    if (!r) return;
    if (r->skipped && r->opts.max_warnings >= 0)
        tp_warn("%s: skipped %llu malformed line%s", tp_input_name(r->in), (unsigned long long)r->skipped,
                r->skipped == 1 ? "" : "s");
    tp_input_close(r->in);
    free(r->buf);
    free(r);
}

struct tp_jsonl_writer {
    int fd;
    bool own_fd;
    char *name;
    tp_buf line;
};

tp_jsonl_writer *tp_jsonl_writer_fd(int fd, const char *name) {
    tp_jsonl_writer *w = tp_xcalloc(1, sizeof *w);
    w->fd = fd;
    w->name = tp_xstrdup(name);
    return w;
}

tp_jsonl_writer *tp_jsonl_writer_open(const char *path, bool append, tp_err *err) {
    int fd = tp_output_open(path, append, err);
    if (fd < 0) return NULL;
    tp_jsonl_writer *w = tp_jsonl_writer_fd(fd, strcmp(path, "-") ? path : "<stdout>");
    w->own_fd = fd != STDOUT_FILENO;
    return w;
}

int tp_jsonl_write(tp_jsonl_writer *w, jv value, tp_err *err) {
    w->line.len = 0;
    tp_json_dump(&w->line, value);
    tp_buf_putc(&w->line, '\n');
    return tp_write_all(w->fd, w->line.data, w->line.len, w->name, err);
}

int tp_jsonl_write_text(tp_jsonl_writer *w, const char *text, size_t len, tp_err *err) {
    w->line.len = 0;
    tp_buf_append(&w->line, text, len);
    tp_buf_putc(&w->line, '\n');
    return tp_write_all(w->fd, w->line.data, w->line.len, w->name, err);
}

int tp_jsonl_writer_close(tp_jsonl_writer *w, tp_err *err) {
    if (!w) return 0;
    int rc = 0;
    if (w->own_fd && close(w->fd)) {
        tp_err_set(err, "%s: close failed", w->name);
        rc = -1;
    }
    tp_buf_free(&w->line);
    free(w->name);
    free(w);
    return rc;
}
