// libFuzzer target: the input layer (any compression) + JSONL reader + our JSON
// printer, checked against libjq's printer and by re-parsing what we print.
#include "json.h"
#include "jsonl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    tp_err err;
    tp_input *in = tp_input_open_mem(data, size, "fuzz", NULL, &err);
    if (!in) return 0;
    tp_jsonl_opts opts = {.skip_bad = size > 0 && (data[0] & 1), .allow_scalar = size > 1 && (data[1] & 1),
                          .max_warnings = -1};
    tp_jsonl_reader *r = tp_jsonl_from_input(in, &opts);
    jv v;
    tp_buf b = {0};
    while (tp_jsonl_next(r, &v, &err) > 0) {
        b.len = 0;
        tp_json_dump(&b, v);
        jv ref = jv_dump_string(jv_copy(v), 0);
        if ((size_t)jv_string_length_bytes(jv_copy(ref)) != b.len || memcmp(jv_string_value(ref), b.data, b.len)) {
            fprintf(stderr, "printer mismatch:\n ours %.*s\n jq   %s\n", (int)b.len, b.data, jv_string_value(ref));
            abort();
        }
        jv_free(ref);
        // Printing is a fixed point: what we print parses back to a value that prints the
        // same. (Not value equality: like jq, we print NaN as null and Inf as DBL_MAX.)
        tp_buf_putc(&b, 0);
        jv back = jv_parse(b.data);
        tp_buf again = {0};
        tp_json_dump(&again, back);
        if (again.len != b.len - 1 || memcmp(again.data, b.data, again.len)) {
            fprintf(stderr, "print(parse(print(v))) != print(v):\n %s\n %.*s\n", b.data, (int)again.len, again.data);
            abort();
        }
        tp_buf_free(&again);
        jv_free(back);
        jv_free(v);
    }
    tp_buf_free(&b);
    tp_jsonl_close(r);
    return 0;
}
