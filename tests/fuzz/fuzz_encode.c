// libFuzzer target, differential: encoding arbitrary text with the Qwen3 and
// DeepSeek-V3 tokenizers through the hand-written pre-tokenizers must give exactly
// the ids of the Oniguruma path; invalid UTF-8 must be refused; decode must give
// the text back (NFC-normalised for Qwen).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "unicode.h"

static tp_tokenizer *tok[2];
static tp_tok_state *state[2];

static void init(void) {
    const char *names[2] = {"tests/fixtures/tokenizer/qwen3", "tests/fixtures/tokenizer/deepseek-v3"};
    for (int i = 0; i < 2; i++) {
        tp_err err;
        tok[i] = tp_tokenizer_load(names[i], &err);
        if (!tok[i]) {
            fprintf(stderr, "%s (run from the repository root)\n", err.msg);
            exit(1);
        }
        state[i] = tp_tok_state_new(tok[i]);
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (!tok[0]) init();
    const char *text = (const char *)data;
    bool valid = tp_utf8_valid(text, size, NULL);
    for (int i = 0; i < 2; i++) {
        tp_ids fast = {0}, slow = {0};
        tp_err err;
        tp_tokenizer_force_regex_engine(tok[i], false);
        int a = tp_tokenizer_encode(tok[i], state[i], text, size, false, &fast, &err);
        if ((a == 0) != valid) abort();
        if (valid) {
            tp_tokenizer_force_regex_engine(tok[i], true);
            if (tp_tokenizer_encode(tok[i], state[i], text, size, false, &slow, &err) != 0) abort();
            if (fast.count != slow.count || (fast.count && memcmp(fast.ids, slow.ids, fast.count * sizeof *fast.ids) != 0)) {
                fprintf(stderr, "tokenizer %d: fast pre-tokenizer and Oniguruma differ\n", i);
                abort();
            }
            tp_buf back = {0}, want = {0};
            if (tp_tokenizer_decode(tok[i], fast.ids, fast.count, false, &back, &err) != 0) abort();
            tp_tokenizer_normalize(tok[i], text, size, &want, &err);
            if (back.len != want.len || (back.len && memcmp(back.data, want.data, back.len) != 0)) {
                fprintf(stderr, "tokenizer %d: decode(encode(x)) != x\n", i);
                abort();
            }
            tp_buf_free(&back);
            tp_buf_free(&want);
        }
        tp_ids_free(&fast);
        tp_ids_free(&slow);
    }
    return 0;
}
