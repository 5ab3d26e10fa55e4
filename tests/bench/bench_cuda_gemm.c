// cuBLAS on the model's matrix shapes, in the ways the cuda backend could call it: fp32
// data with FAST_16BF or FAST_TF32 compute, bf16 operands into fp32 or bf16 outputs.
// Prints TFLOP/s (median of 10 after 3 warm-ups) per shape and way. Needs a GPU; without
// one (or without CUDA) it says so and exits 0. Run by tests/gpu-check.sh, not make bench.
#include <stdio.h>
#include <stdlib.h>

#ifdef TP_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// out^T [OC, N] = W^T' [OC, IC] · x^T [IC, N] (column-major view of out = x · W^T).
static float run(cublasHandle_t h, int N, int IC, int OC, cudaDataType ab, cudaDataType c, cublasComputeType_t comp,
                 void *x, void *w, void *out) {
    const float alpha = 1, beta = 0;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float t[10];
    for (int i = -3; i < 10; i++) {
        cudaEventRecord(e0, 0);
        cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, &alpha, w, ab, IC, x, ab, IC, &beta,
                                        out, c, OC, comp, CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (s != CUBLAS_STATUS_SUCCESS) return -1;
        if (i >= 0) cudaEventElapsedTime(&t[i], e0, e1);
    }
    qsort(t, 10, sizeof *t, cmp);
    return (float)(2.0 * N * IC * OC / (t[5] * 1e-3) / 1e12);
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("bench_cuda_gemm: no GPU\n");
        return 0;
    }
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    const struct { const char *name; int N, IC, OC; } shapes[] = {
        {"q_proj 0.5B", 8192, 896, 896},   {"up_proj 0.5B", 8192, 896, 4864}, {"down_proj 0.5B", 8192, 4864, 896},
        {"head chunk 0.5B", 441, 896, 151936}, {"up_proj 1.5B", 4096, 1536, 8960}, {"down_proj 1.5B", 4096, 8960, 1536},
    };
    size_t cap = (size_t)8192 * 151936;  // the largest buffer in elements
    void *x, *w, *out;
    if (cudaMalloc(&x, cap * 4) || cudaMalloc(&w, cap * 4) || cudaMalloc(&out, cap * 4)) return 1;
    cudaMemset(x, 0x3c, cap * 4), cudaMemset(w, 0x3c, cap * 4);  // ~0.01 in fp32, ~0.011 in bf16 pairs
    printf("%-18s %12s %12s %12s %12s  (TFLOP/s)\n", "shape", "f32 FAST_16BF", "f32 TF32", "bf16->f32", "bf16->bf16");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int N = shapes[i].N, IC = shapes[i].IC, OC = shapes[i].OC;
        printf("%-18s %12.1f %12.1f %12.1f %12.1f\n", shapes[i].name,
               run(h, N, IC, OC, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_16BF, x, w, out),
               run(h, N, IC, OC, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, x, w, out),
               run(h, N, IC, OC, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, x, w, out),
               run(h, N, IC, OC, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, x, w, out));
    }
    cudaFree(x), cudaFree(w), cudaFree(out);
    cublasDestroy(h);
    return 0;
}
#else
int main(void) {
    printf("bench_cuda_gemm: built without CUDA\n");
    return 0;
}
#endif
