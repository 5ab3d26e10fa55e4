// Generation speed of the model core's KV-cache engine (libcore/generate.h) on a model of
// the given config with random weights, for tests/bench/bench_generate.sh (which runs
// transformers' generate beside it): prefill of B prompts of P tokens, then D greedy
// decode steps of B sequences together.
//   gen_step CONFIG.json B P D [bf16] [kv-bf16] [argmax]
//     -> "thinkpipe gen batch B prefill_tok/s X decode_tok/s Y kv_bytes_per_token Z"
// bf16: decode with bf16 copies of the weights (rollout --matmul bf16 on the cpu);
// kv-bf16: a bf16 KV cache (rollout --kv-cache bf16); argmax: decode steps keep only each
// row's argmax (tp_generator_forward_argmax, as rollout's greedy steps run) instead of
// writing logits for tp_sample to take it from.
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_median.h"
#include "generate.h"
#include "input.h"
#include "json.h"
#include "model.h"
#include "progress.h"
#include "sample.h"

int main(int argc, char **argv) {
    bool bf16 = false, kv16 = false, top = false, bad = argc < 5;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "bf16")) bf16 = true;
        else if (!strcmp(argv[i], "kv-bf16")) kv16 = true;
        else if (!strcmp(argv[i], "argmax")) top = true;
        else bad = true;
    }
    if (bad) {
        fprintf(stderr, "usage: gen_step CONFIG.json B P D [bf16] [kv-bf16] [argmax]\n");
        return 2;
    }
    int B = atoi(argv[2]), P = atoi(argv[3]), D = atoi(argv[4]);
    tp_err err;
    tp_buf text = {0};
    jv cfg;
    if (tp_input_read_all(argv[1], &text, &err) < 0 || tp_json_parse(text.data, text.len, &cfg, &err) < 0) {
        fprintf(stderr, "gen_step: %s\n", err.msg);
        return 1;
    }
    tp_model *m = tp_model_new(cfg, &err);
    if (!m) {
        fprintf(stderr, "gen_step: %s\n", err.msg);
        return 1;
    }
    tp_model_init_weights(m, 1);
    int V = m->cfg.vocab_size;
    tp_generator *g = tp_generator_new_kv(m, B, P + D + 1, kv16, &err);
    if (g && bf16 && tp_generator_bf16_weights(g, &err) < 0) g = NULL;
    if (!g) {
        fprintf(stderr, "gen_step: %s\n", err.msg);
        return 1;
    }
    int *slot = malloc(sizeof(int) * (size_t)B * P), *out = malloc(sizeof(int) * (size_t)B);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * P);
    float *logits = malloc(sizeof(float) * (size_t)B * V);
    uint64_t s = 42;
    for (int i = 0; i < B * P; i++) slot[i] = i / P, tok[i] = (int32_t)((s = s * 6364136223846793005ull + 1) >> 40) % V;
    for (int b = 0; b < B; b++) out[b] = b * P + P - 1;
    double t0 = tp_now();
    if (tp_generator_forward(g, B * P, slot, tok, B, out, logits, &err) < 0) {
        fprintf(stderr, "gen_step: %s\n", err.msg);
        return 1;
    }
    double prefill = tp_now() - t0;
    tp_sample_scratch sc = {0};
    tp_sampler greedy = {.greedy = true, .temperature = 1, .top_p = 1};
    float *first = malloc(sizeof(float) * (size_t)B * V);  // the prompts' logits, the start of every repeat
    memcpy(first, logits, sizeof(float) * (size_t)B * V);
    // The decode steps run `repeats` times from the same prompts (each slot cut back to its
    // prompt); the median repeat is reported: this machine is shared and noisy.
    const char *rep = getenv("GEN_REPEATS");
    int repeats = rep && atoi(rep) > 0 ? atoi(rep) : 1;
    double *took = malloc(sizeof(double) * (size_t)repeats);
    for (int r = 0; r < repeats; r++) {
        for (int b = 0; b < B; b++) slot[b] = b, out[b] = b, tp_generator_truncate(g, b, P);
        memcpy(logits, first, sizeof(float) * (size_t)B * V);
        for (int b = 0; b < B; b++) tok[b] = tp_sample(&greedy, logits + (size_t)b * V, V, NULL, &sc);
        t0 = tp_now();
        for (int d = 0; d < D; d++) {
            if (!top)
                for (int b = 0; b < B; b++) tok[b] = tp_sample(&greedy, logits + (size_t)b * V, V, NULL, &sc);
            int rc = top ? tp_generator_forward_argmax(g, B, slot, tok, B, out, tok, &err)
                         : tp_generator_forward(g, B, slot, tok, B, out, logits, &err);
            if (rc < 0) {
                fprintf(stderr, "gen_step: %s\n", err.msg);
                return 1;
            }
        }
        took[r] = tp_now() - t0;
    }
    double decode = bench_median(took, repeats);
    free(took), free(first);
    printf("thinkpipe gen%s%s%s batch %d prefill_tok/s %.1f decode_tok/s %.1f kv_bytes_per_token %zu\n", bf16 ? "-bf16" : "",
           kv16 ? "-kv16" : "", top ? "-argmax" : "", B, B * P / prefill, (double)B * D / decode, tp_generator_kv_bytes_per_token(g));
    tp_sample_scratch_free(&sc);
    free(slot), free(out), free(tok), free(logits);
    tp_generator_free(g);
    tp_model_free(m);
    tp_buf_free(&text);
    return 0;
}
