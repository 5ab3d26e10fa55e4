// mlp.cu — the MLP block of a training step, its F-wide tensors in bf16 (ops.h: mlp_*).
//
// gate, up and act, and the backward's dact, dgate and dup, are [N, F] with F about 5.4x
// the hidden size: most of a layer's activation bytes. Stored in fp32, each was written in
// fp32 and then read again by every product that took it, to be rounded to bf16 in a
// scratch copy. With bf16 products they are kept in bf16, as torch's autocast keeps them:
// the products write them directly (cuBLASLt's output in bf16, rounded to nearest even)
// and read them as they are, and SwiGLU reads and writes bf16 with fp32 arithmetic. That
// halves their memory and, by our count, cuts the traffic per [N, F] element of a layer
// from about 80 bytes to 34 (forward 28 -> 12, backward 52 -> 22). The block's input x (the
// attention block's ln2, attn.cu) is bf16 too. With TP_CUDA_ACT16=0, or fp32 or tf32
// products, they stay fp32, through the single ops.
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/product.h"

#include <cuda_bf16.h>
#include <cstdlib>
#include <cstring>

static int act16_forced = -1;  // cuda_set_act16: -1 the default (TP_CUDA_ACT16)

bool cuda_act16(void) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("TP_CUDA_ACT16");
        env = !(e && !strcmp(e, "0"));
    }
    return cuda_matmul_bf16() && (act16_forced >= 0 ? act16_forced : env);
}

extern "C" void cuda_set_act16(int on) { act16_forced = on < 0 ? -1 : on != 0; }
extern "C" size_t cuda_act_bytes(void) { return cuda_act16() ? 2 : 4; }

// ---- SwiGLU on bf16: out = silu(gate) * up, the fp32 kernel's formula ----

enum { THREADS = 256, PER_THREAD = 8 };  // 8 bf16: one 16-byte load a tensor

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <bool BACKWARD> struct swiglu16_math;
template <> struct swiglu16_math<false> {  // a = out
    static __device__ void apply(float g, float u, float, float *a, float *) { *a = g * sigmoid(g) * u; }
};
template <> struct swiglu16_math<true> {  // d = dout; a = dgate, b = dup
    static __device__ void apply(float g, float u, float d, float *a, float *b) {
        float sig = sigmoid(g);
        *b = d * g * sig;
        *a = d * u * sig * (1.0f + g * (1.0f - sig));
    }
};

// Element i. forward: out1 = act (out2, dout unused); backward: out1 = dgate, out2 = dup.
template <bool BACKWARD>
__device__ __forceinline__ void swiglu16_element(__nv_bfloat16 *out1, __nv_bfloat16 *out2, const __nv_bfloat16 *dout,
                                                 const __nv_bfloat16 *gate, const __nv_bfloat16 *up, long i) {
    float a = 0.0f, b = 0.0f, d = BACKWARD ? __bfloat162float(dout[i]) : 0.0f;
    swiglu16_math<BACKWARD>::apply(__bfloat162float(gate[i]), __bfloat162float(up[i]), d, &a, &b);
    out1[i] = __float2bfloat16(a);
    if (BACKWARD) out2[i] = __float2bfloat16(b);
}

union bf16x8 {
    uint4 v;
    __nv_bfloat16 e[PER_THREAD];
};

// A thread takes 8 elements: VEC, with 16-byte loads and stores (every pointer 16-byte
// aligned), the last thread's short run one at a time; else one at a time throughout.
template <bool BACKWARD, bool VEC>
__global__ void swiglu16_kernel(__nv_bfloat16 *out1, __nv_bfloat16 *out2, const __nv_bfloat16 *dout,
                                const __nv_bfloat16 *gate, const __nv_bfloat16 *up, long n) {
    const long i0 = ((long)blockIdx.x * blockDim.x + threadIdx.x) * PER_THREAD;
    if (!VEC || i0 + PER_THREAD > n) {
        for (long i = i0; i < n && i < i0 + PER_THREAD; i++) swiglu16_element<BACKWARD>(out1, out2, dout, gate, up, i);
        return;
    }
    bf16x8 g, u, d, a, b;
    g.v = *(const uint4 *)(gate + i0), u.v = *(const uint4 *)(up + i0);
    if (BACKWARD) d.v = *(const uint4 *)(dout + i0);
#pragma unroll
    for (int j = 0; j < PER_THREAD; j++) {
        float fa = 0.0f, fb = 0.0f, fd = BACKWARD ? __bfloat162float(d.e[j]) : 0.0f;
        swiglu16_math<BACKWARD>::apply(__bfloat162float(g.e[j]), __bfloat162float(u.e[j]), fd, &fa, &fb);
        a.e[j] = __float2bfloat16(fa), b.e[j] = __float2bfloat16(fb);
    }
    *(uint4 *)(out1 + i0) = a.v;
    if (BACKWARD) *(uint4 *)(out2 + i0) = b.v;
}

static bool aligned16(const void *p) { return p == NULL || ((uintptr_t)p & 15) == 0; }

template <bool BACKWARD>
static void swiglu16(void *out1, void *out2, const void *dout, const void *gate, const void *up, long n) {
    if (n <= 0) return;
    auto o1 = (__nv_bfloat16 *)out1, o2 = (__nv_bfloat16 *)out2;
    auto d = (const __nv_bfloat16 *)dout, g = (const __nv_bfloat16 *)gate, u = (const __nv_bfloat16 *)up;
    const unsigned blocks = cuda_blocks((n + PER_THREAD - 1) / PER_THREAD, THREADS);
    if (aligned16(o1) && aligned16(o2) && aligned16(d) && aligned16(g) && aligned16(u))
        swiglu16_kernel<BACKWARD, true><<<blocks, THREADS, 0, cuda_stream()>>>(o1, o2, d, g, u, n);
    else
        swiglu16_kernel<BACKWARD, false><<<blocks, THREADS, 0, cuda_stream()>>>(o1, o2, d, g, u, n);
    CUDA_LAUNCH_CHECK();
}

// ---- the block ----
// Products in the column-major view of linear.cu (x [N, IC] is x^T [IC x N], W [OC, IC] is
// W^T [IC x OC]):
//   out^T [OC, N]   = W^T' · x^T    m=OC n=N  k=IC  A=W  (T), B=x    (N)
//   dx^T  [IC, N]   = W · dout^T    m=IC n=N  k=OC  A=W  (N), B=dout (N)
//   dW^T  [IC, OC] += x^T · dout    m=IC n=OC k=N   A=x  (N), B=dout (T)

static cuda_operand weight(const float *w) { return {w, false, true, false}; }
static cuda_operand fp32(const float *x, bool reuse) { return {x, false, false, reuse}; }
static cuda_operand bf16(const void *x) { return {x, true, false, false}; }

extern "C" void cuda_mlp_up_forward(void *act, void *gate, void *up, const void *x, const float *w_gate,
                                    const float *w_up, int N, int C, int F) {
    if (N <= 0 || F <= 0) return;
    if (!cuda_act16()) {
        float *const outs[2] = {(float *)gate, (float *)up};
        const float *const ws[2] = {w_gate, w_up}, *const bs[2] = {NULL, NULL};
        const int ocs[2] = {F, F};
        cuda_linear_forward_many(2, outs, (const float *)x, ws, bs, ocs, N, C);
        cuda_profile_part("linear_forward");
        cuda_swiglu_forward((float *)act, (const float *)gate, (const float *)up, (long)N * F);
        cuda_profile_part("swiglu_forward");
        return;
    }
    // x (the attention block's ln2) is bf16 already
    cuda_product_bf16(true, false, F, N, C, weight(w_gate), C, bf16(x), C, 0.0f, gate, true, F, NULL, NULL);
    cuda_product_bf16(true, false, F, N, C, weight(w_up), C, bf16(x), C, 0.0f, up, true, F, NULL, NULL);
    cuda_profile_part("linear_forward");
    swiglu16<false>(act, NULL, NULL, gate, up, (long)N * F);
    cuda_profile_part("swiglu_forward");
}

extern "C" void cuda_mlp_down_forward(float *out, const void *act, const float *w_down, const float *residual, int N,
                                      int F, int C) {
    if (N <= 0) return;
    if (!cuda_act16()) {
        cuda_linear_residual_forward(out, (const float *)act, w_down, NULL, residual, N, F, C);
        return;
    }
    cuda_product_bf16(true, false, C, N, F, weight(w_down), F, bf16(act), F, 0.0f, out, false, C, NULL, residual);
}

extern "C" void cuda_mlp_backward(float *dx, float *dw_gate, float *dw_up, float *dw_down, const float *dout,
                                  const void *x, const void *act, const void *gate, const void *up,
                                  const float *w_gate, const float *w_up, const float *w_down, void *dact, void *dgate,
                                  void *dup, int N, int C, int F) {
    if (N <= 0) return;
    if (!cuda_act16()) {
        const float *const d1[1] = {dout}, *const w1[1] = {w_down};
        float *const g1[1] = {dw_down};
        const int oc1[1] = {C};
        cuda_linear_backward_many(1, (float *)dact, g1, NULL, d1, (const float *)act, w1, oc1, N, F);
        cuda_profile_part("linear_backward");
        cuda_swiglu_backward((float *)dgate, (float *)dup, (const float *)dact, (const float *)gate,
                             (const float *)up, (long)N * F);
        cuda_profile_part("swiglu_backward");
        const float *const d2[2] = {(const float *)dgate, (const float *)dup}, *const w2[2] = {w_gate, w_up};
        float *const g2[2] = {dw_gate, dw_up};
        const int oc2[2] = {F, F};
        cuda_linear_backward_many(2, dx, g2, NULL, d2, (const float *)x, w2, oc2, N, C);
        cuda_profile_part("linear_backward");
        return;
    }
    if (F <= 0) {  // no products: dx is still written
        cuda_memzero(dx, sizeof(float) * (size_t)N * C);
        return;
    }
    // down (IC = F, OC = C): dout is B of both products, rounded once
    cuda_product_bf16(false, false, F, N, C, weight(w_down), F, fp32(dout, false), C, 0.0f, dact, true, F, NULL, NULL);
    cuda_product_bf16(false, true, F, C, N, bf16(act), F, fp32(dout, true), C, 1.0f, dw_down, false, F, NULL, NULL);
    cuda_profile_part("linear_backward");
    swiglu16<true>(dgate, dup, dact, gate, up, (long)N * F);
    cuda_profile_part("swiglu_backward");
    // gate and up (IC = C, OC = F): dx written by the first, added to by the second; x is
    // A of both weight products, in bf16
    cuda_product_bf16(false, false, C, N, F, weight(w_gate), C, bf16(dgate), F, 0.0f, dx, false, C, NULL, NULL);
    cuda_product_bf16(false, false, C, N, F, weight(w_up), C, bf16(dup), F, 1.0f, dx, false, C, NULL, NULL);
    cuda_product_bf16(false, true, C, F, N, bf16(x), C, bf16(dgate), F, 1.0f, dw_gate, false, C, NULL, NULL);
    cuda_product_bf16(false, true, C, F, N, bf16(x), C, bf16(dup), F, 1.0f, dw_up, false, C, NULL, NULL);
    cuda_profile_part("linear_backward");
}
