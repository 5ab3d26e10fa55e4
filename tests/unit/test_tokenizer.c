// Token ids against Hugging Face tokenizers: the fixture corpus (5,200 documents)
// encoded by each real tokenizer.json must give exactly the ids HF gave
// (tests/ref/make_tokenizer_fixtures.py), through the hand-written pre-tokenizer
// and through Oniguruma, with BPE by scan and by heap; decode must give the text back.
#include <jv.h>

#include "jsonl.h"
#include "test.h"
#include "tokenizer.h"
#include "unicode.h"
#include "progress.h"

#define FIX "tests/fixtures/tokenizer/"

typedef struct {
    char **text;
    size_t *len;
    size_t n;
} corpus;

static corpus load_corpus(void) {
    corpus c = {0};
    tp_err err;
    tp_jsonl_reader *r = tp_jsonl_open(FIX "corpus.jsonl.zst", NULL, &err);
    if (!r) { fprintf(stderr, "%s\n", err.msg); exit(2); }
    jv rec;
    while (tp_jsonl_next(r, &rec, &err) == 1) {
        jv s = jv_object_get(rec, jv_string("text"));
        c.text = realloc(c.text, (c.n + 1) * sizeof *c.text);
        c.len = realloc(c.len, (c.n + 1) * sizeof *c.len);
        c.len[c.n] = (size_t)jv_string_length_bytes(jv_copy(s));
        c.text[c.n] = malloc(c.len[c.n] + 1);
        memcpy(c.text[c.n], jv_string_value(s), c.len[c.n] + 1);
        c.n++;
        jv_free(s);
    }
    tp_jsonl_close(r);
    return c;
}

static tp_ids *load_expected(const char *name, size_t n) {
    char path[256];
    snprintf(path, sizeof path, FIX "%s.ids.jsonl.zst", name);
    tp_err err;
    tp_jsonl_reader *r = tp_jsonl_open(path, NULL, &err);
    if (!r) { fprintf(stderr, "%s\n", err.msg); exit(2); }
    tp_ids *v = calloc(n, sizeof *v);
    jv rec;
    size_t i = 0;
    while (i < n && tp_jsonl_next(r, &rec, &err) == 1) {
        jv ids = jv_object_get(rec, jv_string("ids"));
        jv_array_foreach(ids, k, x) {
            tp_ids_push(&v[i], (int32_t)jv_number_value(x));
            jv_free(x);
            (void)k;
        }
        jv_free(ids);
        i++;
    }
    tp_jsonl_close(r);
    return v;
}

static corpus C;

static void dump_diff(size_t doc, const tp_ids *got, const tp_ids *want) {
    size_t k = 0;
    while (k < got->count && k < want->count && got->ids[k] == want->ids[k]) k++;
    fprintf(stderr, "  doc %zu: first difference at token %zu (got %zu tokens, want %zu)\n    got: ", doc, k,
            got->count, want->count);
    for (size_t j = k; j < k + 8 && j < got->count; j++) fprintf(stderr, "%d ", got->ids[j]);
    fprintf(stderr, "\n    want:");
    for (size_t j = k; j < k + 8 && j < want->count; j++) fprintf(stderr, " %d", want->ids[j]);
    fprintf(stderr, "\n    text: %.200s\n", C.text[doc]);
}

// Encodes the corpus and compares; returns the number of mismatching documents.
// roundtrip: decode(encode(x)) must be x — or NFC(x) for Qwen, whose tokenizer.json
// normalises to NFC first, as HF's does (so HF's round trip gives NFC(x) too).
static size_t check_corpus(const char *name, bool regex_engine, size_t heap_threshold, bool roundtrip) {
    bool nfc = strcmp(name, "qwen3") == 0;
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    tp_err err;
    tp_tokenizer *t = tp_tokenizer_load(dir, &err);
    if (!t) {
        fprintf(stderr, "  %s\n", err.msg);
        return C.n;
    }
    tp_tokenizer_force_regex_engine(t, regex_engine);
    tp_tok_state *st = tp_tok_state_new(t);
    tp_tok_state_set_heap_threshold(st, heap_threshold);
    tp_ids *want = load_expected(name, C.n);
    size_t bad = 0, bad_roundtrip = 0, tokens = 0;
    tp_ids got = {0};
    tp_buf text = {0}, expect = {0};
    size_t changed_by_nfc = 0;
    for (size_t i = 0; i < C.n; i++) {
        got.count = 0;
        if (tp_tokenizer_encode(t, st, C.text[i], C.len[i], false, &got, &err) < 0) {
            fprintf(stderr, "  doc %zu: %s\n", i, err.msg);
            bad++;
            continue;
        }
        tokens += got.count;
        if (got.count != want[i].count || (got.count && memcmp(got.ids, want[i].ids, got.count * sizeof *got.ids) != 0)) {
            if (bad < 3) dump_diff(i, &got, &want[i]);
            bad++;
        }
        if (roundtrip) {
            text.len = 0;
            expect.len = 0;
            if (nfc) tp_unicode_normalize(TP_NORM_NFC, C.text[i], C.len[i], &expect, &err);
            else tp_buf_append(&expect, C.text[i], C.len[i]);
            if (tp_tokenizer_decode(t, got.ids, got.count, false, &text, &err) < 0 || text.len != expect.len ||
                memcmp(text.data, expect.data, text.len) != 0) {
                if (bad_roundtrip < 3) fprintf(stderr, "  doc %zu: decode(encode(x)) != x\n", i);
                bad_roundtrip++;
            }
            changed_by_nfc += expect.len != C.len[i] || memcmp(expect.data, C.text[i], C.len[i]) != 0;
        }
    }
    if (bad || bad_roundtrip)
        fprintf(stderr, "  %s (%s, heap from %zu): %zu of %zu documents differ from HF, %zu fail the round trip\n",
                name, regex_engine ? "oniguruma" : "fast pre-tokenizer", heap_threshold, bad, C.n, bad_roundtrip);
    CHECK(tokens > 400000);
    for (size_t i = 0; i < C.n; i++) tp_ids_free(&want[i]);
    free(want);
    tp_ids_free(&got);
    tp_buf_free(&text);
    tp_buf_free(&expect);
    // The corpus has text that NFC changes, so the Qwen round trip checks something.
    if (roundtrip && nfc) CHECK(changed_by_nfc > 10);
    tp_tok_state_free(st);
    tp_tokenizer_free(t);
    return bad + bad_roundtrip;
}

static void test_qwen3_matches_hf(void) { CHECK(check_corpus("qwen3", false, 48, true) == 0); }
static void test_llama3_matches_hf(void) { CHECK(check_corpus("llama3", false, 48, true) == 0); }
static void test_deepseek_v3_matches_hf(void) { CHECK(check_corpus("deepseek-v3", false, 48, true) == 0); }
// The hand-written matchers are an optimisation of the regex: Oniguruma gives the same ids.
static void test_qwen3_regex_engine(void) { CHECK(check_corpus("qwen3", true, 48, false) == 0); }
static void test_deepseek_v3_regex_engine(void) { CHECK(check_corpus("deepseek-v3", true, 48, false) == 0); }
// Heap-based BPE for every word gives the same ids as the linear scan.
static void test_llama3_heap_bpe(void) { CHECK(check_corpus("llama3", false, 0, false) == 0); }

static void test_fast_pretokenizers_recognised(void) {
    const char *names[] = {"qwen3", "llama3", "deepseek-v3"};
    for (int i = 0; i < 3; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIX "%s", names[i]);
        tp_err err;
        tp_tokenizer *t = tp_tokenizer_load(dir, &err);
        CHECK_MSG(t, "%s", err.msg);
        if (!t) continue;
        CHECK_MSG(tp_tokenizer_fast_pretok(t), "%s runs its pre-tokenizer on Oniguruma", names[i]);
        tp_tokenizer_free(t);
    }
}

static void test_token_lookup_and_errors(void) {
    tp_err err;
    tp_tokenizer *t = tp_tokenizer_load(FIX "qwen3", &err);
    CHECK_MSG(t, "%s", err.msg);
    if (!t) return;
    CHECK(tp_tokenizer_token_id(t, "<|im_start|>") == 151644);
    CHECK(tp_tokenizer_token_id(t, "\xC4\xA0the") == 279);  // "Ġthe"
    CHECK(tp_tokenizer_token_id(t, "no such token here") == -1);
    CHECK(tp_tokenizer_is_special(t, 151644));
    CHECK(!tp_tokenizer_is_special(t, 279));
    CHECK(tp_tokenizer_vocab_size(t) == 151669);
    const char *bytes;
    CHECK(tp_tokenizer_token_bytes(t, 279, &bytes) == 4 && memcmp(bytes, " the", 4) == 0);
    tp_tok_state *st = tp_tok_state_new(t);
    tp_ids ids = {0};
    CHECK(tp_tokenizer_encode(t, st, "ok\xFFno", 5, false, &ids, &err) < 0);
    CHECK_CONTAINS(err.msg, "invalid UTF-8 at byte 2");
    int32_t bad[2] = {279, 999999};
    tp_buf out = {0};
    CHECK(tp_tokenizer_decode(t, bad, 2, false, &out, &err) < 0);
    CHECK_CONTAINS(err.msg, "token id 999999 at position 1 is not in the vocabulary");
    tp_buf_free(&out);
    tp_ids_free(&ids);
    tp_tok_state_free(st);
    tp_tokenizer_free(t);
}

// A tokenizer.json with this vocabulary and these merges, byte-level pre-tokenizer.
static tp_tokenizer *tiny(const char *vocab, const char *merges, tp_err *err) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
             " \"decoder\": {\"type\": \"ByteLevel\"},"
             " \"model\": {\"type\": \"BPE\", \"vocab\": %s, \"merges\": %s}}",
             vocab, merges);
    return tp_tokenizer_from_json(json, strlen(json), "tiny.json", jv_null(), err);
}

// The tables are built by several threads; errors must still name the first bad entry in file order.
static void test_table_errors(void) {
    tp_err err;
    tp_tokenizer *t = tiny("{\"a\": 0, \"b\": 1, \"ab\": 2, \"ba\": 3}", "[\"a b\", [\"b\", \"a\"]]", &err);
    CHECK_MSG(t, "%s", err.msg);
    if (t) {
        tp_tok_state *st = tp_tok_state_new(t);
        tp_ids ids = {0};
        CHECK(tp_tokenizer_encode(t, st, "abba", 4, false, &ids, &err) == 0);
        CHECK(ids.count == 2 && ids.ids[0] == 2 && ids.ids[1] == 3);
        tp_ids_free(&ids);
        tp_tok_state_free(st);
        tp_tokenizer_free(t);
    }
    CHECK(!tiny("{\"a\": 0, \"b\": 0}", "[]", &err));
    CHECK_CONTAINS(err.msg, "vocab: id 0 is given to two tokens (\"b\" and another)");
    CHECK(!tiny("{\"a\": 0, \"b\": 1, \"a\": 2}", "[]", &err));
    CHECK_CONTAINS(err.msg, "vocab: token \"a\" appears twice");
    CHECK(!tiny("{\"a\": 0, \"b\": 1, \"ab\": 2}", "[\"a b\", \"a c\", \"x b\"]", &err));
    CHECK_CONTAINS(err.msg, "merges[1]: \"c\" is not a byte-level token of the vocabulary");
    CHECK(!tiny("{\"a\": 0, \"b\": 1, \"ab\": 2}", "[\"a b\", \"b a\", \"a c\"]", &err));
    CHECK_CONTAINS(err.msg, "merges[1]: \"b\" + \"a\" makes a token that is not in the vocabulary");
    CHECK(!tiny("{\"a\": 0, \"b\": 1}", "[\"x b\", \"a y\"]", &err));
    CHECK_CONTAINS(err.msg, "merges[0]: \"x\" is not a byte-level token");
}

int main(void) {
    C = load_corpus();
    CHECK(C.n >= 5000);
    RUN(test_fast_pretokenizers_recognised);
    RUN(test_token_lookup_and_errors);
    RUN(test_table_errors);
    RUN(test_qwen3_matches_hf);
    RUN(test_llama3_matches_hf);
    RUN(test_deepseek_v3_matches_hf);
    RUN(test_qwen3_regex_engine);
    RUN(test_deepseek_v3_regex_engine);
    RUN(test_llama3_heap_bpe);
    return TEST_SUMMARY();
}
