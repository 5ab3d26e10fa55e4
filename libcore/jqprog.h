// jqprog.h — jq programs, compiled once and run on each record.
//
// Programs and user predicates (cot-filter --where, evaluate --group-by, ...) are
// plain jq, run by libjq, so anything a user tried with `jq` works the same here.
#ifndef TP_JQPROG_H
#define TP_JQPROG_H

#include <jv.h>
#include <stdbool.h>

#include "error.h"

typedef struct tp_jq tp_jq;

// named_args: an object whose entries become $name variables (consumed), or jv_null().
tp_jq *tp_jq_compile(const char *program, jv named_args, tp_err *err);
// All outputs of the program on input (borrowed), as a jv array in *outputs.
int tp_jq_run(tp_jq *q, jv input, jv *outputs, tp_err *err);
// The first output; sets *found to false (and *out to null) when there is none.
int tp_jq_first(tp_jq *q, jv input, jv *out, bool *found, tp_err *err);
// A predicate: true when the first output is neither false nor null (no output = false).
int tp_jq_test(tp_jq *q, jv input, bool *result, tp_err *err);
void tp_jq_free(tp_jq *q);

#endif
