#include "jqprog.h"
#include "buf.h"
#include "json.h"

#include <jq.h>
#include <stdlib.h>
#include <string.h>

struct tp_jq {
    jq_state *jq;
    char *program;
    tp_buf messages;  // compile errors collected by the callback
};

static void collect_message(void *ctx, jv msg) {
    tp_buf *b = ctx;
    if (b->len) tp_buf_puts(b, "; ");
    if (jv_get_kind(msg) == JV_KIND_STRING) tp_buf_puts(b, jv_string_value(msg));
    else tp_json_dump(b, msg);
    jv_free(msg);
}

tp_jq *tp_jq_compile(const char *program, jv named_args, tp_err *err) {
    tp_jq *q = tp_xcalloc(1, sizeof *q);
    q->jq = jq_init();
    if (!q->jq) tp_die("out of memory starting jq");
    q->program = tp_xstrdup(program);
    jq_set_error_cb(q->jq, collect_message, &q->messages);
    if (jv_get_kind(named_args) != JV_KIND_OBJECT) {
        jv_free(named_args);
        named_args = jv_object();
    }
    if (!jq_compile_args(q->jq, program, named_args)) {
        tp_buf_putc(&q->messages, 0);
        tp_err_set(err, "jq program '%s': %s", program, q->messages.len > 1 ? q->messages.data : "does not compile");
        tp_jq_free(q);
        return NULL;
    }
    return q;
}

static void runtime_error(tp_jq *q, jv failure, tp_err *err) {
    jv msg = jv_invalid_get_msg(failure);
    tp_buf b = {0};
    if (jv_get_kind(msg) == JV_KIND_STRING) tp_buf_puts(&b, jv_string_value(msg));
    else tp_json_dump(&b, msg);
    tp_buf_putc(&b, 0);
    tp_err_set(err, "jq program '%s': %s", q->program, b.data);
    tp_buf_free(&b);
    jv_free(msg);
}

int tp_jq_run(tp_jq *q, jv input, jv *outputs, tp_err *err) {
    jq_start(q->jq, jv_copy(input), 0);
    jv all = jv_array();
    for (;;) {
        jv r = jq_next(q->jq);
        if (jv_is_valid(r)) {
            all = jv_array_append(all, r);
            continue;
        }
        if (jv_invalid_has_msg(jv_copy(r))) {
            runtime_error(q, r, err);
            jv_free(all);
            return -1;
        }
        jv_free(r);
        break;
    }
    *outputs = all;
    return 0;
}

int tp_jq_first(tp_jq *q, jv input, jv *out, bool *found, tp_err *err) {
    jq_start(q->jq, jv_copy(input), 0);
    jv r = jq_next(q->jq);
    *found = jv_is_valid(r);
    if (!*found) {
        if (jv_invalid_has_msg(jv_copy(r))) {
            runtime_error(q, r, err);
            return -1;
        }
        jv_free(r);
        r = jv_null();
    }
    *out = r;
    return 0;
}

int tp_jq_test(tp_jq *q, jv input, bool *result, tp_err *err) {
    jv out;
    bool found;
    if (tp_jq_first(q, input, &out, &found, err)) return -1;
    jv_kind k = jv_get_kind(out);
    *result = found && k != JV_KIND_NULL && k != JV_KIND_FALSE;
    jv_free(out);
    return 0;
}

void tp_jq_free(tp_jq *q) {
    if (!q) return;
    jq_teardown(&q->jq);
    tp_buf_free(&q->messages);
    free(q->program);
    free(q);
}
