// error.h — how thinkpipe reports errors.
//
// Library functions never print or exit: they fill a tp_err with a message that
// already carries its location ("data.jsonl:17: ...") and return -1 or NULL.
// Programs turn that into "prog: error: data.jsonl:17: ..." on stderr and exit 1
// (runtime error) or 2 (usage error).
#ifndef TP_ERROR_H
#define TP_ERROR_H

#include <stdarg.h>
#include <stddef.h>

enum { TP_EXIT_OK = 0, TP_EXIT_RUNTIME = 1, TP_EXIT_USAGE = 2 };

typedef struct tp_err {
    char msg[1024];
} tp_err;

// Set the message (printf format). err may be NULL, then nothing happens.
void tp_err_set(tp_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prefix an existing message with a location: "LOC: old message".
void tp_err_prefix(tp_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// The program name used in messages: basename of argv[0].
void tp_set_program(const char *argv0);
const char *tp_program(void);

_Noreturn void tp_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void tp_die_err(const tp_err *err);
// Usage errors add a hint to run --help and exit 2.
_Noreturn void tp_die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tp_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Informational line on stderr ("prog: ..."), silenced by --quiet.
void tp_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// malloc/realloc/strdup that die with a clear message instead of returning NULL.
void *tp_xmalloc(size_t n);
void *tp_xcalloc(size_t count, size_t size);
void *tp_xrealloc(void *p, size_t n);
char *tp_xstrdup(const char *s);
// 64-byte-aligned memory for tensors, freed with free(); NULL when out of memory.
// tp_alloc_big: blocks of TP_HUGE_PAGE bytes or more start on such a boundary and ask the
// kernel for transparent huge pages, so streaming them (weights, activations, optimizer
// state) walks no page table every 4 KB. Not for memory that is reserved large and
// filled sparsely (KV caches: tp_alloc_lines), which huge pages would make resident whole.
enum { TP_HUGE_PAGE = 2 << 20 };
void *tp_alloc_big(size_t bytes);
void *tp_alloc_lines(size_t bytes);

#endif
