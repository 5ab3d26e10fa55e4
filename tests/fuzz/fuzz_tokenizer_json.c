// libFuzzer target: loading tokenizer.json. Any input is refused with a message or
// loads into a tokenizer that then encodes and decodes a fixed text without crashing.
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size > (1 << 20)) return 0;
    tp_err err;
    tp_tokenizer *t = tp_tokenizer_from_json((const char *)data, size, "fuzz.json", jv_null(), &err);
    if (!t) {
        if (!err.msg[0]) abort();  // a refusal always says why
        return 0;
    }
    tp_tok_state *st = tp_tok_state_new(t);
    static const char text[] = "Hello world! 123 数学 'll  \n\n x <|im_start|> é";
    tp_ids ids = {0};
    if (tp_tokenizer_encode(t, st, text, sizeof text - 1, true, &ids, &err) == 0) {
        tp_buf out = {0};
        tp_tokenizer_decode(t, ids.ids, ids.count, false, &out, &err);
        tp_buf_free(&out);
    }
    tp_ids_free(&ids);
    tp_tok_state_free(st);
    tp_tokenizer_free(t);
    return 0;
}
