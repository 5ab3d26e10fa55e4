// Training-step throughput (forward, backward, clipping, AdamW) of the model core, for
// tests/bench/bench_model.sh (CPU) and tests/gpu-check.sh (CUDA), which run PyTorch on the
// same model beside it.
//   model_step CONFIG.json B T STEPS [--recompute] [--device cpu|cuda] [--matmul fp32|tf32|bf16] [--accum A]
//   -> "thinkpipe step S tokens/s X ... devmem_mb M" (M: device memory the run took, cuda only)
// --accum A: A micro-batches of B x T a step, their gradients added before one clipping and
// AdamW update (what an SFT run with a global batch of A·B sequences does; the optimizer's
// fixed cost a step is shared by A times the tokens).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_median.h"
#include "backend.h"
#include "cpu/gemm.h"
#include "input.h"
#include "json.h"
#include "model.h"
#include "optim.h"
#include "progress.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr,
                "usage: model_step CONFIG.json B T STEPS [--recompute] [--device D] [--matmul P] [--accum A]\n");
        return 2;
    }
    int B = atoi(argv[2]), T = atoi(argv[3]), steps = atoi(argv[4]), accum = 1;
    bool recompute = false;
    const char *device = "cpu", *matmul = "bf16";
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "--recompute")) recompute = true;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else if (!strcmp(argv[i], "--matmul") && i + 1 < argc) matmul = argv[++i];
        else if (!strcmp(argv[i], "--accum") && i + 1 < argc) accum = atoi(argv[++i]);
        else {
            fprintf(stderr, "model_step: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (B < 1 || T < 2 || steps < 1 || accum < 1) {
        fprintf(stderr, "model_step: B %d, T %d, STEPS %d and --accum %d must be positive (T at least 2)\n", B, T,
                steps, accum);
        return 2;
    }
    tp_err err;
    const tp_backend *be = tp_backend_named(device, &err);
    if (!be) {
        fprintf(stderr, "model_step: %s\n", err.msg);
        return 1;
    }
    tp_backend_set_matmul(be, matmul);
    size_t free_before = be->free_bytes();
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
    if (tp_model_use_backend(m, be, true, &err) < 0) {
        fprintf(stderr, "model_step: %s\n", err.msg);
        return 1;
    }
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
        for (int a = 0; a < accum; a++)  // the mean over all A·B·(T-1) targets
            if (tp_model_forward_backward(m, &b, 1.0f / ((float)accum * B * (T - 1)), &loss, &err) < 0) {
                fprintf(stderr, "model_step: %s\n", err.msg);
                return 1;
            }
        tp_clip_grad_norm(m, 1.0);
        tp_adamw_update(&opt, m, 1e-4);
        char msg[512];
        if (be->sync(msg, sizeof msg) < 0) {  // the step is done when the device is
            fprintf(stderr, "model_step: %s\n", msg);
            return 1;
        }
        if (k >= 0) times[k] = tp_now() - t0;
    }
    double med = bench_median(times, steps);
    // Model FLOPs per token, as tests/bench/torch_gpu_step.py counts them: 6 per matrix weight (the
    // embedding lookup excluded, the output head included) plus causal attention's 6·L·T·NH·HD.
    const tp_model_config *c = &m->cfg;
    double matrix = (double)m->n_floats - (c->tie_word_embeddings ? 0.0 : (double)c->vocab_size * c->hidden_size);
    double flops = 6 * matrix + 6.0 * c->num_layers * T * c->num_heads * c->head_dim;
    const char *peak_env = getenv("TP_PEAK_TFLOPS");
    double peak = peak_env ? atof(peak_env) : 989.0;  // H100 SXM dense bf16
    double mfu = flops * N * accum / med / (peak * 1e12);
    // Nothing is freed during a step, so what the run took from the device is its peak.
    double devmem_mb = be->device ? (double)(free_before - be->free_bytes()) / (1 << 20) : 0;
    printf("thinkpipe step %.3f s tokens/s %.1f loss %.4f params %zu devmem_mb %.0f mfu %.3f gemm %s accum %d\n", med,
           (double)N * accum / med, loss.sum / loss.count, m->n_floats, devmem_mb, mfu,
           be->device ? matmul : tp_sgemm_backend(), accum);
    tp_adamw_free(&opt);
    tp_model_free(m);
    free(ids), free(pos), free(seg), free(mask), free(times);
    tp_buf_free(&text);
    return 0;
}
