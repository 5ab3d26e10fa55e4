#include "progress.h"
#include "cli.h"
#include "error.h"

#include <time.h>
#include <unistd.h>

double tp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void tp_progress_start(tp_progress *p, const char *label, uint64_t total) {
    p->enabled = !tp_cli.quiet && (tp_cli.progress || isatty(STDERR_FILENO));
    p->label = label;
    p->done = 0;
    p->total = total;
    p->start = tp_now();
    p->last_draw = 0;
    p->out = stderr;
}

int tp_progress_format(const tp_progress *p, double now, char *out, size_t cap) {
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? (double)p->done / elapsed : 0;
    if (p->total) {
        double frac = (double)p->done / (double)p->total;
        if (frac > 1) frac = 1;
        char bar[21];
        int fill = (int)(frac * 20);
        for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
        bar[20] = 0;
        double eta = rate > 0 ? (double)(p->total - (p->done < p->total ? p->done : p->total)) / rate : 0;
        return snprintf(out, cap, "%s: [%s] %llu/%llu %s %5.1f%% %.0f/s eta %.0fs", tp_program(), bar,
                        (unsigned long long)p->done, (unsigned long long)p->total, p->label, 100 * frac, rate, eta);
    }
    return snprintf(out, cap, "%s: %llu %s %.0f/s %.1fs", tp_program(), (unsigned long long)p->done, p->label, rate,
                    elapsed);
}

static void draw(tp_progress *p, double now, const char *end) {
    char line[256];
    tp_progress_format(p, now, line, sizeof line);
    // \r and erase-to-end redraw the same terminal line.
    fprintf(p->out, "\r%s\033[K%s", line, end);
    fflush(p->out);
    p->last_draw = now;
}

void tp_progress_update(tp_progress *p, uint64_t done) {
    p->done = done;
    if (!p->enabled) return;
    double now = tp_now();
    if (now - p->last_draw >= 0.1) draw(p, now, "");
}

void tp_progress_finish(tp_progress *p) {
    if (p->enabled) draw(p, tp_now(), "\n");
}
