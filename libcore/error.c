#include "error.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/mman.h>

static const char *program_name = "thinkpipe";

void tp_err_set(tp_err *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

void tp_err_prefix(tp_err *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    char joined[sizeof prefix + sizeof old + 2];
    snprintf(joined, sizeof joined, "%s: %s", prefix, old);
    snprintf(err->msg, sizeof err->msg, "%.*s", (int)sizeof err->msg - 1, joined);
}

void tp_set_program(const char *argv0) {
    if (!argv0 || !*argv0) return;
    const char *slash = strrchr(argv0, '/');
    program_name = slash ? slash + 1 : argv0;
}

const char *tp_program(void) { return program_name; }

static void vreport(const char *kind, const char *fmt, va_list ap) {
    // One fprintf of a formatted buffer, so concurrent writers to stderr do not interleave mid-line.
    char line[2048];
    int n = snprintf(line, sizeof line, "%s: %s%s", program_name, kind, kind[0] ? ": " : "");
    if (n < 0 || (size_t)n >= sizeof line) n = 0;
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    fprintf(stderr, "%s\n", line);
}

void tp_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport("error", fmt, ap);
    va_end(ap);
    exit(TP_EXIT_RUNTIME);
}

void tp_die_err(const tp_err *err) { tp_die("%s", err->msg); }

void tp_die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport("error", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information.\n", program_name);
    exit(TP_EXIT_USAGE);
}

void tp_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport("warning", fmt, ap);
    va_end(ap);
}

void tp_info(const char *fmt, ...) {
    if (tp_cli.quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
}

static void *check_alloc(void *p, size_t n) {
    if (!p && n) tp_die("out of memory (asked for %zu bytes)", n);
    return p;
}

void *tp_xmalloc(size_t n) { return check_alloc(malloc(n ? n : 1), n); }
void *tp_xcalloc(size_t count, size_t size) { return check_alloc(calloc(count ? count : 1, size ? size : 1), count * size); }
void *tp_xrealloc(void *p, size_t n) { return check_alloc(realloc(p, n ? n : 1), n); }
char *tp_xstrdup(const char *s) { return check_alloc(strdup(s), strlen(s) + 1); }

void *tp_alloc_lines(size_t bytes) {
    void *p = NULL;
    // posix_memalign: aligned_alloc wants the size a multiple of the alignment
    return posix_memalign(&p, 64, bytes ? (bytes + 63) / 64 * 64 : 64) == 0 ? p : NULL;
}

// Blocks of TP_HUGE_PAGE bytes or more always come from their own mapping, returned to
// the system when freed: glibc otherwise raises its mmap threshold after the first such
// free and serves later big blocks from the heap, where the huge-page advice would
// outlive the block and reach ordinary allocations made there afterwards.
static void mmap_big_blocks(void) { mallopt(M_MMAP_THRESHOLD, TP_HUGE_PAGE); }

void *tp_alloc_big(size_t bytes) {
    if (bytes < TP_HUGE_PAGE) return tp_alloc_lines(bytes);
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, mmap_big_blocks);
    bytes = (bytes + 63) / 64 * 64;
    void *p = NULL;
    if (posix_memalign(&p, TP_HUGE_PAGE, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    // Advice only: where THP is off ("never") the block keeps its 4 KB pages.
    // TP_HUGE_PAGES=0 leaves every block to the system's default, for comparing.
    const char *env = getenv("TP_HUGE_PAGES");
    if (!(env && !strcmp(env, "0"))) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}
