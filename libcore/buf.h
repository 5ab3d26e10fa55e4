// buf.h — a growable byte buffer, for building output lines and headers.
#ifndef TP_BUF_H
#define TP_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct tp_buf {
    char *data;
    size_t len, cap;
} tp_buf;

void tp_buf_reserve(tp_buf *b, size_t extra);  // room for `extra` more bytes
void tp_buf_append(tp_buf *b, const void *p, size_t n);
void tp_buf_puts(tp_buf *b, const char *s);
void tp_buf_putc(tp_buf *b, char c);
void tp_buf_printf(tp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tp_buf_free(tp_buf *b);

#endif
