// sse.h — an incremental parser of server-sent events (the text/event-stream of OpenAI's
// streaming APIs): bytes go in as they arrive, in pieces of any size; each complete event's
// data (its "data:" lines joined by "\n") comes out. Comment lines (": keep-alive") and
// blank keep-alive lines between events are skipped; "\n", "\r\n" and "\r" all end lines.
#ifndef TP_SSE_H
#define TP_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

typedef struct tp_sse {
    tp_buf line;     // the line being read
    tp_buf data;     // the event being read: its data lines so far
    bool has_data;   // a data: line was seen in this event
    bool cr;         // the last byte was "\r" (a following "\n" is the same line end)
    size_t events;   // events delivered
} tp_sse;

// Called with each event's data (NUL-terminated, len bytes). Returns 0 to go on, non-zero
// to stop: tp_sse_feed then returns that value.
typedef int tp_sse_event_fn(void *ctx, const char *data, size_t len);

// Feeds n bytes; returns 0, or the callback's non-zero value (the rest is not parsed).
// Lines longer than max_line bytes (0: no limit) are an error: -1.
int tp_sse_feed(tp_sse *p, const char *bytes, size_t n, size_t max_line, tp_sse_event_fn *fn, void *ctx);
void tp_sse_free(tp_sse *p);

#endif
