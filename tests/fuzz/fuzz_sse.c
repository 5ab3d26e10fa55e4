// libFuzzer target: server-sent events fed in random pieces into the chat-completion
// gatherer; the events must not depend on how the bytes were split.
#include "reply.h"
#include "sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    tp_reply r;
    tp_buf all;  // every event's data, NUL-separated
} sink;

static int on_event(void *ctx, const char *data, size_t len) {
    sink *s = ctx;
    tp_err err;
    tp_buf_append(&s->all, data, len);
    tp_buf_putc(&s->all, 0);
    tp_reply_chunk(&s->r, data, len, &err);
    return 0;
}

static void run(const unsigned char *data, size_t size, size_t step, sink *s) {
    tp_sse p = {0};
    tp_reply_init(&s->r);
    for (size_t i = 0; i < size; i += step)  // a line over the limit ends the stream
        if (tp_sse_feed(&p, (const char *)data + i, size - i < step ? size - i : step, 1 << 12, on_event, s)) break;
    tp_reply_end(&s->r);
    tp_sse_free(&p);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size == 0) return 0;
    size_t step = 1 + data[0] % 7;
    sink a = {0}, b = {0};
    run(data + 1, size - 1, size, &a);
    run(data + 1, size - 1, step, &b);
    if (a.all.len != b.all.len || (a.all.len && memcmp(a.all.data, b.all.data, a.all.len))) {
        fprintf(stderr, "events differ when the input is split in pieces of %zu\n", step);
        abort();
    }
    tp_reply_free(&a.r), tp_reply_free(&b.r);
    tp_buf_free(&a.all), tp_buf_free(&b.all);
    return 0;
}
