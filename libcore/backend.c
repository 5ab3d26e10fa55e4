// backend.c — the cpu and cuda backend tables.
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#endif

static void *host_alloc(size_t bytes) { return malloc(bytes ? bytes : 1); }
static void host_memzero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void host_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static int host_sync(char *err, int cap) {
    (void)err, (void)cap;
    return 0;
}
static size_t host_free_bytes(void) { return 0; }

static const tp_backend CPU = {
    .name = "cpu",
    .device = false,
    .head_chunk_floats = (size_t)1 << 23,  // 32 MB: stays in the last-level cache's neighbourhood
    .alloc = host_alloc,
    .free = free,
    .memzero = host_memzero,
    .upload = host_copy,
    .download = host_copy,
    .sync = host_sync,
    .free_bytes = host_free_bytes,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .linear_forward = linear_forward,
    .linear_backward = linear_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .add_inplace = add_inplace,
    .gather_rows = gather_rows,
    .scatter_add_rows = scatter_add_rows,
    .crossentropy_forward_backward = crossentropy_forward_backward,
    .adamw_span = adamw_span,
    .sum_squares = sum_squares,
    .scale = scale_inplace,
};

const tp_backend *tp_backend_cpu(void) { return &CPU; }

#ifdef TP_HAVE_CUDA
static const tp_backend CUDA = {
    .name = "cuda",
    .device = true,
    .head_chunk_floats = (size_t)1 << 26,  // 256 MB: fewer, larger products and loss syncs
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memzero = cuda_memzero,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_take_error,
    .free_bytes = cuda_free_bytes,
    .embedding_forward = cuda_embedding_forward,
    .embedding_backward = cuda_embedding_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .linear_forward = cuda_linear_forward,
    .linear_backward = cuda_linear_backward,
    .rope_forward = cuda_rope_forward,
    .rope_backward = cuda_rope_backward,
    .attention_forward = cuda_attention_forward,
    .attention_backward = cuda_attention_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .add_inplace = cuda_add_inplace,
    .gather_rows = cuda_gather_rows,
    .scatter_add_rows = cuda_scatter_add_rows,
    .crossentropy_forward_backward = cuda_crossentropy_forward_backward,
    .adamw_span = cuda_adamw_span,
    .sum_squares = cuda_sum_squares,
    .scale = cuda_scale,
};
#endif

const tp_backend *tp_backend_named(const char *name, tp_err *err) {
    if (!strcmp(name, "cpu")) return &CPU;
    if (strcmp(name, "cuda") && strcmp(name, "auto")) {
        tp_err_set(err, "unknown device '%s' (cpu, cuda or auto)", name);
        return NULL;
    }
#ifdef TP_HAVE_CUDA
    if (cuda_device_count() > 0) return &CUDA;
    if (!strcmp(name, "auto")) return &CPU;
    tp_err_set(err, "--device cuda: no CUDA GPU is visible (no device, or no driver); use --device cpu");
#else
    if (!strcmp(name, "auto")) return &CPU;
    tp_err_set(err, "--device cuda: this build has no CUDA support (nvcc was not found when it was built)");
#endif
    return NULL;
}

int tp_backend_set_matmul(const tp_backend *be, const char *precision) {
    if (strcmp(precision, "fp32") && strcmp(precision, "tf32") && strcmp(precision, "bf16")) return -1;
#ifdef TP_HAVE_CUDA
    if (be == &CUDA) return cuda_set_matmul_precision(precision);
#endif
    (void)be;
    return 0;
}

void tp_backend_describe(const tp_backend *be, char *buf, int cap) {
#ifdef TP_HAVE_CUDA
    char dev[200];
    if (be == &CUDA && cuda_device_describe(dev, sizeof dev) == 0) {
        snprintf(buf, (size_t)cap, "cuda: %s", dev);
        return;
    }
#endif
    snprintf(buf, (size_t)cap, "%s", be->name);
}
