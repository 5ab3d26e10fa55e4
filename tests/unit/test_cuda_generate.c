// Generation on the cuda backend against the cpu: KV-cache logits (prefill, decode, a
// copied slot, a batched step) against the cpu's training forward, greedy decoding
// against transformers' generate() (tests/fixtures/generate, which the cpu matches for
// 64 tokens), and the engine's device sampling: the same seed gives the same tokens.
// Matrix products in fp32 for the comparisons (bf16 is printed). Decode steps replayed as
// CUDA graphs give the same bits as the same steps run op by op, also after the weights
// change under them. Skipped without a GPU.
#include "backend.h"
#include "cuda_test.h"
#include "engine.h"
#include "generate.h"
#include "json.h"
#include "model.h"
#include "model_fixture.h"
#include "ops.h"
#include "tokenizer.h"

#ifdef TP_HAVE_CUDA
#define FIX "tests/fixtures/model/"
static const char *CASES[] = {"qwen3", "qwen2-tied", "llama3", "llama3-tied"};

static tp_model *on_gpu(const char *name, const char *matmul) {
    tp_model *m = fixture_load_model(FIX, name);
    if (!m) return NULL;
    tp_err err;
    const tp_backend *be = tp_backend_named("cuda", &err);
    CHECK_MSG(be, "%s", err.msg);
    tp_backend_set_matmul(be, matmul);
    CHECK_MSG(be && tp_model_use_backend(m, be, false, &err) == 0, "%s", err.msg);
    return m;
}

// Logits of every position of one sequence by the cpu's training forward.
static float *cpu_logits(const char *name, const int32_t *ids, int T) {
    tp_model *m = fixture_load_model(FIX, name);
    float *out = fixture_logits(m, ids, T);
    tp_model_free(m);
    return out;
}

// Prefill 20 tokens in slot 0, copy it to slot 1, then decode 20 tokens in both slots
// together: every step's logits equal the cpu's training forward at that position.
static void cache_case(const char *name, const char *matmul, double tol) {
    tp_model *m = on_gpu(name, matmul);
    if (!m) return;
    int T = 40, V = m->cfg.vocab_size;
    int32_t ids[40];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(test_rand() % (unsigned)V);
    float *ref = cpu_logits(name, ids, T), *lg = malloc((size_t)2 * V * 4);
    tp_err err;
    tp_generator *g = tp_generator_new(m, 3, 64, &err);
    CHECK_MSG(g, "%s", err.msg);
    int slot0[20] = {0}, last = 19;
    CHECK_MSG(tp_generator_forward(g, 20, slot0, ids, 1, &last, lg, &err) == 0, "%s", err.msg);
    double worst = max_rel(lg, ref + (size_t)19 * V, (size_t)V);
    tp_generator_copy(g, 1, 0, -1);
    for (int t = 20; t < T; t++) {
        int slots[2] = {0, 1}, outs[2] = {0, 1};
        int32_t tok[2] = {ids[t], ids[t]};
        CHECK_MSG(tp_generator_forward(g, 2, slots, tok, 2, outs, lg, &err) == 0, "%s", err.msg);
        worst = fmax(worst, max_rel(lg, ref + (size_t)t * V, (size_t)V));
        worst = fmax(worst, max_rel(lg + V, ref + (size_t)t * V, (size_t)V));
    }
    // A continuing prompt (3 tokens at once into a non-empty slot) takes the decode kernel.
    int s3[3] = {2, 2, 2}, o3 = 2;
    tp_generator_reset(g, 2);
    CHECK(tp_generator_forward(g, 3, s3, ids, 0, NULL, NULL, &err) == 0);
    CHECK(tp_generator_forward(g, 3, s3, ids + 3, 1, &o3, lg, &err) == 0);
    worst = fmax(worst, max_rel(lg, ref + (size_t)5 * V, (size_t)V));
    CHECK_MSG(worst <= tol, "%s (%s): cache logits differ from the cpu by %.3g", name, matmul, worst);
    CHECK_MSG(getenv("TP_CUDA_GRAPHS") || tp_generator_graph_launches(g) >= 15, "%lu decode steps replayed as graphs",
              tp_generator_graph_launches(g));
    printf("# %s, %s products: KV-cache logits on the GPU within %.2g of the cpu's training forward\n", name, matmul,
           worst);
    free(ref), free(lg);
    tp_generator_free(g);
    tp_model_free(m);
}

static void test_cache_matches_cpu(void) {
    NEED_GPU();
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) cache_case(CASES[c], "fp32", 1e-4);
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) cache_case(CASES[c], "bf16", 5e-2);
    CHECK_CUDA_OK();
}

// Greedy tokens through the device sampler against the transformers fixture (the cpu
// generates all 64 of them: test_generate.c).
static void greedy_case(const char *name) {
    tp_model *m = on_gpu(name, "fp32");
    if (!m) return;
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/generate/%s.jsonl", name);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f, "%s: missing", path);
    if (!f) return;
    const tp_backend *be = tp_model_backend(m);
    char *line = NULL;
    size_t cap = 0;
    int V = m->cfg.vocab_size, prompts = 0, min_agree = 1 << 30;
    tp_err err;
    sample_params greedy = {.inv_temperature = 1, .top_p = 1, .greedy = 1};
    while (getline(&line, &cap, f) > 0) {
        jv rec;
        if (tp_json_parse(line, strlen(line), &rec, &err) < 0) break;
        jv jp = jv_object_get(jv_copy(rec), jv_string("prompt")), jt = jv_object_get(jv_copy(rec), jv_string("tokens"));
        int P = jv_array_length(jv_copy(jp)), G = jv_array_length(jv_copy(jt));
        int32_t *prompt = malloc(sizeof(int32_t) * (size_t)P);
        for (int i = 0; i < P; i++) prompt[i] = (int32_t)jv_number_value(jv_array_get(jv_copy(jp), i));
        tp_generator *g = tp_generator_new(m, 1, P + G + 1, &err);
        int *slots = calloc((size_t)P, sizeof(int)), last = P - 1, zero = 0;
        CHECK(g && tp_generator_forward(g, P, slots, prompt, 1, &last, NULL, &err) == 0);
        int agree = 0;
        for (int t = 0; g && t < G; t++) {
            int32_t tok = -1, want = (int32_t)jv_number_value(jv_array_get(jv_copy(jt), t));
            be->sample_rows(&tok, tp_generator_logits(g), &greedy, 1, V);
            if (tok != want) break;
            agree++;
            if (t + 1 < G) CHECK(tp_generator_forward(g, 1, &zero, &tok, 1, &zero, NULL, &err) == 0);
        }
        min_agree = agree < min_agree ? agree : min_agree;
        CHECK_MSG(agree >= 32, "%s prompt %d: greedy tokens on the GPU agree for %d of %d", name, prompts, agree, G);
        prompts++;
        free(prompt), free(slots);
        tp_generator_free(g);
        jv_free(jp), jv_free(jt), jv_free(rec);
    }
    free(line);
    fclose(f);
    CHECK(prompts == 3);
    printf("# %s: greedy on the GPU equals transformers (and the cpu) for %d+ tokens on each of %d prompts\n", name,
           min_agree, prompts);
    tp_model_free(m);
}

static void test_greedy_matches_cpu(void) {
    NEED_GPU();
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) greedy_case(CASES[c]);
    CHECK_CUDA_OK();
}

// The engine on the GPU: 3 requests of 4 sampled completions, twice with the same seed
// (the same tokens), once with another (different tokens).
static void run_engine(tp_model *m, uint64_t seed, tp_ids *out) {
    tp_err err;
    int32_t eos = -1;
    tp_engine_opts eo = {.max_batch = 8, .max_len = 64, .eos = &eos, .n_eos = 0};
    tp_engine *e = tp_engine_new(m, NULL, &eo, &err);
    CHECK_MSG(e, "%s", err.msg);
    if (!e) return;
    tp_request_opts ro = {.sampler = {.temperature = 0.9, .top_k = 50, .top_p = 0.95, .min_p = 0.01}, .n = 4,
                          .max_new = 24, .seed = seed, .ignore_eos = true};
    int32_t prompt[3][5] = {{1, 2, 3, 4, 5}, {9, 8, 7, 6, 5}, {11, 12, 13, 14, 15}};
    int submitted = 0, done = 0;
    while (done < 3) {
        while (submitted < 3 && tp_engine_can_submit(e))
            CHECK_MSG(tp_engine_submit(e, prompt[submitted++], 5, &ro, NULL, &err), "%s", err.msg);
        CHECK_MSG(tp_engine_step(e, &err) >= 0, "%s", err.msg);
        tp_request *r;
        while ((r = tp_engine_next_done(e))) {
            for (int k = 0; k < r->n; k++)
                for (size_t i = 0; i < r->s[k].tokens.count; i++) tp_ids_push(out, r->s[k].tokens.ids[i]);
            tp_request_free(r);
            done++;
        }
    }
    tp_engine_free(e);
}

static void test_engine_seeded(void) {
    NEED_GPU();
    tp_model *m = on_gpu("qwen3", "bf16");
    if (!m) return;
    tp_ids a = {0}, b = {0}, c = {0};
    run_engine(m, 7, &a), run_engine(m, 7, &b), run_engine(m, 8, &c);
    CHECK_MSG(a.count == 3 * 4 * 24 && b.count == a.count, "%zu and %zu tokens", a.count, b.count);
    CHECK(a.count == b.count && !memcmp(a.ids, b.ids, a.count * sizeof *a.ids));
    CHECK(c.count == a.count && memcmp(a.ids, c.ids, a.count * sizeof *a.ids));
    int distinct = 0;  // sampled, not a constant: the 24-token samples of one prompt differ
    for (int k = 1; k < 4; k++) distinct += memcmp(a.ids, a.ids + 24 * k, 24 * sizeof *a.ids) != 0;
    CHECK_MSG(distinct == 3, "%d of 3 samples differ from the first", distinct);
    tp_ids_free(&a), tp_ids_free(&b), tp_ids_free(&c);
    tp_model_free(m);
    CHECK_CUDA_OK();
}
// Sets the model's weights to orig, scaled by 1 + 2^-6 (i % 7 - 3) when perturbed.
static void set_weights(tp_model *m, const float *orig, bool perturbed) {
    for (size_t i = 0; i < m->n_floats; i++)
        m->w[i] = perturbed ? orig[i] * (1.0f + 0x1p-6f * (float)((int)(i % 7) - 3)) : orig[i];
    tp_model_push(m);
}

// Logits [24][3][V] of 24 decode steps after prompts of 6 tokens in 3 slots: 3 tokens a
// step for 8 steps, then 2 (a second graph shape); before step 16 the weights change
// under the captured graphs (their bf16 copies must be remade, the graphs recaptured).
static float *decode_run(tp_model *m, const float *orig, bool graphs, unsigned long *launches) {
    if (graphs) unsetenv("TP_CUDA_GRAPHS");
    else setenv("TP_CUDA_GRAPHS", "0", 1);
    set_weights(m, orig, false);
    int V = m->cfg.vocab_size, steps = 24;
    tp_err err;
    tp_generator *g = tp_generator_new(m, 3, 64, &err);
    CHECK_MSG(g, "%s", err.msg);
    unsetenv("TP_CUDA_GRAPHS");
    float *all = calloc((size_t)steps * 3 * V, sizeof(float));
    if (!g) return all;
    for (int s = 0; s < 3; s++) {
        int slot[6] = {s, s, s, s, s, s}, last = 5;
        int32_t ids[6];
        for (int t = 0; t < 6; t++) ids[t] = (int32_t)((s * 31 + t * 7) % V);
        CHECK(tp_generator_forward(g, 6, slot, ids, 1, &last, NULL, &err) == 0);
    }
    for (int step = 0; step < steps; step++) {
        if (step == 16) set_weights(m, orig, true);
        int n = step < 8 ? 3 : 2, slots[3] = {0, 1, 2}, outs[3] = {0, 1, 2};
        int32_t tok[3];
        for (int i = 0; i < n; i++) tok[i] = (int32_t)((step * 13 + i * 5 + 1) % V);
        CHECK_MSG(tp_generator_forward(g, n, slots, tok, n, outs, all + (size_t)step * 3 * V, &err) == 0, "%s",
                  err.msg);
    }
    *launches = tp_generator_graph_launches(g);
    tp_generator_free(g);
    return all;
}

// qwen3 (per-head norms) and qwen2-tied (biases, no norms: the q/k/v kernel with RoPE and
// the cache writes) each through graphs.
static void graphs_case(const char *model) {
    tp_model *m = on_gpu(model, "bf16");
    if (!m) return;
    float *orig = malloc(m->n_floats * sizeof *orig);
    memcpy(orig, m->w, m->n_floats * sizeof *orig);
    unsigned long with = 0, without = 0;
    float *a = decode_run(m, orig, true, &with), *b = decode_run(m, orig, false, &without);
    // three runs of 8 steps at one shape and epoch: the first of each eager (the warm-up),
    // the second captured and launched, the rest replayed (a stale graph would make it 22)
    CHECK_MSG(with == 21 && without == 0, "%lu and %lu steps replayed as graphs", with, without);
    for (int step = 0; step < 24; step++) {
        size_t row = (size_t)3 * m->cfg.vocab_size, bytes = (size_t)(step < 8 ? 3 : 2) * m->cfg.vocab_size * 4;
        CHECK_MSG(!memcmp(a + step * row, b + step * row, bytes),
                  "%s step %d: logits through graphs differ from op by op", model, step);
    }
    printf("# graphs (%s): decode steps replayed as CUDA graphs give the eager steps' bits, also after new "
           "weights\n", model);
    free(a), free(b), free(orig);
    tp_model_free(m);
    CHECK_CUDA_OK();
}

static void test_graphs_match_eager(void) {
    NEED_GPU();
    graphs_case("qwen3");
    graphs_case("qwen2-tied");
}
#else
static void test_graphs_match_eager(void) { SKIP("built without CUDA"); }
static void test_cache_matches_cpu(void) { SKIP("built without CUDA"); }
static void test_greedy_matches_cpu(void) { SKIP("built without CUDA"); }
static void test_engine_seeded(void) { SKIP("built without CUDA"); }
#endif

int main(void) {
    RUN(test_cache_matches_cpu);
    RUN(test_greedy_matches_cpu);
    RUN(test_engine_seeded);
    RUN(test_graphs_match_eager);
    return TEST_SUMMARY();
}
