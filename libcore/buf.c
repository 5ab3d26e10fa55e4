#include "buf.h"
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tp_buf_reserve(tp_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->data = tp_xrealloc(b->data, cap);
    b->cap = cap;
}

void tp_buf_append(tp_buf *b, const void *p, size_t n) {
    if (!n) return;  // p may be NULL then (an empty tensor), and memcpy must not see it
    tp_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void tp_buf_puts(tp_buf *b, const char *s) { tp_buf_append(b, s, strlen(s)); }

void tp_buf_putc(tp_buf *b, char c) {
    tp_buf_reserve(b, 1);
    b->data[b->len++] = c;
}

void tp_buf_printf(tp_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    tp_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void tp_buf_free(tp_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
