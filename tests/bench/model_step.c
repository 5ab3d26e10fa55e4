// Training-step throughput (forward, backward, clipping, AdamW) of the model core on a Qwen3-shaped model, for
// tests/bench/bench_model.sh (which runs PyTorch on the same model beside it).
//   model_step CONFIG.json B T STEPS  -> prints "tokens/s X" and the median step time
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/gemm.h"
#include "input.h"
#include "json.h"
#include "model.h"
#include "optim.h"
#include "progress.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: model_step CONFIG.json B T STEPS [--recompute]\n");
        return 2;
    }
    int B = atoi(argv[2]), T = atoi(argv[3]), steps = atoi(argv[4]);
    bool recompute = argc > 5 && strcmp(argv[5], "--recompute") == 0;
    tp_err err;
    tp_buf text = {0};
    jv cfg;
    if (tp_input_read_all(argv[1], &text, &err) < 0 || tp_json_parse(text.data, text.len, &cfg, &err) < 0) {
        fprintf(stderr, "model_step: %s\n", err.msg);
        return 1;
    }
    tp_model *m = tp_model_new(cfg, &err);
    if (!m) {
        fprintf(stderr, "model_step: %s\n", err.msg);
        return 1;
    }
    m->recompute = recompute;
    tp_model_init_weights(m, 1);
    int N = B * T;
    int32_t *ids = malloc((size_t)N * 4), *pos = malloc((size_t)N * 4), *seg = malloc((size_t)N * 4);
    uint8_t *mask = malloc((size_t)N);
    uint64_t s = 42;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)m->cfg.vocab_size);
        pos[i] = i % T;
        seg[i] = i / T * T;
        mask[i] = 1;
    }
    tp_batch b = {B, T, ids, pos, seg, mask};
    tp_adamw opt;
    tp_adamw_init(&opt, m, 0.9, 0.999, 1e-8, 0.1);
    double *times = malloc((size_t)steps * sizeof *times);
    tp_loss loss;
    for (int k = -1; k < steps; k++) {  // one warm-up step
        double t0 = tp_now();
        tp_model_zero_grad(m);
        if (tp_model_forward_backward(m, &b, 0.0f, &loss, &err) < 0) {
            fprintf(stderr, "model_step: %s\n", err.msg);
            return 1;
        }
        tp_clip_grad_norm(m, 1.0);
        tp_adamw_update(&opt, m, 1e-4);
        if (k >= 0) times[k] = tp_now() - t0;
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    double med = times[steps / 2];
    printf("thinkpipe step %.3f s tokens/s %.1f loss %.4f params %zu gemm %s\n", med, N / med, loss.sum / loss.count,
           m->n_floats, tp_sgemm_backend());
    tp_adamw_free(&opt);
    tp_model_free(m);
    free(ids), free(pos), free(seg), free(mask), free(times);
    tp_buf_free(&text);
    return 0;
}
