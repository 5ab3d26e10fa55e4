// sse.c — server-sent events (sse.h), after the WHATWG event-stream rules: a line is a
// field "name: value" (one optional space after the colon), a comment when it starts with
// ":", and a blank line dispatches the event gathered so far.
#include "sse.h"

#include <string.h>

static int end_of_line(tp_sse *p, tp_sse_event_fn *fn, void *ctx) {
    const char *s = p->line.data ? p->line.data : "";
    size_t n = p->line.len;
    p->line.len = 0;
    if (n == 0) {  // blank: dispatch
        if (!p->has_data) return 0;
        p->has_data = false;
        tp_buf_putc(&p->data, 0);
        p->data.len--;
        p->events++;
        int rc = fn(ctx, p->data.data, p->data.len);
        p->data.len = 0;
        return rc;
    }
    if (s[0] == ':') return 0;  // a comment: keep-alive
    const char *colon = memchr(s, ':', n);
    size_t name = colon ? (size_t)(colon - s) : n;
    if (name != 4 || memcmp(s, "data", 4)) return 0;  // event:, id:, retry: and others carry nothing we use
    size_t at = colon ? name + 1 : n;
    if (at < n && s[at] == ' ') at++;
    if (p->has_data) tp_buf_putc(&p->data, '\n');
    tp_buf_append(&p->data, s + at, n - at);
    p->has_data = true;
    return 0;
}

int tp_sse_feed(tp_sse *p, const char *bytes, size_t n, size_t max_line, tp_sse_event_fn *fn, void *ctx) {
    for (size_t i = 0; i < n;) {
        char c = bytes[i];
        if (c == '\n' && p->cr) {  // the "\n" of "\r\n": the line already ended
            p->cr = false;
            i++;
            continue;
        }
        p->cr = c == '\r';
        if (c == '\n' || c == '\r') {
            int rc = end_of_line(p, fn, ctx);
            if (rc) return rc;
            i++;
            continue;
        }
        // the rest of this line in one piece
        size_t j = i;
        while (j < n && bytes[j] != '\n' && bytes[j] != '\r') j++;
        tp_buf_append(&p->line, bytes + i, j - i);
        if (max_line && p->line.len > max_line) return -1;
        i = j;
    }
    return 0;
}

void tp_sse_free(tp_sse *p) {
    tp_buf_free(&p->line);
    tp_buf_free(&p->data);
    memset(p, 0, sizeof *p);
}
