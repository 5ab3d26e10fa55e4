// Aggregate generation speed of the engine (libcore/engine.h) on a model of the given config
// with random weights: B sequences as B/G requests of G samples sharing a prompt of P
// tokens, D new tokens each (EOS ignored), sampled (temperature 1, top-p 0.95) or greedy.
// For tests/gpu-check.sh and tests/bench, beside tests/bench/torch_gpu_generate.py.
//   engine_bench CONFIG.json B G P D [--device cpu|cuda] [--matmul P] [--kv-cache fp32|bf16] [--greedy]
//   -> "thinkpipe engine batch B group G prompt P new D tok/s X decode_tok/s Y prefill_s Z
//       weights_gb W copy_gb/s C roofline_tok/s R"
// tok/s counts every generated token over the whole run (prefills included); decode_tok/s
// the steps alone. roofline: one decode step must read every weight once (bf16 products
// read bf16 copies), so a batch-1 step takes at least weights / copy bandwidth.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "engine.h"
#include "input.h"
#include "json.h"
#include "model.h"
#include "progress.h"

static double copy_bandwidth(const tp_backend *be) {
    size_t bytes = (size_t)1 << 30;
    void *a = be->alloc(bytes), *b = be->alloc(bytes);
    if (!a || !b) return 0;
    be->memzero(a, bytes);
    char msg[256];
    be->copy(b, a, bytes), be->sync(msg, sizeof msg);
    double t0 = tp_now();
    for (int i = 0; i < 5; i++) be->copy(b, a, bytes);
    be->sync(msg, sizeof msg);
    double t = tp_now() - t0;
    be->free(a), be->free(b);
    return 2.0 * 5 * bytes / t / 1e9;  // bytes read + written: what memory moves a second
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: engine_bench CONFIG.json B G P D [--device D] [--matmul P] [--kv-cache K] [--greedy]\n");
        return 2;
    }
    int B = atoi(argv[2]), G = atoi(argv[3]), P = atoi(argv[4]), D = atoi(argv[5]);
    const char *device = "cpu", *matmul = NULL;
    bool greedy = false, kv16 = false;
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--kv-cache") && i + 1 < argc) kv16 = !strcmp(argv[++i], "bf16");
        else if (!strcmp(argv[i], "--matmul") && i + 1 < argc) matmul = argv[++i];
        else if (!strcmp(argv[i], "--greedy")) greedy = true;
        else return fprintf(stderr, "engine_bench: unknown argument %s\n", argv[i]), 2;
    }
    if (B < 1 || G < 1 || B % G || P < 1 || D < 1) return fprintf(stderr, "engine_bench: B must be a multiple of G\n"), 2;
    tp_err err;
    tp_buf text = {0};
    jv cfg;
    tp_model *m = NULL;
    char desc[300];
    if (tp_input_read_all(argv[1], &text, &err) < 0 || tp_json_parse(text.data, text.len, &cfg, &err) < 0 ||
        !(m = tp_model_new(cfg, &err))) {
        fprintf(stderr, "engine_bench: %s\n", err.msg);
        return 1;
    }
    tp_model_init_weights(m, 1);
    if (tp_model_place(m, device, matmul, false, desc, sizeof desc, &err) < 0) {
        fprintf(stderr, "engine_bench: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "engine_bench: %s\n", desc);
    const tp_backend *be = tp_model_backend(m);
    // bf16 products: on a device by default; on the cpu with --matmul bf16, from bf16 copies
    // of the weights as rollout and serve make them
    bool bf16 = be->device ? !matmul || !strcmp(matmul, "bf16") : matmul && !strcmp(matmul, "bf16");
    double weights_gb = (double)m->n_floats * (bf16 ? 2 : 4) / 1e9, bw = be->device ? copy_bandwidth(be) : 0;
    int32_t no_eos = -1;
    tp_engine_opts eo = {.max_batch = B, .max_len = P + D + 1, .eos = &no_eos, .n_eos = 0,
                         .bf16_weights = !be->device && bf16, .kv_bf16 = kv16, .greedy = greedy};
    tp_request_opts ro = {.sampler = {.greedy = greedy, .temperature = 1.0, .top_p = greedy ? 1.0 : 0.95}, .n = G,
                          .max_new = D, .seed = 1, .ignore_eos = true};
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)P);
    uint64_t s = 42;
    double best_tok = 0, best_decode = 0, best_prefill = 0;
    for (int rep = 0; rep < 2; rep++) {  // the first run warms up (cuBLAS, bf16 weight copies)
        tp_engine *e = tp_engine_new(m, NULL, &eo, &err);
        if (!e) return fprintf(stderr, "engine_bench: %s\n", err.msg), 1;
        double t0 = tp_now(), prefill = 0, steps = 0;
        long tokens = 0;
        for (int r = 0; r < B / G; r++) {
            for (int i = 0; i < P; i++) prompt[i] = (int32_t)((s = s * 6364136223846793005ull + 1) >> 40) % m->cfg.vocab_size;
            double t1 = tp_now();
            if (!tp_engine_submit(e, prompt, P, &ro, NULL, &err)) return fprintf(stderr, "engine_bench: %s\n", err.msg), 1;
            prefill += tp_now() - t1;
            tokens += G;
        }
        int n;
        double t2 = tp_now();
        while ((n = tp_engine_step(e, &err)) > 0) tokens += n;
        steps = tp_now() - t2;
        if (n < 0) return fprintf(stderr, "engine_bench: %s\n", err.msg), 1;
        tp_request *r;
        while ((r = tp_engine_next_done(e))) tp_request_free(r);
        double total = tp_now() - t0;
        if (tokens != (long)B * D) fprintf(stderr, "engine_bench: %ld tokens, expected %ld\n", tokens, (long)B * D);
        best_tok = tokens / total > best_tok ? tokens / total : best_tok;
        double dt = (double)B * (D - 1) / steps;
        best_decode = dt > best_decode ? dt : best_decode;
        best_prefill = rep == 0 || prefill < best_prefill ? prefill : best_prefill;
        tp_engine_free(e);
    }
    printf("thinkpipe engine batch %d group %d prompt %d new %d tok/s %.1f decode_tok/s %.1f prefill_s %.3f "
           "weights_gb %.3f copy_gb/s %.0f roofline_tok/s %.0f\n",
           B, G, P, D, best_tok, best_decode, best_prefill, weights_gb, bw, bw > 0 ? bw / weights_gb : 0);
    free(prompt);
    tp_model_free(m);
    tp_buf_free(&text);
    return 0;
}
