// Generation: the KV-cache forward against the training forward, shared prefill, batched
// decode, the sampler's distribution and filters, training-path log-probs, and greedy
// generation against transformers' generate() (tests/fixtures/generate, from
// tests/ref/make_generate_fixtures.py).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention_shared.h"
#include "cpu/head_screen.h"
#include "cpu/linear_bf16.h"
#include "generate.h"
#include "json.h"
#include "model.h"
#include "model_fixture.h"
#include "rng.h"
#include "sample.h"
#include "test.h"

#define FIX "tests/fixtures/model/"
static const char *CASES[] = {"qwen3", "qwen2-tied", "llama3", "llama3-tied"};

static double max_rel(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst / (scale > 0 ? scale : 1);
}


// Prefill 20 tokens, then decode 20 one at a time: every step's logits equal the full
// forward's at that position; a copied slot and a batched step give the same logits.
static void test_cache_matches_training_forward(void) {
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
        tp_model *m = fixture_load_model(FIX, CASES[c]);
        if (!m) continue;
        int T = 40, V = m->cfg.vocab_size;
        int32_t ids[40];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(test_rand() % (unsigned)V);
        float *ref = fixture_logits(m, ids, T);
        tp_err err;
        tp_generator *g = tp_generator_new(m, 3, 64, &err);
        CHECK_MSG(g, "%s", err.msg);
        if (!g) continue;
        int slot0[20] = {0}, last = 19;
        float *lg = malloc((size_t)3 * V * 4);
        CHECK(tp_generator_forward(g, 20, slot0, ids, 1, &last, lg, &err) == 0);
        double worst = max_rel(lg, ref + (size_t)19 * V, (size_t)V);
        tp_generator_copy(g, 1, 0, -1);  // slot 1 shares the prompt
        for (int t = 20; t < T; t++) {
            int slots[2] = {0, 1}, outs[2] = {0, 1};
            int32_t tok[2] = {ids[t], ids[t]};
            CHECK(tp_generator_forward(g, 2, slots, tok, 2, outs, lg, &err) == 0);
            worst = fmax(worst, max_rel(lg, ref + (size_t)t * V, (size_t)V));
            worst = fmax(worst, max_rel(lg + V, ref + (size_t)t * V, (size_t)V));
        }
        CHECK_MSG(worst <= 1e-5, "%s: cache logits differ from the training forward by %.3g", CASES[c], worst);
        CHECK(tp_generator_len(g, 0) == T && tp_generator_len(g, 1) == T);
        int over = 0, s2 = 2;
        for (int t = 0; t < 64; t++) over = over || tp_generator_forward(g, 1, &s2, ids, 0, NULL, NULL, &err) < 0;
        CHECK(!over);
        CHECK(tp_generator_forward(g, 1, &s2, ids, 0, NULL, NULL, &err) == -1);  // the 65th token
        CHECK_CONTAINS(err.msg, "exceed");
        printf("# %s: KV-cache logits within %.2g of the training forward\n", CASES[c], worst);
        free(ref), free(lg);
        tp_generator_free(g);
        tp_model_free(m);
    }
}

// Rounds x [n] to bf16 in place (the values a bf16 copy widens back to).
static void round_bf16(float *x, size_t n) {
    uint16_t *h = malloc(n * sizeof *h);
    weights_to_bf16(h, x, n);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)h[i] << 16;
        memcpy(&x[i], &u, sizeof u);
    }
    free(h);
}

// bf16 decode weights: prefill and decode through the bf16 copies give the logits of the
// training forward of a model whose matrices were rounded to bf16 (fp32 products on the
// same widened weights), and differ from the fp32 model's by bf16 rounding only.
static void test_bf16_decode_weights(void) {
    const char *untied[] = {"qwen3", "llama3"};  // (tied: the head is the fp32 embedding too)
    for (int c = 0; c < 2; c++) {
        tp_model *m = fixture_load_model(FIX, untied[c]), *r = fixture_load_model(FIX, untied[c]);
        if (!m || !r) continue;
        const tp_model_config *cfg = &r->cfg;
        size_t C = (size_t)cfg->hidden_size, F = (size_t)cfg->intermediate_size;
        size_t Q = (size_t)cfg->num_heads * cfg->head_dim, KV = (size_t)cfg->num_kv_heads * cfg->head_dim;
        for (int l = 0; l < cfg->num_layers; l++) {
            tp_layer_tensors *w = &r->W.layers[l];
            round_bf16(w->wq, Q * C), round_bf16(w->wk, KV * C), round_bf16(w->wv, KV * C), round_bf16(w->wo, C * Q);
            round_bf16(w->w_gate, F * C), round_bf16(w->w_up, F * C), round_bf16(w->w_down, C * F);
        }
        round_bf16(r->W.lm_head, (size_t)cfg->vocab_size * C);
        int T = 30, V = cfg->vocab_size;
        int32_t ids[30];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(test_rand() % (unsigned)V);
        float *ref = fixture_logits(r, ids, T), *fp32 = fixture_logits(m, ids, T), *lg = malloc((size_t)V * 4);
        tp_err err;
        tp_generator *g = tp_generator_new(m, 1, 64, &err);
        CHECK(g && tp_generator_bf16_weights(g, &err) == 0);
        int zero[10] = {0}, last = 9;
        CHECK(tp_generator_forward(g, 10, zero, ids, 1, &last, lg, &err) == 0);
        double worst = max_rel(lg, ref + (size_t)9 * V, (size_t)V), vs_fp32 = max_rel(lg, fp32 + (size_t)9 * V, (size_t)V);
        for (int t = 10; t < T; t++) {
            CHECK(tp_generator_forward(g, 1, zero, ids + t, 1, zero, lg, &err) == 0);
            worst = fmax(worst, max_rel(lg, ref + (size_t)t * V, (size_t)V));
            vs_fp32 = fmax(vs_fp32, max_rel(lg, fp32 + (size_t)t * V, (size_t)V));
        }
        CHECK_MSG(worst <= 1e-5 && vs_fp32 <= 5e-2 && vs_fp32 > 1e-4,
                  "%s: bf16 weights %.3g from the rounded model, %.3g from fp32", untied[c], worst, vs_fp32);
        printf("# %s: bf16 decode weights: logits within %.2g of the rounded model's forward, %.2g of fp32\n",
               untied[c], worst, vs_fp32);
        free(ref), free(fp32), free(lg);
        tp_generator_free(g);
        tp_model_free(m), tp_model_free(r);
    }
}

// A bf16 KV cache: decode logits within bf16 rounding of the training forward's (and not
// equal to them: the cache is read in bf16); a copied slot decoded beside the original
// gives its bits; the cache takes half the bytes a token.
static void test_bf16_kv_cache(void) {
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
        tp_model *m = fixture_load_model(FIX, CASES[c]);
        if (!m) continue;
        int T = 30, V = m->cfg.vocab_size;
        int32_t ids[30];
        for (int t = 0; t < T; t++) ids[t] = (int32_t)(test_rand() % (unsigned)V);
        float *ref = fixture_logits(m, ids, T), *lg = malloc((size_t)2 * V * 4);
        tp_err err;
        tp_generator *g = tp_generator_new_kv(m, 2, 64, true, &err);
        CHECK_MSG(g, "%s", err.msg);
        if (!g) continue;
        CHECK(tp_generator_kv_bytes_per_token(g) * 2 == tp_kv_bytes_per_token(m));
        int zero[10] = {0}, last = 9;
        CHECK(tp_generator_forward(g, 10, zero, ids, 1, &last, lg, &err) == 0);
        tp_generator_copy(g, 1, 0, -1);
        double worst = 0;
        bool same = true;
        for (int t = 10; t < T; t++) {
            int slots[2] = {0, 1}, outs[2] = {0, 1};
            int32_t tok[2] = {ids[t], ids[t]};
            CHECK(tp_generator_forward(g, 2, slots, tok, 2, outs, lg, &err) == 0);
            worst = fmax(worst, max_rel(lg, ref + (size_t)t * V, (size_t)V));
            same = same && !memcmp(lg, lg + V, (size_t)V * 4);
        }
        CHECK_MSG(worst <= 2e-2 && worst > 1e-7, "%s: bf16 cache logits %.3g from the training forward", CASES[c],
                  worst);
        CHECK_MSG(same, "%s: a copied slot decodes to other bits", CASES[c]);
        printf("# %s: bf16 KV cache: decode logits within %.2g of the training forward\n", CASES[c], worst);
        free(ref), free(lg);
        tp_generator_free(g);
        tp_model_free(m);
    }
}

// tp_model_logprobs is log_softmax(logits / T) of the training forward.
static void test_logprobs(void) {
    tp_model *m = fixture_load_model(FIX, "qwen3");
    if (!m) return;
    int T = 30, V = m->cfg.vocab_size;
    int32_t ids[30], rows[29], tg[29];
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(test_rand() % (unsigned)V);
    for (int t = 0; t + 1 < T; t++) rows[t] = t, tg[t] = ids[t + 1];
    float *ref = fixture_logits(m, ids, T);
    int32_t pos[30], seg[30] = {0};
    for (int t = 0; t < T; t++) pos[t] = t;
    tp_batch b = {1, T, ids, pos, seg, NULL};
    double lp[29];
    tp_err err;
    for (int k = 0; k < 2; k++) {
        float temp = k ? 0.7f : 1.0f;
        CHECK_MSG(tp_model_logprobs(m, &b, rows, tg, T - 1, temp, lp, &err) == 0, "%s", err.msg);
        for (int t = 0; t + 1 < T; t++) {
            const float *z = ref + (size_t)t * V;
            double mx = -INFINITY, s = 0;
            for (int j = 0; j < V; j++) mx = fmax(mx, z[j] / temp);
            for (int j = 0; j < V; j++) s += exp(z[j] / temp - mx);
            double want = z[tg[t]] / temp - mx - log(s);
            CHECK_MSG(fabs(lp[t] - want) <= 1e-5 * fmax(1, fabs(want)), "t %d: %.9g vs %.9g", t, lp[t], want);
        }
    }
    CHECK(tp_model_logprobs(m, &b, rows, tg, T - 1, 0.0f, lp, &err) == -1);
    // top_logprobs: the 5 best tokens of each row, best first, with their log-probs
    enum { K = 5 };
    int32_t top[29 * K];
    double top_lp[29 * K], lp2[29];
    CHECK(tp_model_logprobs_top(m, &b, rows, tg, T - 1, 1.0f, lp2, K, top, top_lp, &err) == 0);
    CHECK(tp_model_logprobs(m, &b, rows, tg, T - 1, 1.0f, lp, &err) == 0);
    CHECK(!memcmp(lp2, lp, sizeof lp));  // the same log-probs of the targets as without top-k
    for (int t = 0; t + 1 < T; t++) {
        const float *z = ref + (size_t)t * V;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, z[j]);
        for (int j = 0; j < V; j++) sum += exp(z[j] - mx);
        int better = 0;  // tokens strictly above the 5th best
        for (int j = 0; j < V; j++) better += z[j] > z[top[t * K + K - 1]];
        CHECK_MSG(better <= K - 1, "t %d: %d tokens beat the 5th best", t, better);
        for (int i = 0; i < K; i++) {
            double want = z[top[t * K + i]] - mx - log(sum);
            CHECK(fabs(top_lp[t * K + i] - want) <= 1e-5 * fmax(1, fabs(want)));
            if (i > 0) CHECK(top_lp[t * K + i] <= top_lp[t * K + i - 1]);
        }
    }
    free(ref);
    tp_model_free(m);
}

static void test_sampler(void) {
    enum { V = 6, DRAWS = 200000 };
    const float logits[V] = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f, 0.0f};
    tp_sample_scratch sc = {0};
    uint64_t rng = 7;
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1};
    CHECK(tp_sample(&greedy, logits, V, &rng, &sc) == 1);  // the first of the two maxima
    // Temperature 0.5: frequencies follow softmax(logits / 0.5).
    tp_sampler s = {.temperature = 0.5, .top_p = 1};
    int count[V] = {0};
    for (int i = 0; i < DRAWS; i++) count[tp_sample(&s, logits, V, &rng, &sc)]++;
    double z = 0, p[V];
    for (int j = 0; j < V; j++) z += exp(logits[j] / 0.5);
    for (int j = 0; j < V; j++) {
        p[j] = exp(logits[j] / 0.5) / z;
        double sd = sqrt(p[j] * (1 - p[j]) / DRAWS);
        CHECK_MSG(fabs((double)count[j] / DRAWS - p[j]) <= 5 * sd + 1e-9, "token %d: %.5f vs %.5f", j,
                  (double)count[j] / DRAWS, p[j]);
    }
    // top-k 2 keeps tokens 1 and 3 (equal); top-p 0.5 at T=1 keeps {1, 3} too (0.37 + 0.37 >= 0.5,
    // 0.37 alone is not); min-p 0.5 keeps p >= 0.5 p_max: tokens 1, 3 (token 0 has e^-1 = 0.37).
    tp_sampler filters[3] = {{.temperature = 1, .top_k = 2, .top_p = 1}, {.temperature = 1, .top_p = 0.5},
                             {.temperature = 1, .top_p = 1, .min_p = 0.5}};
    for (int f = 0; f < 3; f++) {
        int seen[V] = {0};
        for (int i = 0; i < 20000; i++) seen[tp_sample(&filters[f], logits, V, &rng, &sc)]++;
        CHECK_MSG(seen[1] > 9000 && seen[3] > 9000 && seen[1] + seen[3] == 20000, "filter %d: %d %d", f, seen[1],
                  seen[3]);
    }
    // The same seed, the same tokens.
    uint64_t a = 99, b = 99;
    for (int i = 0; i < 100; i++) CHECK(tp_sample(&s, logits, V, &a, &sc) == tp_sample(&s, logits, V, &b, &sc));
    tp_sample_scratch_free(&sc);
}

// Greedy decoding equals transformers' generate(do_sample=False) token for token (the
// fixtures keep every step's top-2 margin >= 1e-3 on the tiny models), and the training
// path's log-probs of those tokens are within 1e-4 of transformers'.
static void generate_case(const char *name, tp_model *m) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/generate/%s.jsonl", name);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f, "%s: missing", path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int V = m->cfg.vocab_size, prompts = 0;
    double worst_lp = 0;
    tp_err err;
    tp_sample_scratch sc = {0};
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1};
    while (getline(&line, &cap, f) > 0) {
        jv rec;
        if (tp_json_parse(line, strlen(line), &rec, &err) < 0) break;
        jv jp = jv_object_get(jv_copy(rec), jv_string("prompt")), jt = jv_object_get(jv_copy(rec), jv_string("tokens"));
        jv jl = jv_object_get(jv_copy(rec), jv_string("logprobs"));
        int P = jv_array_length(jv_copy(jp)), G = jv_array_length(jv_copy(jt));
        int32_t *all = malloc(sizeof(int32_t) * (size_t)(P + G));
        for (int i = 0; i < P; i++) all[i] = (int32_t)jv_number_value(jv_array_get(jv_copy(jp), i));
        tp_generator *g = tp_generator_new(m, 1, P + G + 1, &err);
        int *slots = calloc((size_t)(P + G), sizeof(int)), last = P - 1, zero = 0;
        float *lg = malloc((size_t)V * 4);
        CHECK(g && tp_generator_forward(g, P, slots, all, 1, &last, lg, &err) == 0);
        int agree = 0;
        for (int t = 0; t < G; t++) {
            int32_t tok = tp_sample(&greedy, lg, V, NULL, &sc), want = (int32_t)jv_number_value(jv_array_get(jv_copy(jt), t));
            if (tok != want) break;
            agree++;
            all[P + t] = tok;
            if (t + 1 < G) CHECK(tp_generator_forward(g, 1, &zero, &tok, 1, &zero, lg, &err) == 0);
        }
        CHECK_MSG(agree == G, "%s prompt %d: greedy tokens agree for %d of %d", name, prompts, agree, G);
        if (agree == G) {
            int32_t *pos = malloc(sizeof(int32_t) * (size_t)(P + G)), *seg = calloc((size_t)(P + G), 4);
            int32_t *rows = malloc(sizeof(int32_t) * (size_t)G);
            for (int i = 0; i < P + G; i++) pos[i] = i;
            for (int t = 0; t < G; t++) rows[t] = P - 1 + t;
            tp_batch b = {1, P + G, all, pos, seg, NULL};
            double *lp = malloc(sizeof(double) * (size_t)G);
            CHECK(tp_model_logprobs(m, &b, rows, all + P, G, 1.0f, lp, &err) == 0);
            for (int t = 0; t < G; t++)
                worst_lp = fmax(worst_lp, fabs(lp[t] - jv_number_value(jv_array_get(jv_copy(jl), t))));
            free(pos), free(seg), free(rows), free(lp);
        }
        prompts++;
        free(all), free(slots), free(lg);
        tp_generator_free(g);
        jv_free(jp), jv_free(jt), jv_free(jl), jv_free(rec);
    }
    free(line);
    fclose(f);
    tp_sample_scratch_free(&sc);
    CHECK(prompts == 3);
    CHECK_MSG(worst_lp <= 1e-4, "%s: log-probs differ from transformers' by %.3g", name, worst_lp);
    printf("# %s: %d prompts, 64 greedy tokens each equal to transformers; log-probs within %.2g\n", name, prompts,
           worst_lp);
}

static void test_greedy_matches_transformers(void) {
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) {
        tp_model *m = fixture_load_model(FIX, CASES[c]);
        if (m) generate_case(CASES[c], m);
        tp_model_free(m);
    }
}

static void test_smollm2_greedy(void) {
    char path[512];
    if (!test_find_smollm2(path, sizeof path)) SKIP("SmolLM2-135M-Instruct GGUF not found");
    FILE *f = fopen("tests/fixtures/generate/smollm2.jsonl", "r");
    if (!f) SKIP("no tests/fixtures/generate/smollm2.jsonl");
    fclose(f);
    tp_err err;
    tp_model *m = tp_model_load(path, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (m) generate_case("smollm2", m);
    tp_model_free(m);
}

// A model with 64-wide heads (the AVX-512 decode kernels' size), random weights.
static tp_model *hd64_model(void) {
    const char *cfg = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 300, "
                      "\"hidden_size\": 128, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
                      "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 64, "
                      "\"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
                      "\"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}";
    jv j;
    tp_err err;
    if (tp_json_parse(cfg, strlen(cfg), &j, &err) < 0) return NULL;
    tp_model *m = tp_model_new(j, &err);
    if (m) tp_model_init_weights(m, 7);
    return m;
}

// g[0] a generator as the environment leaves it, g[1] the same with `off`=0 (a switch read
// when a generator is made): the pair a test compares bit for bit.
static bool generators_with_and_without(tp_generator *g[2], const char *off, tp_model *m, int S, int cap, bool kv16) {
    tp_err err;
    g[0] = tp_generator_new_kv(m, S, cap, kv16, &err);
    setenv(off, "0", 1);
    g[1] = tp_generator_new_kv(m, S, cap, kv16, &err);
    unsetenv(off);
    CHECK_MSG(g[0] && g[1], "%s", err.msg);
    if (g[0] && g[1]) return true;
    tp_generator_free(g[0]), tp_generator_free(g[1]);
    return false;
}

// Samples of one prompt decoded from copies of its slot (whose attention reads the
// prompt's rows once for all of them) give the bits of the same calls with the sharing
// off (TP_SHARED_ROWS=0): fp32 and bf16 caches, 1 and 2 threads, through a copy of a
// copy, a reset of the source slot (its copies then share with the first of them) and its
// reuse for another prompt, a copy onto a slot that others share from, a truncation of a
// source into the shared rows, a copy of a slot onto itself, and a copy of more rows than
// its source shares whose source is then reset.
static void test_copies_share_rows(void) {
    tp_model *m = hd64_model();
    CHECK(m != NULL);
    if (!m) return;
    enum { S = 7, P = 40, STEPS = 30 };
    int V = m->cfg.vocab_size;
    int32_t prompt[P], other[P];
    for (int t = 0; t < P; t++) prompt[t] = (int32_t)(test_rand() % V), other[t] = (int32_t)(test_rand() % V);
    int slots[P], out = P - 1, all[S], outs[S];
    float *la = malloc(sizeof(float) * S * V), *lb = malloc(sizeof(float) * S * V);
    printf("# decode attention reads shared rows once here: %s\n", attention_decode_shares_rows(64, S) ? "yes" : "no");
    for (int kv16 = 0; kv16 < 2; kv16++)
        for (int threads = 1; threads <= 2; threads++) {
            omp_set_num_threads(threads);
            tp_err err;
            tp_generator *g[2];
            if (!generators_with_and_without(g, "TP_SHARED_ROWS", m, S, 128, kv16)) break;
            float *lg[2] = {la, lb};
            for (int i = 0; i < 2; i++) {
                for (int t = 0; t < P; t++) slots[t] = 0;
                CHECK(tp_generator_forward(g[i], P, slots, prompt, 1, &out, lg[i], &err) == 0);
                for (int s = 1; s < S - 1; s++) tp_generator_copy(g[i], s, 0, -1);
                for (int t = 0; t < P; t++) slots[t] = S - 1;
                CHECK(tp_generator_forward(g[i], P, slots, other, 1, &out, lg[i], &err) == 0);
            }
            int same = 0;
            for (int step = 0; step < STEPS; step++) {
                for (int i = 0; i < 2; i++) {
                    if (step == 4) tp_generator_copy(g[i], 3, 1, -1);  // a copy of a copy, rows past the prompt too
                    if (step == 8) {  // the source slot starts another prompt
                        tp_generator_reset(g[i], 0);
                        for (int t = 0; t < P; t++) slots[t] = 0;
                        CHECK(tp_generator_forward(g[i], P, slots, other, 1, &out, lg[i], &err) == 0);
                    }
                    if (step == 12) tp_generator_copy(g[i], 1, S - 1, 30);  // onto the slot the others now share from
                    if (step == 16) tp_generator_truncate(g[i], 2, 25);
                    if (step == 20) tp_generator_truncate(g[i], 6, 33);  // a source, into its shared rows
                    if (step == 24) tp_generator_copy(g[i], 4, 4, 35);
                    if (step == 26) tp_generator_copy(g[i], 3, 1, -1);  // past the rows 1 shares with 6
                    if (step == 27) tp_generator_reset(g[i], 1);         // 3 keeps its rows: they are its own
                }
                int32_t tok[S];
                for (int s = 0; s < S; s++) all[s] = s, outs[s] = s, tok[s] = (int32_t)(test_rand() % V);
                CHECK(tp_generator_forward(g[0], S, all, tok, S, outs, la, &err) == 0);
                CHECK(tp_generator_forward(g[1], S, all, tok, S, outs, lb, &err) == 0);
                same += !memcmp(la, lb, sizeof(float) * S * V);
            }
            CHECK_MSG(same == STEPS, "kv16 %d, %d threads: %d of %d steps with the same bits", kv16, threads, same,
                      STEPS);
            tp_generator_free(g[0]), tp_generator_free(g[1]);
        }
    omp_set_num_threads(omp_get_num_procs());
    free(la), free(lb);
    tp_model_free(m);
}

// Decode on the cpu in two parallel regions a layer (each thread normalising a share of
// the rows, its columns of every product with their residual and SwiGLU, a share of the
// tokens' RoPE and cache rows) gives the bits of the op-by-op path (TP_LAYER_REGIONS=0):
// every fixture (qk-norm, biases, tied and untied heads), bf16 and fp32 weights, fp32 and
// bf16 caches, 1 and 3 threads; prompts of 24 tokens in one call (fp32: past
// LINEAR_ROWS_MAX, op by op on both) and 12, then 10 decode steps of 3 tokens.
static void test_layer_regions(void) {
    enum { S = 3, P = 12, STEPS = 10 };
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int kv16 = 0; kv16 < 2; kv16++)
                for (int threads = 1; threads <= 3; threads += 2) {
                    tp_model *m = fixture_load_model(FIX, CASES[c]);
                    if (!m) continue;
                    omp_set_num_threads(threads);
                    int V = m->cfg.vocab_size;
                    tp_err err;
                    tp_generator *g[2];
                    if (!generators_with_and_without(g, "TP_LAYER_REGIONS", m, S, 64, kv16)) {
                        tp_model_free(m);
                        continue;
                    }
                    if (bf16)
                        CHECK(tp_generator_bf16_weights(g[0], &err) == 0 && tp_generator_bf16_weights(g[1], &err) == 0);
                    int slot[S * P], out[S], all[S];
                    int32_t prompt[S * P], tok[S];
                    for (int i = 0; i < S * P; i++) slot[i] = i / P, prompt[i] = (int32_t)(test_rand() % (unsigned)V);
                    for (int s = 0; s < S; s++) out[s] = s * P + P - 1, all[s] = s;
                    float *lg[2] = {malloc(sizeof(float) * S * V), malloc(sizeof(float) * S * V)};
                    int same = 0, last = P - 1;
                    for (int i = 0; i < 2; i++)
                        CHECK(tp_generator_forward(g[i], 2 * P, slot, prompt, 2, out, lg[i], &err) == 0);
                    same += !memcmp(lg[0], lg[1], sizeof(float) * 2 * V);
                    for (int i = 0; i < 2; i++)
                        CHECK(tp_generator_forward(g[i], P, slot + 2 * P, prompt + 2 * P, 1, &last, lg[i], &err) == 0);
                    same += !memcmp(lg[0], lg[1], sizeof(float) * V);
                    for (int step = 0; step < STEPS; step++) {
                        for (int s = 0; s < S; s++) tok[s] = (int32_t)(test_rand() % (unsigned)V);
                        for (int i = 0; i < 2; i++)
                            CHECK(tp_generator_forward(g[i], S, all, tok, S, all, lg[i], &err) == 0);
                        same += !memcmp(lg[0], lg[1], sizeof(float) * S * V);
                    }
                    CHECK_MSG(same == STEPS + 2, "%s, bf16 %d, kv16 %d, %d threads: %d of %d calls with the same bits",
                              CASES[c], bf16, kv16, threads, same, STEPS + 2);
                    free(lg[0]), free(lg[1]);
                    tp_generator_free(g[0]), tp_generator_free(g[1]);
                    tp_model_free(m);
                }
    omp_set_num_threads(omp_get_num_procs());
}

// Generators a and b (the same model of V tokens, S slots of >= P + steps + 1 tokens) are
// fed the same prompts of P ids (random in [lo, hi)) and then the tokens of a's argmax: a writes
// logits that tp_sample's greedy argmax takes, b runs argmax steps. Returns at how many of
// the steps their tokens differ; *exact: the rows b's screen computed exactly (if any).
static int argmax_vs_logits(tp_generator *a, tp_generator *b, int S, int P, int steps, int V, int lo, int hi,
                            long *exact) {
    tp_err err;
    int *slot = malloc(sizeof(int) * (size_t)S * P), *out = malloc(sizeof(int) * (size_t)S);
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)S * P), *tok = malloc(sizeof(int32_t) * (size_t)S),
            *top = malloc(sizeof(int32_t) * (size_t)S);
    for (int i = 0; i < S * P; i++) slot[i] = i / P, prompt[i] = (int32_t)(lo + test_rand() % (unsigned)(hi - lo));
    for (int s = 0; s < S; s++) out[s] = s * P + P - 1;
    float *lg = malloc(sizeof(float) * (size_t)S * V);
    CHECK(tp_generator_forward(a, S * P, slot, prompt, S, out, lg, &err) == 0);
    CHECK(tp_generator_forward_argmax(b, S * P, slot, prompt, S, out, top, &err) == 0);
    tp_sample_scratch sc = {0};
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1};
    int differ = 0;
    *exact = 0;
    for (int t = 0; t < steps; t++) {
        for (int s = 0; s < S; s++) tok[s] = tp_sample(&greedy, lg + (size_t)s * V, V, NULL, &sc);
        differ += memcmp(tok, top, sizeof(int32_t) * (size_t)S) != 0;
        for (int s = 0; s < S; s++) slot[s] = s, out[s] = s;
        CHECK(tp_generator_forward(a, S, slot, tok, S, out, lg, &err) == 0);
        CHECK(tp_generator_forward_argmax(b, S, slot, tok, S, out, top, &err) == 0);
        *exact += tp_generator_screened_rows(b) > 0 ? tp_generator_screened_rows(b) : 0;
    }
    tp_sample_scratch_free(&sc);
    free(slot), free(out), free(prompt), free(tok), free(top), free(lg);
    return differ;
}

// Argmax steps give the tokens that argmax over the same steps' logits gives, through the
// head's screen where the CPU can make one: bf16 and fp32 weights, 3 slots and 20 (past 16
// rows an fp32 call takes the full product: the BLAS's bits), 24 steps, each model.
static void test_argmax_steps(void) {
    float probe_w[4] = {1, 2, 3, 4};
    head_screen *probe = head_screen_new(probe_w, 1, 4);  // NULL: no AVX-512 VNNI here
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int S = 3; S <= 20; S += 17) {
                tp_model *m = fixture_load_model(FIX, CASES[c]);
                if (!m) continue;
                tp_err err;
                tp_generator *a = tp_generator_new(m, S, 64, &err), *b = tp_generator_new(m, S, 64, &err);
                CHECK(a && b);
                if (bf16) CHECK(tp_generator_bf16_weights(a, &err) == 0 && tp_generator_bf16_weights(b, &err) == 0);
                long exact;
                int V = m->cfg.vocab_size, differ = argmax_vs_logits(a, b, S, 9, 24, V, 0, V, &exact);
                CHECK_MSG(!differ, "%s %s, %d slots: argmax steps differ from the logits' argmax at %d of 24 steps",
                          CASES[c], bf16 ? "bf16" : "fp32", S, differ);
                CHECK(!probe || tp_generator_has_screen(b));
                CHECK(!probe || (S > 16 && !bf16) || exact > 0);  // the screen ran
                tp_generator_free(a), tp_generator_free(b);
                tp_model_free(m);
            }
    head_screen_free(probe);
}

// SmolLM2-135M-Instruct (a trained head, a hidden state with outlying dimensions): argmax
// steps give the logits' argmax over 8 sequences x 40 steps, through the screen (when the
// CPU has AVX-512 VNNI) that settles every row with a few rows a token computed exactly.
static void test_smollm2_argmax(void) {
    char path[512];
    if (!test_find_smollm2(path, sizeof path)) SKIP("SmolLM2-135M-Instruct GGUF not found");
    tp_err err;
    tp_model *m = tp_model_load(path, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (!m) return;
    enum { S = 8, P = 24, STEPS = 40 };
    tp_generator *a = tp_generator_new_kv(m, S, P + STEPS + 1, true, &err),
                 *b = tp_generator_new_kv(m, S, P + STEPS + 1, true, &err);
    CHECK(a && b && tp_generator_bf16_weights(a, &err) == 0 && tp_generator_bf16_weights(b, &err) == 0);
    long exact;
    int differ = argmax_vs_logits(a, b, S, P, STEPS, m->cfg.vocab_size, 200, 8200, &exact);  // ordinary tokens' ids
    CHECK_MSG(!differ, "argmax steps differ from the logits' argmax at %d of %d steps", differ, STEPS);
    float probe_w[4] = {1, 2, 3, 4};
    head_screen *probe = head_screen_new(probe_w, 1, 4);  // NULL: no AVX-512 VNNI here
    CHECK_MSG(!probe || tp_generator_has_screen(b), "the screen gave up on SmolLM2");
    head_screen_free(probe);
    if (tp_generator_has_screen(b)) {
        CHECK_MSG(exact > 0 && exact <= (long)S * STEPS * 64, "%ld rows computed exactly over %d rows", exact,
                  S * STEPS);
        printf("# smollm2: argmax steps through the head's screen, %.1f rows a token computed exactly\n",
               (double)exact / (S * STEPS));
    }
    tp_generator_free(a), tp_generator_free(b);
    tp_model_free(m);
}

int main(void) {
    RUN(test_cache_matches_training_forward);
    RUN(test_logprobs);
    RUN(test_bf16_decode_weights);
    RUN(test_bf16_kv_cache);
    RUN(test_sampler);
    RUN(test_greedy_matches_transformers);
    RUN(test_smollm2_greedy);
    RUN(test_copies_share_rows);
    RUN(test_layer_regions);
    RUN(test_argmax_steps);
    RUN(test_smollm2_argmax);
    return TEST_SUMMARY();
}
