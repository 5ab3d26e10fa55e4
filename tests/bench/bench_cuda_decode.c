// cuda_attention_decode on Qwen2.5-0.5B's attention shape (NH 14, KVH 2, HD 64): n
// sequences of len cached tokens, one new token each, as in a decode step of rollout.
// Prints the median time of 20 calls (L2 flushed before each, as the other layers of a
// step would) and the bandwidth of the KV cache read (n * len * KVH * HD * 2 * 4 bytes).
// Needs a GPU; without one (or without CUDA) it says so and exits 0. Not run by make
// bench.
#include <stdio.h>
#include <stdlib.h>

#ifdef TP_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda/cuda_ops.h"

enum { NH = 14, KVH = 2, HD = 64, REPS = 20 };

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// Median microseconds of one call; flush [flush_bytes] is rewritten before each.
static double time_case(int n, int len, void *flush, size_t flush_bytes) {
    size_t kv = (size_t)n * len * KVH * HD, nq = (size_t)n * NH * HD;
    float *k = cuda_alloc(kv * 4), *v = cuda_alloc(kv * 4), *q = cuda_alloc(nq * 4), *out = cuda_alloc(nq * 4);
    int32_t *row0 = malloc(n * sizeof *row0), *lens = malloc(n * sizeof *lens);
    int32_t *d_row0 = cuda_alloc(n * sizeof *row0), *d_len = cuda_alloc(n * sizeof *lens);
    if (!k || !v || !q || !out || !d_row0 || !d_len) {
        fprintf(stderr, "bench_cuda_decode: out of device memory\n");
        exit(1);
    }
    for (int i = 0; i < n; i++) row0[i] = i * len, lens[i] = len;
    cuda_upload(d_row0, row0, n * sizeof *row0), cuda_upload(d_len, lens, n * sizeof *lens);
    cudaMemset(k, 0x3c, kv * 4), cudaMemset(v, 0x3d, kv * 4), cudaMemset(q, 0x3e, nq * 4);  // ~0.01, 0.05, 0.2
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float t[REPS];
    for (int r = -3; r < REPS; r++) {
        cudaMemsetAsync(flush, r & 0xff, flush_bytes, 0);
        cudaEventRecord(e0, 0);
        cuda_attention_decode(out, q, k, v, d_row0, d_len, n, NH, KVH, HD, 0.125f);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (r >= 0) cudaEventElapsedTime(&t[r], e0, e1);
    }
    char err[512];
    if (cuda_take_error(err, sizeof err)) {
        fprintf(stderr, "bench_cuda_decode: %s\n", err);
        exit(1);
    }
    qsort(t, REPS, sizeof *t, cmp);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cuda_free(k), cuda_free(v), cuda_free(q), cuda_free(out), cuda_free(d_row0), cuda_free(d_len);
    free(row0), free(lens);
    return t[REPS / 2] * 1e3;
}

int main(void) {
    if (cuda_device_count() == 0) {
        printf("bench_cuda_decode: no GPU\n");
        return 0;
    }
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0) printf("# %s, NH %d KVH %d HD %d\n", name, NH, KVH, HD);
    size_t flush_bytes = (size_t)256 << 20;  // well above any L2
    void *flush = cuda_alloc(flush_bytes);
    if (!flush) return 1;
    const int ns[] = {1, 64, 256, 512}, lens[] = {512, 2048};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++) {
            int n = ns[a], len = lens[b];
            double us = time_case(n, len, flush, flush_bytes);
            double bytes = (double)n * len * KVH * HD * 2 * 4;
            printf("decode_attention n %d len %d us %.1f GB/s %.0f\n", n, len, us, bytes / (us * 1e-6) / 1e9);
        }
    cuda_free(flush);
    return 0;
}
#else
int main(void) {
    printf("bench_cuda_decode: built without CUDA\n");
    return 0;
}
#endif
