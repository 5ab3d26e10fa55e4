// progress.h — a one-line progress report on stderr.
//
// Shown only when stderr is a terminal, or with --progress; never with --quiet.
// Redrawn at most ten times a second, so calling update per record is cheap.
#ifndef TP_PROGRESS_H
#define TP_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct tp_progress {
    bool enabled;
    const char *label;  // "records", "tokens", ...
    uint64_t done, total;  // total 0: unknown
    double start, last_draw;
    FILE *out;
} tp_progress;

void tp_progress_start(tp_progress *p, const char *label, uint64_t total);
void tp_progress_update(tp_progress *p, uint64_t done);
void tp_progress_finish(tp_progress *p);  // final line with the rate, then a newline
// Formats the line that would be drawn (exposed for tests).
int tp_progress_format(const tp_progress *p, double now, char *out, size_t cap);
double tp_now(void);  // monotonic seconds

#endif
