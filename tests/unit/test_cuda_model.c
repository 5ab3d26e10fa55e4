// The model core on the cuda backend against the cpu backend, on the tiny transformers
// fixtures: logits, loss and every parameter's gradient (fp32 matrix products: 1e-4;
// bf16: within bf16 tolerance), AdamW training steps and the bf16 weight copies after them,
// determinism, recomputation, and the out-of-memory message; and, on random models with
// head sizes 64 and 128 (the tiny fixtures' 16 and 32 never reach them), the loss and
// gradients through each tensor-core attention kernel. Skipped without a GPU.
#include "backend.h"
#include "cuda_test.h"
#include "json.h"
#include "model.h"
#include "model_fixture.h"
#include "optim.h"

#define FIX "tests/fixtures/model/"
static const char *CASES[] = {"qwen3", "qwen2-tied", "llama3", "llama3-tied"};

#ifdef TP_HAVE_CUDA
static const tp_backend *cuda(void) {
    tp_err err;
    const tp_backend *be = tp_backend_named("cuda", &err);
    CHECK_MSG(be, "%s", err.msg);
    return be;
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d, den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct pair {
    tp_model *cpu, *gpu;
    model_fixture f;
} pair;

static int pair_open(pair *p, const char *name, bool train) {
    memset(p, 0, sizeof *p);
    char path[256];
    snprintf(path, sizeof path, FIX "%s/expected.safetensors.zst", name);
    if (model_fixture_open(&p->f, path) < 0) return -1;
    p->cpu = fixture_load_model(FIX, name), p->gpu = fixture_load_model(FIX, name);
    if (!p->cpu || !p->gpu) return -1;
    tp_err err;
    int rc = tp_model_use_backend(p->gpu, cuda(), train, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return rc;
}

static void pair_close(pair *p) {
    tp_model_free(p->cpu), tp_model_free(p->gpu);
    model_fixture_close(&p->f);
}

// Logits of every token, loss and all gradients; tol is max-relative for fp32 products
// and relative-L2 per tensor for bf16 ones (bf16 rounds each product's inputs to 8 bits).
static void compare_case(const char *name, const char *precision, double tol) {
    pair p;
    CHECK(tp_backend_set_matmul(cuda(), precision) == 0);
    if (pair_open(&p, name, true) == 0) {
        bool bf16 = strcmp(precision, "fp32") != 0;
        tp_err err;
        int N = p.f.B * p.f.T, V = p.cpu->cfg.vocab_size;
        float *lc = malloc((size_t)N * V * 4), *lg = malloc((size_t)N * V * 4);
        CHECK(tp_model_forward(p.cpu, &p.f.batch, NULL, NULL, 0, lc, &err) == 0);
        int rc = tp_model_forward(p.gpu, &p.f.batch, NULL, NULL, 0, lg, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        double e = bf16 ? rel_l2(lg, lc, (size_t)N * V) : max_rel(lg, lc, (size_t)N * V);
        CHECK_MSG(e <= tol, "%s %s: logits differ by %.3g", name, precision, e);
        double worst = e;
        tp_loss a, b;
        tp_model_zero_grad(p.cpu), tp_model_zero_grad(p.gpu);
        CHECK(tp_model_forward_backward(p.cpu, &p.f.batch, 0, &a, &err) == 0);
        rc = tp_model_forward_backward(p.gpu, &p.f.batch, 0, &b, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK(a.count == b.count && a.count > 0);
        CHECK_MSG(fabs(a.sum - b.sum) <= (bf16 ? tol : 1e-5) * fabs(a.sum), "%s: loss %.9g vs %.9g", name, b.sum, a.sum);
        tp_model_pull(p.gpu, true);
        for (int i = 0; i < p.cpu->n_params; i++) {
            const tp_param *q = &p.cpu->params[i];
            const float *gg = p.gpu->g + q->offset, *gc = p.cpu->g + q->offset;
            double d = bf16 ? rel_l2(gg, gc, q->numel) : max_rel(gg, gc, q->numel);
            CHECK_MSG(d <= tol, "%s %s: gradient of %s differs by %.3g", name, precision, q->name, d);
            if (d > worst) worst = d;
        }
        printf("# %s %s (activations of %zu bytes): logits and gradients within %.3g of the cpu\n", name,
               precision, cuda_act_bytes(), worst);
        free(lc), free(lg);
    }
    pair_close(&p);
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    CHECK_CUDA_OK();
}

static void test_fp32_matches_cpu(void) {
    NEED_GPU();
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) compare_case(CASES[i], "fp32", 1e-4);
}

// With the activations only products and elementwise ops read (the attention block's, the
// MLP's [N, F] tensors) in bf16 (the default) and in fp32.
static void test_bf16_within_tolerance(void) {
    NEED_GPU();
    for (int act16 = 1; act16 >= 0; act16--) {
        cuda_set_act16(act16);
        CHECK(tp_backend_set_matmul(cuda(), "bf16") == 0);
        CHECK(cuda_act_bytes() == (act16 ? 2 : 4));
        for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) compare_case(CASES[i], "bf16", 3e-2);
    }
    cuda_set_act16(-1);
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    CHECK(cuda_act_bytes() == 4);
}

// Five AdamW steps with clipping and a cosine schedule on both backends.
static void test_training_steps_match(void) {
    NEED_GPU();
    pair p;
    if (pair_open(&p, "qwen3", true) == 0) {
        tp_adamw oc, og;
        tp_adamw_init(&oc, p.cpu, 0.9, 0.95, 1e-8, 0.1), tp_adamw_init(&og, p.gpu, 0.9, 0.95, 1e-8, 0.1);
        tp_lr_schedule s = {TP_SCHEDULE_COSINE, 1e-3, 1e-4, 1, 5};
        tp_err err;
        for (int step = 0; step < 5; step++) {
            tp_loss a, b;
            tp_model_zero_grad(p.cpu), tp_model_zero_grad(p.gpu);
            CHECK(tp_model_forward_backward(p.cpu, &p.f.batch, 0, &a, &err) == 0);
            CHECK(tp_model_forward_backward(p.gpu, &p.f.batch, 0, &b, &err) == 0);
            // the gpu with the clipping folded into the update, as sft-train runs it
            double na = tp_clip_grad_norm(p.cpu, 0.5), nb = tp_adamw_clip_grad_norm(&og, p.gpu, 0.5);
            CHECK_MSG(fabs(a.sum - b.sum) <= 1e-5 * fabs(a.sum), "step %d: loss %.9g vs %.9g", step, b.sum, a.sum);
            CHECK_MSG(fabs(na - nb) <= 1e-5 * na, "step %d: grad norm %.9g vs %.9g", step, nb, na);
            tp_adamw_update(&oc, p.cpu, tp_lr_at(&s, step)), tp_adamw_update(&og, p.gpu, tp_lr_at(&s, step));
        }
        tp_model_pull(p.gpu, false);
        double e = rel_l2(p.gpu->w, p.cpu->w, p.cpu->n_floats);
        CHECK_MSG(e <= 1e-4, "parameters after 5 steps differ by %.3g (relative L2)", e);
        printf("# 5 AdamW steps: parameters within %.3g (relative L2) of the cpu\n", e);
        tp_adamw_free(&oc), tp_adamw_free(&og);
    }
    pair_close(&p);
    CHECK_CUDA_OK();
}

// After AdamW steps in bf16, the bf16 weight copies the products read (each weight's, and
// the joined [wq; wk; wv] and [bq; bk; bv], which AdamW writes as it updates the weights)
// are the new weights rounded: a step through them gives the bits of a step through copies
// made again from the fp32 weights (cuda_weights_changed drops them all).
static void copies_follow_case(const char *name) {
    pair p;
    CHECK(tp_backend_set_matmul(cuda(), "bf16") == 0);
    if (pair_open(&p, name, true) == 0) {
        tp_adamw og;
        tp_adamw_init(&og, p.gpu, 0.9, 0.95, 1e-8, 0.1);
        tp_err err;
        tp_loss l[2];
        for (int step = 0; step < 2; step++) {  // lr 1e-2: every weight's bf16 bits move
            tp_model_zero_grad(p.gpu);
            CHECK(tp_model_forward_backward(p.gpu, &p.f.batch, 0, &l[0], &err) == 0);
            tp_adamw_clip_grad_norm(&og, p.gpu, 1.0);
            tp_adamw_update(&og, p.gpu, 1e-2);
        }
        const size_t bytes = p.gpu->n_floats * sizeof(float);
        float *g[2];
        for (int run = 0; run < 2; run++) {
            if (run == 1) cuda_weights_changed();
            tp_model_zero_grad(p.gpu);
            CHECK(tp_model_forward_backward(p.gpu, &p.f.batch, 0, &l[run], &err) == 0);
            tp_model_pull(p.gpu, true);
            g[run] = malloc(bytes);
            memcpy(g[run], p.gpu->g, bytes);
        }
        CHECK_MSG(l[0].sum == l[1].sum && memcmp(g[0], g[1], bytes) == 0,
                  "%s: after AdamW, a step through its copies (loss %.9g) differs from one through new ones (%.9g)",
                  name, l[0].sum, l[1].sum);
        free(g[0]), free(g[1]);
        tp_adamw_free(&og);
    }
    pair_close(&p);
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    CHECK_CUDA_OK();
}

static void test_copies_follow_adamw(void) {
    NEED_GPU();
    copies_follow_case("qwen2-tied");  // q, k, v biases: their joined copy too
    copies_follow_case("qwen3");       // per-head norms at HD 16: q, k, v as three products
}

// The same batch twice gives the same bits, and recomputing activations changes nothing,
// with fp32 products and with bf16 ones (the activations in bf16).
static void deterministic_case(const char *precision) {
    pair p;
    CHECK(tp_backend_set_matmul(cuda(), precision) == 0);
    if (pair_open(&p, "llama3", true) == 0) {
        tp_err err;
        size_t bytes = p.gpu->n_floats * sizeof(float);
        float *g[3];
        double loss[3];
        for (int run = 0; run < 3; run++) {
            p.gpu->recompute = run == 2;
            tp_loss l;
            tp_model_zero_grad(p.gpu);
            CHECK(tp_model_forward_backward(p.gpu, &p.f.batch, 0, &l, &err) == 0);
            tp_model_pull(p.gpu, true);
            g[run] = malloc(bytes);
            memcpy(g[run], p.gpu->g, bytes);
            loss[run] = l.sum;
        }
        CHECK_MSG(loss[0] == loss[1] && memcmp(g[0], g[1], bytes) == 0, "%s: two runs differ", precision);
        CHECK_MSG(loss[0] == loss[2] && memcmp(g[0], g[2], bytes) == 0, "%s: recomputing changed bits", precision);
        for (int run = 0; run < 3; run++) free(g[run]);
    }
    pair_close(&p);
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    CHECK_CUDA_OK();
}

static void test_deterministic_and_recompute(void) {
    NEED_GPU();
    deterministic_case("fp32");
    deterministic_case("bf16");
}

// The same random model (config json, weights from seed 7) on the cpu (m[0]) and the gpu
// (m[1], with gradients); false, with a failed check, when either cannot be made.
static bool random_pair(const char *json, tp_model *m[2]) {
    tp_err err;
    m[0] = m[1] = NULL;
    for (int i = 0; i < 2; i++) {
        jv cfg;
        CHECK_MSG(tp_json_parse(json, strlen(json), &cfg, &err) == 0, "%s", err.msg);
        m[i] = tp_model_new(cfg, &err);
        CHECK_MSG(m[i] != NULL, "%s", err.msg);
        if (!m[i]) break;
        tp_model_init_weights(m[i], 7);
    }
    if (!m[0] || !m[1] || tp_model_use_backend(m[1], cuda(), true, &err) < 0) {
        CHECK_MSG(false, "random model: %s", err.msg);
        tp_model_free(m[0]), tp_model_free(m[1]);
        return false;
    }
    return true;
}

// Relative L2 distance of the gpu model's gradients from the cpu's, the worst tensor
// (pulls the gpu's first).
static double worst_gradient(tp_model *m[2], const char **which) {
    tp_model_pull(m[1], true);
    double worst = 0;
    for (int i = 0; i < m[0]->n_params; i++) {
        const tp_param *q = &m[0]->params[i];
        double d = rel_l2(m[1]->g + q->offset, m[0]->g + q->offset, q->numel);
        if (d > worst) worst = d, *which = q->name;
    }
    return worst;
}

// A random Qwen2-style (or Qwen3: per-head norms) model of head size HD (hidden 256, 2 layers,
// vocabulary 1000) on the cpu and on the gpu in bf16 mode, through each tensor-core attention
// kernel in turn: the loss and every gradient within bf16 tolerance of the cpu's fp32, over
// packed rows.
static void tensor_core_case(const char *type, int HD) {
    char json[512];
    snprintf(json, sizeof json,
             "{\"model_type\": \"%s\", \"vocab_size\": 1000, \"hidden_size\": 256, \"intermediate_size\": 512, "
             "\"num_hidden_layers\": 2, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
             "\"head_dim\": %d, \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": true}",
             type, 256 / HD, 256 / HD / 2, HD);
    tp_err err;
    tp_model *m[2];  // cpu, gpu
    if (!random_pair(json, m)) return;
    enum { B = 2, T = 160 };
    int32_t ids[B * T], pos[B * T], seg[B * T];
    uint8_t mask[B * T];
    const int32_t starts0[] = {0, 70}, starts1[] = {0, 5, 100, 101};  // sequences of 1 to 95 tokens
    const int32_t *starts[B] = {starts0, starts1};
    const int count[B] = {2, 4};
    CHECK(tp_batch_seg_start(seg, B, T, starts, count) == 0);
    for (int i = 0; i < B * T; i++) ids[i] = (i * 7919 + 13) % 1000, pos[i] = i - seg[i], mask[i] = 1;
    tp_batch b = {B, T, ids, pos, seg, mask};
    tp_loss lc, lg;
    tp_model_zero_grad(m[0]);
    CHECK(tp_model_forward_backward(m[0], &b, 0, &lc, &err) == 0);
    CHECK(tp_backend_set_matmul(cuda(), "bf16") == 0);
    const char *kernels[] = {"wmma", "mma"};
    for (int k = 0; k < 2; k++) {
        CHECK(cuda_set_attention_kernel(kernels[k]) == 0);
        tp_model_zero_grad(m[1]);
        int rc = tp_model_forward_backward(m[1], &b, 0, &lg, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK_STR(cuda_attention_last_path(), kernels[k]);
        CHECK_STR(cuda_qkv_last_path(), "joined");
        CHECK_MSG(fabs(lg.sum - lc.sum) <= 3e-2 * fabs(lc.sum), "%s HD %d %s: loss %.9g vs %.9g", type, HD, kernels[k],
                  lg.sum, lc.sum);
        const char *which = "";
        double worst = worst_gradient(m, &which);
        // 5e-2: the fixtures' bf16 worst is ~1.8e-2; a wrong attention kernel is off by O(1)
        CHECK_MSG(worst <= 5e-2, "%s HD %d %s: gradient of %s differs by %.3g", type, HD, kernels[k], which, worst);
        printf("# random %s model, HD %d, bf16 with %s attention: loss %.6f (cpu %.6f), gradients within %.3g\n",
               type, HD, kernels[k], lg.sum / lg.count, lc.sum / lc.count, worst);
    }
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    tp_model_free(m[0]), tp_model_free(m[1]);
    CHECK_CUDA_OK();
}

static void test_tensor_core_attention(void) {
    NEED_GPU();
    tensor_core_case("qwen2", 64);
    tensor_core_case("qwen2", 128);
    tensor_core_case("qwen3", 128);  // the per-head norms in the joined q, k, v forward
}

// Qwen's vocabulary and 4096 target tokens: the training head takes several chunks (883
// rows of fp32 logits, 1766 of bf16 ones, in the same buffer), so the chunk loop, the
// scatter of each chunk's dx and the weight gradient summed over chunks are all checked
// against the cpu (55 rows a chunk there), with bf16 logits and with fp32 ones.
static void test_head_chunks(void) {
    NEED_GPU();
    const char *json = "{\"model_type\": \"qwen2\", \"vocab_size\": 151936, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, "
                       "\"num_key_value_heads\": 1, \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, "
                       "\"tie_word_embeddings\": true}";
    tp_model *m[2];
    if (!random_pair(json, m)) return;
    enum { B = 2, T = 2048 };
    int32_t *ids = malloc(B * T * sizeof *ids), *pos = malloc(B * T * sizeof *pos), *seg = malloc(B * T * sizeof *seg);
    uint8_t *mask = malloc(B * T);
    for (int i = 0; i < B * T; i++)
        ids[i] = (int32_t)(((long)i * 7919 + 13) % 151936), pos[i] = i % T, seg[i] = i / T * T, mask[i] = 1;
    tp_batch b = {B, T, ids, pos, seg, mask};
    tp_err err;
    tp_loss lc, lg;
    tp_model_zero_grad(m[0]);
    CHECK(tp_model_forward_backward(m[0], &b, 0, &lc, &err) == 0);
    CHECK(tp_backend_set_matmul(cuda(), "bf16") == 0);
    for (int act16 = 1; act16 >= 0; act16--) {
        cuda_set_act16(act16);
        tp_model_zero_grad(m[1]);
        int rc = tp_model_forward_backward(m[1], &b, 0, &lg, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        CHECK(lg.count == lc.count && lc.count == B * (T - 1));
        CHECK_MSG(fabs(lg.sum - lc.sum) <= 1e-2 * fabs(lc.sum), "act16 %d: loss %.9g vs %.9g", act16, lg.sum, lc.sum);
        const char *which = "";
        double worst = worst_gradient(m, &which);
        CHECK_MSG(worst <= 5e-2, "act16 %d: gradient of %s differs by %.3g", act16, which, worst);
        printf("# vocabulary 151936, 4094 targets, %s logits: loss %.6f (cpu %.6f), gradients within %.3g\n",
               act16 ? "bf16" : "fp32", lg.sum / lg.count, lc.sum / lc.count, worst);
    }
    cuda_set_act16(-1);
    CHECK(tp_backend_set_matmul(cuda(), "fp32") == 0);
    free(ids), free(pos), free(seg), free(mask);
    tp_model_free(m[0]), tp_model_free(m[1]);
    CHECK_CUDA_OK();
}

// Activations that cannot fit: a message with the sizes and a hint, no crash, and the
// model still works afterwards.
static void test_out_of_memory_message(void) {
    NEED_GPU();
    pair p;
    if (pair_open(&p, "qwen3", true) == 0) {
        int T = 1 << 24;  // ~15 KB of activations a token: 240 GB
        int32_t *ids = calloc((size_t)T, 4), *pos = malloc((size_t)T * 4), *seg = calloc((size_t)T, 4);
        uint8_t *mask = calloc((size_t)T, 1);
        for (int t = 0; t < T; t++) pos[t] = t % 4096;
        tp_batch big = {1, T, ids, pos, seg, mask};
        tp_err err;
        tp_loss l;
        CHECK(tp_model_forward_backward(p.gpu, &big, 0, &l, &err) == -1);
        CHECK_CONTAINS(err.msg, "out of device memory");
        CHECK_CONTAINS(err.msg, "--micro-batch");
        printf("# %s\n", err.msg);
        tp_model_zero_grad(p.gpu);
        CHECK(tp_model_forward_backward(p.gpu, &p.f.batch, 0, &l, &err) == 0);
        free(ids), free(pos), free(seg), free(mask);
    }
    pair_close(&p);
    CHECK_CUDA_OK();
}
#endif

// Without CUDA (or a GPU), asking for it by name fails with a message; auto gives the cpu.
static void test_device_selection(void) {
    tp_err err;
    const tp_backend *be = tp_backend_named("auto", &err);
    CHECK(be != NULL);
    CHECK(tp_backend_named("tpu", &err) == NULL);
    CHECK_CONTAINS(err.msg, "unknown device");
#ifdef TP_HAVE_CUDA
    if (cuda_device_count() > 0) {
        CHECK_STR(be->name, "cuda");
        return;
    }
#endif
    CHECK_STR(be->name, "cpu");
    CHECK(tp_backend_named("cuda", &err) == NULL);
    CHECK_CONTAINS(err.msg, "cuda");
}

#ifndef TP_HAVE_CUDA
static void test_no_cuda(void) { NEED_GPU(); }
#endif

int main(void) {
    (void)CASES;
    RUN(test_device_selection);
#ifdef TP_HAVE_CUDA
    RUN(test_fp32_matches_cpu);
    RUN(test_bf16_within_tolerance);
    RUN(test_training_steps_match);
    RUN(test_copies_follow_adamw);
    RUN(test_deterministic_and_recompute);
    RUN(test_tensor_core_attention);
    RUN(test_head_chunks);
    RUN(test_out_of_memory_message);
#else
    RUN(test_no_cuda);
#endif
    return TEST_SUMMARY();
}
