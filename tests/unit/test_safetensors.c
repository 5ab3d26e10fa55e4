// Safetensors: files from the reference implementation, our writer, validation, shards.
#include "safetensors.h"
#include "test.h"

#include <dirent.h>
#include <unistd.h>

#define FIX "tests/fixtures/safetensors/"

// The values make_safetensors_fixtures.py stored: f(i) by dtype family.
static double expected_value(tp_dtype t, uint64_t i) {
    switch (t) {
    case TP_F16: case TP_F32: case TP_F64: return (double)i * 0.25 - 3;
    case TP_I32: case TP_I64: return (double)i - 5;
    default: return (double)i;
    }
}

static void check_reference_tensors(const tp_tensor *(*find)(const void *, const char *), const void *src) {
    static const struct { const char *name; tp_dtype dtype; int ndim; int64_t shape[2]; } want[] = {
        {"model.embed_tokens.weight", TP_F32, 2, {7, 5}}, {"model.norm.weight", TP_F16, 1, {5}},
        {"lm_head.bias", TP_F64, 1, {3}}, {"ids", TP_I32, 2, {2, 3}}, {"big_ids", TP_I64, 1, {4}},
        {"mask", TP_U8, 1, {6}}, {"empty", TP_F32, 2, {0, 4}}, {"scalar", TP_F32, 0, {0}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const tp_tensor *t = find(src, want[k].name);
        CHECK_MSG(t != NULL, "%s missing", want[k].name);
        if (!t) continue;
        CHECK(t->dtype == want[k].dtype && t->ndim == want[k].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK(t->shape[d] == want[k].shape[d]);
        if (!strcmp(want[k].name, "scalar")) {
            CHECK(tp_tensor_numel(t) == 1 && tp_tensor_get(t->data, t->dtype, 0) == 2.5);
            continue;
        }
        for (uint64_t i = 0; i < tp_tensor_numel(t); i++)
            CHECK_MSG(tp_tensor_get(t->data, t->dtype, i) == expected_value(t->dtype, i), "%s[%llu]", t->name,
                      (unsigned long long)i);
    }
    const tp_tensor *flags = find(src, "flags");
    CHECK(flags && flags->dtype == TP_BOOL && tp_tensor_get(flags->data, TP_BOOL, 0) == 1 &&
          tp_tensor_get(flags->data, TP_BOOL, 1) == 0);
}

static const tp_tensor *find_in_file(const void *st, const char *name) { return tp_safetensors_find(st, name); }
static const tp_tensor *find_in_weights(const void *w, const char *name) { return tp_weights_find(w, name); }

static void test_reads_reference_file(void) {
    tp_err err;
    tp_safetensors *st = tp_safetensors_open(FIX "ref.safetensors", &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st) return;
    CHECK(st->header.count == 9);
    jv producer = jv_object_get(jv_copy(st->header.metadata), jv_string("producer"));
    CHECK_STR(jv_string_value(producer), "safetensors");
    jv_free(producer);
    check_reference_tensors(find_in_file, st);
    CHECK(tp_safetensors_find(st, "nope") == NULL);
    tp_safetensors_close(st);
}

static void test_reads_sharded_checkpoint(void) {
    tp_err err;
    tp_weights *w = tp_weights_open(FIX "shards", &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w) return;
    CHECK(w->nshards == 2);
    check_reference_tensors(find_in_weights, w);
    jv total = jv_object_get(jv_copy(w->metadata), jv_string("total_size"));
    CHECK(jv_get_kind(total) == JV_KIND_NUMBER);
    jv_free(total);
    tp_weights_close(w);
    // A single file opens as a one-shard checkpoint too.
    w = tp_weights_open(FIX "ref.safetensors", &err);
    CHECK(w && w->nshards == 1);
    if (w) check_reference_tensors(find_in_weights, w);
    tp_weights_close(w);
}

static void test_write_read_round_trip(void) {
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6.5f};
    uint16_t b[3] = {0x3f80, 0xbf00, 0x4049};
    int64_t sa[] = {2, 3}, sb[] = {3};
    tp_tensor_ref refs[] = {{"w.a", TP_F32, 2, sa, a}, {"w.b", TP_BF16, 1, sb, b}};
    jv meta = jv_parse("{\"format\":\"pt\"}");
    tp_err err;
    CHECK(tp_safetensors_write(path, refs, 2, meta, &err) == 0);
    jv_free(meta);
    // Written atomically: only the final file remains in the directory.
    DIR *d = opendir(dir);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));) entries += e->d_name[0] != '.';
    closedir(d);
    CHECK(entries == 1);
    tp_safetensors *st = tp_safetensors_open(path, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (st) {
        const tp_tensor *t = tp_safetensors_find(st, "w.a");
        CHECK(t && t->ndim == 2 && t->shape[1] == 3 && !memcmp(t->data, a, sizeof a));
        CHECK(((uintptr_t)t->data & 7) == 0);  // the data section starts 8-byte aligned
        t = tp_safetensors_find(st, "w.b");
        CHECK(t && t->dtype == TP_BF16 && tp_tensor_get(t->data, TP_BF16, 2) == 3.140625);
        tp_safetensors_close(st);
    }
    // Rewriting replaces the file as a whole.
    CHECK(tp_safetensors_write(path, refs, 1, jv_null(), &err) == 0);
    st = tp_safetensors_open(path, &err);
    CHECK(st && st->header.count == 1);
    tp_safetensors_close(st);
    // Bad requests are refused before anything is written.
    tp_tensor_ref dup[] = {{"x", TP_F32, 1, sb, a}, {"x", TP_F32, 1, sb, a}};
    CHECK(tp_safetensors_write(path, dup, 2, jv_null(), &err) == -1);
    CHECK_CONTAINS(err.msg, "tensor 'x': name used twice");
    tp_tensor_ref reserved[] = {{"__metadata__", TP_F32, 1, sb, a}};
    CHECK(tp_safetensors_write(path, reserved, 1, jv_null(), &err) == -1);
    jv badmeta = jv_parse("{\"n\":1}");
    CHECK(tp_safetensors_write(path, refs, 1, badmeta, &err) == -1);
    CHECK_CONTAINS(err.msg, "__metadata__ value of 'n' is not a string");
    jv_free(badmeta);
    unlink(path);
    rmdir(dir);
}

// Builds a file image: 8-byte length, header text, then data_len bytes.
static size_t make_image(unsigned char *buf, const char *header, size_t data_len) {
    size_t n = strlen(header);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, n);
    memset(buf + 8 + n, 0x11, data_len);
    return 8 + n + data_len;
}

static void test_rejects_malformed_files(void) {
    static const struct { const char *header; size_t data; const char *message; } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         "truncated: the header describes 8 bytes of data, the file holds 4"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "4 bytes after the last tensor"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "tensor 'a': shape and F32 need 12 bytes but data_offsets [0, 8] hold 8"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a': unknown dtype 'Q4'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape entries must be whole numbers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin <= end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps tensor 'a'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "leaving a hole after byte 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "\"data_offsets\" missing"},
        {"{\"a\":[1]}", 0, "tensor 'a': entry is not an object"},
        {"[1,2]", 0, "header is not a JSON object"},
        {"{\"a\":", 0, "header is not valid JSON"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of 'k' is not a string"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "at most 8 supported"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,1]}}", 1,
         "shape is too large"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1, "whole numbers"},
    };
    unsigned char buf[1024];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = make_image(buf, cases[i].header, cases[i].data);
        tp_err err = {{0}};
        tp_safetensors *st = tp_safetensors_from_mem(buf, n, "bad.safetensors", &err);
        CHECK_MSG(st == NULL, "case %zu accepted", i);
        tp_safetensors_close(st);
        CHECK_CONTAINS(err.msg, "bad.safetensors: ");
        CHECK_CONTAINS(err.msg, cases[i].message);
    }
    // Length fields that point past the end, and files too short for one.
    tp_err err = {{0}};
    unsigned char tiny[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    CHECK(tp_safetensors_from_mem(tiny, 8, "x", &err) == NULL);
    CHECK_CONTAINS(err.msg, "runs past the end of the file");
    CHECK(tp_safetensors_from_mem(tiny, 5, "x", &err) == NULL);
    CHECK_CONTAINS(err.msg, "too short for a safetensors header");
    // Every truncation of a valid file is refused cleanly.
    FILE *f = fopen(FIX "ref.safetensors", "rb");
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        tp_safetensors *st = tp_safetensors_from_mem(buf, cut, "cut", &err);
        accepted += st != NULL;
        tp_safetensors_close(st);
    }
    CHECK(accepted == 0);
}

static void test_bad_index(void) {
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    tp_err err = {{0}};
    const char *idx = "{\"weight_map\":{\"a\":\"missing.safetensors\"}}";
    test_write_file(path, idx, strlen(idx));
    CHECK(tp_weights_open(dir, &err) == NULL);
    CHECK_CONTAINS(err.msg, "missing.safetensors: No such file or directory");
    idx = "{\"weights\":{}}";
    test_write_file(path, idx, strlen(idx));
    CHECK(tp_weights_open(path, &err) == NULL);
    CHECK_CONTAINS(err.msg, "not a safetensors index");
    unlink(path);
    CHECK(tp_weights_open(dir, &err) == NULL);
    CHECK_CONTAINS(err.msg, "holds neither model.safetensors nor model.safetensors.index.json");
    rmdir(dir);
}

int main(void) {
    RUN(test_reads_reference_file);
    RUN(test_reads_sharded_checkpoint);
    RUN(test_write_read_round_trip);
    RUN(test_rejects_malformed_files);
    RUN(test_bad_index);
    return TEST_SUMMARY();
}
