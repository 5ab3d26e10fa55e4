// libFuzzer target, differential: our JSON parser against libjq's. Whatever we
// accept, jq must accept as the same value; jq may accept a little more (it is
// lenient: nan, leading zeros, ...), which is fine.
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size > (1 << 20)) return 0;
    jv ours;
    tp_err err;
    int rc = tp_json_parse((const char *)data, size, &ours, &err);
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;  // jq quotes its input with %s in error messages
    jv ref = jv_parse_sized(text, (int)size);
    if (rc == 0) {
        if (!jv_is_valid(ref)) {
            jv msg = jv_invalid_get_msg(ref);
            const char *m = jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "";
            if (!strstr(m, "depth")) {  // jq 1.6 stops at 256 levels, we at 1000
                fprintf(stderr, "we accept, jq rejects: %s\n", m);
                abort();
            }
            jv_free(msg);
        } else if (!jv_equal(jv_copy(ours), jv_copy(ref))) {
            jv a = jv_dump_string(jv_copy(ours), 0), b = jv_dump_string(jv_copy(ref), 0);
            fprintf(stderr, "values differ:\n ours %s\n jq   %s\n", jv_string_value(a), jv_string_value(b));
            abort();
        } else {
            jv_free(ref);
        }
        jv_free(ours);
    } else {
        jv_free(ref);
    }
    free(text);
    return 0;
}
