// linear.cu — out = x · W^T (+ bias) and its gradients through cuBLAS.
//
// In bf16 mode the operands are rounded to bf16 first (weights once per update, cached;
// activations per call) and cuBLASLt multiplies bf16 × bf16 into fp32 with fp32 sums: the
// same numbers as cuBLAS's own FAST_16BF mode on fp32 data, which measured 3-4x slower
// (about 160 TFLOP/s on an H100 against 500+ for bf16 operands). A bias is added by the
// product's epilogue, and a residual comes in as its C matrix (D = A·B + residual), so
// neither takes a pass of its own over the output. Where cuBLASLt offers no algorithm (or
// TP_CUDA_LT=0) the product goes through cublasGemmEx and separate kernels add the rest.
//
// cuBLAS is column-major; a row-major [R, K] matrix is a column-major [K, R] one, so each
// product below is written for the transposed (column-major) view of our buffers:
//   out^T [OC, N] = W^T' · x^T      : gemm(T, N, m=OC, n=N,  k=IC, A=W [IC x OC], B=x [IC x N])
//   dx^T  [IC, N] += W · dout^T     : gemm(N, N, m=IC, n=N,  k=OC, A=W [IC x OC], B=dout [OC x N])
//   dW^T  [IC, OC] += x^T · dout    : gemm(N, T, m=IC, n=OC, k=N,  A=x [IC x N],  B=dout [OC x N])
#include "cuda/cuda_common.h"
#include "cuda/cuda_ops.h"
#include "cuda/product.h"
#include "cuda/reduce.h"
#include "cuda/rope.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdlib>
#include <cstring>

static cublasHandle_t handle;
static cublasComputeType_t compute = CUBLAS_COMPUTE_32F;

static const char *cublas_text(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "cuBLAS: not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "cuBLAS: allocation failed (out of device memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "cuBLAS: invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "cuBLAS: architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "cuBLAS: execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "cuBLAS: not supported";
    default: return "cuBLAS: error";
    }
}

#define CUBLAS_CHECK(call)                                                                \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) cuda_note_message(cublas_text(s_), __FILE__, __LINE__); \
    } while (0)

static bool ready(void) {
    if (handle) return true;
    cublasStatus_t s = cublasCreate(&handle);
    if (s != CUBLAS_STATUS_SUCCESS) {
        cuda_note_message(cublas_text(s), __FILE__, __LINE__);
        handle = NULL;
        return false;
    }
    CUBLAS_CHECK(cublasSetStream(handle, cuda_stream()));
    return true;
}

extern "C" int cuda_set_matmul_precision(const char *name) {
    if (!strcmp(name, "fp32")) compute = CUBLAS_COMPUTE_32F;
    else if (!strcmp(name, "tf32")) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (!strcmp(name, "bf16")) compute = CUBLAS_COMPUTE_32F_FAST_16BF;
    else return -1;
    return 0;
}

bool cuda_matmul_bf16(void) { return compute == CUBLAS_COMPUTE_32F_FAST_16BF; }

// bf16 copies of weights, valid while cuda_weights_version is unchanged.
enum { MAX_CACHED = 4096 };
static struct cached {
    const float *src;
    size_t n;
    __nv_bfloat16 *bf;
    unsigned long version;
} cache[MAX_CACHED];
static int n_cached;

static const __nv_bfloat16 *weight_bf16(const float *w, size_t n) {
    struct cached *c = NULL, *unused = NULL;
    for (int i = 0; i < n_cached && !c; i++) {
        if (cache[i].src == w) c = &cache[i];
        if (!cache[i].src && !unused) unused = &cache[i];
    }
    if (!c && !unused && n_cached < MAX_CACHED) unused = &cache[n_cached++];
    if (!c && unused) c = unused, c->src = w, c->n = 0, c->bf = NULL, c->version = 0;
    if (!c) return NULL;
    if (c->n != n) {
        cuda_free(c->bf);
        cuda_graph_epoch_now++;  // graphs that read the old copy are stale
        c->bf = (__nv_bfloat16 *)cuda_alloc(n * sizeof(__nv_bfloat16));
        c->n = c->bf ? n : 0;
        c->version = 0;
        if (!c->bf) return NULL;  // out of memory: the caller converts into scratch instead
    }
    if (c->version != cuda_weights_version) {
        cuda_round_bf16(c->bf, w, n);
        c->version = cuda_weights_version;
    }
    return c->bf;
}

// bf16 copies of a few weights one after another (a layer's [wq; wk; wv]: the attention
// block's q, k and v products read their rows, and its backward multiplies the three
// gradients by all of them in one product). Each part is valid while its own version is
// current, so AdamW can write a part through cuda_weight_copy_claim as it writes a single
// weight's copy; a part it did not write is converted again when next asked for.
enum { MAX_JOINED = 1024, MAX_PARTS = 3 };
static struct joined {
    int parts;
    const float *src[MAX_PARTS];
    size_t n[MAX_PARTS];
    unsigned long version[MAX_PARTS];
    __nv_bfloat16 *bf;  // NULL: the entry is free
} joined[MAX_JOINED];
static int n_joined;

static bool joined_is(const struct joined *e, int parts, const float *const src[], const size_t n[]) {
    if (!e->bf || e->parts != parts) return false;
    for (int p = 0; p < parts; p++)
        if (e->src[p] != src[p] || e->n[p] != n[p]) return false;
    return true;
}

extern "C" const void *cuda_weights_bf16_joined(int parts, const float *const src[], const size_t n[]) {
    if (parts < 1 || parts > MAX_PARTS) return NULL;
    struct joined *e = NULL, *unused = NULL;
    for (int i = 0; i < n_joined && !e; i++) {
        if (joined_is(&joined[i], parts, src, n)) e = &joined[i];
        else if (!joined[i].bf && !unused) unused = &joined[i];
    }
    if (!e) {
        if (!unused && n_joined < MAX_JOINED) unused = &joined[n_joined++];
        size_t total = 0;
        for (int p = 0; p < parts; p++) total += n[p];
        __nv_bfloat16 *bf = unused ? (__nv_bfloat16 *)cuda_alloc(total * sizeof(__nv_bfloat16)) : NULL;
        if (!bf) return NULL;  // out of memory or entries: the caller takes the weights one at a time
        cuda_graph_epoch_now++;
        e = unused, e->parts = parts, e->bf = bf;
        for (int p = 0; p < parts; p++) e->src[p] = src[p], e->n[p] = n[p], e->version[p] = 0;
    }
    size_t at = 0;
    for (int p = 0; p < parts; p++) {
        if (e->version[p] != cuda_weights_version) {
            cuda_round_bf16(e->bf + at, src[p], n[p]);
            e->version[p] = cuda_weights_version;
        }
        at += n[p];
    }
    return e->bf;
}

__nv_bfloat16 *cuda_weight_copy_claim(const float *w, size_t n) {
    for (int i = 0; i < n_cached; i++)
        if (cache[i].src == w && cache[i].n == n && cache[i].bf) {
            cache[i].version = cuda_weights_version;
            return cache[i].bf;
        }
    for (int i = 0; i < n_joined; i++) {
        struct joined *e = &joined[i];
        size_t at = 0;
        for (int p = 0; e->bf && p < e->parts; at += e->n[p], p++)
            if (e->src[p] == w && e->n[p] == n) {
                e->version[p] = cuda_weights_version;
                return e->bf + at;
            }
    }
    return NULL;
}

void cuda_bf16_forget(const void *p, size_t bytes) {
    const char *lo = (const char *)p, *hi = lo + bytes;
    for (int i = 0; i < n_cached; i++) {
        const char *src = (const char *)cache[i].src;
        if (!src || src < lo || src >= hi) continue;
        cuda_free(cache[i].bf);
        cache[i].src = NULL, cache[i].bf = NULL, cache[i].n = 0;
        cuda_graph_epoch_now++;  // graphs that read the copy are stale
    }
    for (int i = 0; i < n_joined; i++) {
        struct joined *e = &joined[i];
        bool inside = false;
        for (int p = 0; e->bf && p < e->parts; p++) {
            const char *src = (const char *)e->src[p];
            inside = inside || (src >= lo && src < hi);
        }
        if (!inside) continue;
        cuda_free(e->bf);
        e->bf = NULL;
        cuda_graph_epoch_now++;
    }
}

// What each operand scratch slot (SCRATCH_BF16_A, _B) holds: the bf16 copy of src's n floats
// (src NULL: nothing reusable), still valid for a later product that reads the same buffer
// when the caller says nothing wrote it in between (linear_backward's two products share
// dout; linear_backward_many's weight products share x).
static struct scratch_operand {
    const float *src;
    size_t n;
    unsigned long version;
} held[2];

// The bf16 copy of x [n] for operand slot `slot` (SCRATCH_BF16_A or _B): a weight's cached
// copy, the copy the slot already holds when reuse is allowed, else a conversion into it.
static const __nv_bfloat16 *operand_bf16(int slot, const float *x, size_t n, bool is_weight, bool reuse) {
    const __nv_bfloat16 *b = is_weight ? weight_bf16(x, n) : NULL;
    if (b) return b;
    struct scratch_operand *h = &held[slot == SCRATCH_BF16_B];
    __nv_bfloat16 *s = (__nv_bfloat16 *)cuda_scratch(slot, n * sizeof(__nv_bfloat16));
    if (!s) {
        h->src = NULL;
        return NULL;  // noted by cuda_scratch
    }
    if (reuse && !is_weight && h->src == x && h->n == n && h->version == cuda_weights_version) return s;
    cuda_round_bf16(s, x, n);
    *h = scratch_operand{is_weight ? NULL : x, n, cuda_weights_version};
    return s;
}

// ---- cuBLASLt: bf16 products with their epilogues ----

static cublasLtHandle_t lt;
static void *lt_workspace;
static bool lt_off;  // TP_CUDA_LT=0, or cuBLASLt could not start: cublasGemmEx only
enum { LT_WORKSPACE = 32 << 20, LT_PLANS = 256 };

static bool lt_ready(void) {
    if (lt || lt_off) return !lt_off;
    const char *env = getenv("TP_CUDA_LT");
    if ((env && !strcmp(env, "0")) || cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        lt = NULL, lt_off = true;
        return false;
    }
    // Allocated once and never moved: captured decode graphs keep its address.
    lt_workspace = cuda_alloc(LT_WORKSPACE);
    return true;
}

// The largest power of two up to 256 that divides p's address: cuBLASLt's heuristic
// assumes 256-byte aligned matrices unless told otherwise.
static unsigned alignment(const void *p) {
    unsigned a = 256;
    while (a > 1 && ((uintptr_t)p & (a - 1))) a /= 2;
    return a;
}

// A product's shape, epilogue and pointer alignments, with the descriptors and algorithm
// cuBLASLt chose for them (ok false: none; the caller falls back to cublasGemmEx). The
// choice depends on the key alone, so a plan evicted and made again gives the same bits.
struct lt_plan {
    int ta, tb, m, n, k, lda, ldb, ldc;
    bool bias, d16;  // d16: C and D hold bf16
    unsigned align[5];  // A, B, C, D, bias
    bool ok;
    unsigned long used;  // when last asked for: the least recent is evicted when the table is full
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
};
static lt_plan plans[LT_PLANS];
static int n_plans;
static unsigned long plan_clock;

// Destroys what a plan holds (graphs captured with it keep only their kernels' arguments).
static void lt_plan_free(lt_plan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    p->desc = NULL, p->la = p->lb = p->lc = NULL;
}

// A plan whose descriptor or preference rejects an attribute is no plan (a rejected bias
// pointer, say, would otherwise run with the default: no bias): the caller falls back.
static bool lt_plan_make(lt_plan *p, const void *bias) {
    // a bf16 output takes its bias in bf16 (the weight's cached copy), as torch's autocast does
    const int32_t ta = p->ta, tb = p->tb, bias_type = p->d16 ? CUDA_R_16BF : CUDA_R_32F;
    const uint32_t epilogue = p->bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    if (cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return false;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const struct {
        cublasLtMatmulDescAttributes_t attr;
        const void *value;
        size_t size;
    } attrs[] = {
        {CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta},
        {CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb},
        {CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue},
        {CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type},
        {CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias},
    };
    const int n_attrs = p->bias ? 5 : 3;
    for (int i = 0; i < n_attrs && st == CUBLAS_STATUS_SUCCESS; i++)
        st = cublasLtMatmulDescSetAttribute(p->desc, attrs[i].attr, attrs[i].value, attrs[i].size);
    if (st != CUBLAS_STATUS_SUCCESS) return false;
    // column-major: op(A) [m, k], op(B) [k, n], C and D [m, n]
    const bool an = p->ta == CUBLAS_OP_N, bn = p->tb == CUBLAS_OP_N;
    if (cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, an ? p->m : p->k, an ? p->k : p->m, p->lda) ||
        cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, bn ? p->k : p->n, bn ? p->n : p->k, p->ldb) ||
        cublasLtMatrixLayoutCreate(&p->lc, p->d16 ? CUDA_R_16BF : CUDA_R_32F, p->m, p->n, p->ldc))
        return false;
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return false;
    const uint64_t ws = lt_workspace ? LT_WORKSPACE : 0;
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; i++)
        st = cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &p->align[i], sizeof p->align[i]);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found < 1 || result.workspaceSize > ws) return false;
    p->algo = result.algo, p->workspace = result.workspaceSize;
    return true;
}

// The plan for this product, made on first use (NULL: cuBLASLt has none, or the table is full).
static lt_plan *lt_plan_for(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb,
                            int ldc, bool d16, const void *A, const void *B, const void *C, const void *D,
                            const void *bias) {
    lt_plan key = {};
    key.ta = ta, key.tb = tb, key.m = m, key.n = n, key.k = k, key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.bias = bias != NULL, key.d16 = d16;
    key.align[0] = alignment(A), key.align[1] = alignment(B), key.align[2] = alignment(C), key.align[3] = alignment(D);
    key.align[4] = bias ? alignment(bias) : 0;
    for (int i = 0; i < n_plans; i++) {
        const lt_plan *p = &plans[i];
        if (p->ta == key.ta && p->tb == key.tb && p->m == m && p->n == n && p->k == k && p->lda == lda &&
            p->ldb == ldb && p->ldc == ldc && p->bias == key.bias && p->d16 == d16 &&
            !memcmp(p->align, key.align, sizeof key.align)) {
            plans[i].used = ++plan_clock;
            return p->ok ? &plans[i] : NULL;
        }
    }
    lt_plan *p;
    if (n_plans < LT_PLANS) {
        p = &plans[n_plans++];
    } else {  // full: the least recently used goes
        p = &plans[0];
        for (int i = 1; i < LT_PLANS; i++)
            if (plans[i].used < p->used) p = &plans[i];
        lt_plan_free(p);
    }
    *p = key;
    p->ok = lt_plan_make(p, bias);
    if (!p->ok) lt_plan_free(p);  // (kept as the answer "none" for this key)
    p->used = ++plan_clock;
    return p->ok ? p : NULL;
}

// D = op(A) op(B) + beta·C (+ bias [m] on every column) through cuBLASLt; C may be D; C
// and D hold bf16 when d16, else fp32, and so does the bias. false when cuBLASLt has no
// algorithm for it (nothing was launched).
static bool lt_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const __nv_bfloat16 *A, int lda,
                    const __nv_bfloat16 *B, int ldb, float beta, const void *C, void *D, int ldc, bool d16,
                    const void *bias) {
    if (!lt_ready()) return false;
    lt_plan *p = lt_plan_for(ta, tb, m, n, k, lda, ldb, ldc, d16, A, B, C, D, bias);
    if (!p) return false;
    if (bias && cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) !=
                    CUBLAS_STATUS_SUCCESS)
        return false;
    const float alpha = 1.0f;
    const int timer = cuda_profile_product_begin();
    CUBLAS_CHECK(cublasLtMatmul(lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, C, p->lc, D, p->lc, &p->algo,
                                lt_workspace, p->workspace, cuda_stream()));
    cuda_profile_product_end(timer, m, n, k, ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, true, d16, beta != 0.0f, true);
    return true;
}

__device__ __forceinline__ float bias_bf16_of(float b) { return __bfloat162float(__float2bfloat16(b)); }
__device__ __forceinline__ float bias_bf16_of(__nv_bfloat16 b) { return __bfloat162float(b); }

// out [m x n] (bf16, ld ldc) = sum + bf16(bias[row]) rounded, sum [m x n] fp32 (column-major: the row is i % m).
template <typename B>
__global__ void bias_round_kernel(__nv_bfloat16 *out, int ldc, const float *sum, const B *bias, int m, long mn) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < mn) out[i / m * ldc + i % m] = __float2bfloat16(sum[i] + bias_bf16_of(bias[i % m]));
}

// C = op(a) op(b) + beta C (+ bias (+ residual)) on bf16 operands; C holds bf16 when c16
// (no residual then), else fp32. bias [m] (fp32; with c16 its cached bf16 copy is added,
// or bias16, a bf16 bias the caller holds, instead) and residual [m x n] (ld ldc; beta must
// be 0 with it) are added by the epilogue when cuBLASLt takes the product: returns whether
// they were (false: the caller adds them).
static bool product_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const __nv_bfloat16 *a,
                         int lda, const __nv_bfloat16 *b, int ldb, float beta, void *C, bool c16, int ldc,
                         const float *bias, const float *residual, const __nv_bfloat16 *bias16 = NULL) {
    const void *epilogue_bias = bias16 ? bias16 : c16 && bias ? (const void *)weight_bf16(bias, (size_t)m) : bias;
    if ((!(bias || bias16) || epilogue_bias) && lt_gemm(ta, tb, m, n, k, a, lda, b, ldb, residual ? 1.0f : beta,
                                                        residual ? residual : C, C, ldc, c16, epilogue_bias))
        return true;
    // A bf16 output with a bias without cuBLASLt: the fp32 sums through scratch, then the
    // epilogue's arithmetic, bf16(sum + bf16(bias)), so either path gives the same values.
    void *out = C;
    const bool c16_bias = c16 && (bias || bias16);
    if (c16_bias && !(out = cuda_scratch(SCRATCH_PRODUCT, sizeof(float) * (size_t)m * n))) return true;  // noted
    const bool out16 = c16 && !c16_bias;
    const float alpha = 1.0f;
    const int timer = cuda_profile_product_begin();
    CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &beta, out,
                              out16 ? CUDA_R_16BF : CUDA_R_32F, out16 || out == C ? ldc : m, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    cuda_profile_product_end(timer, m, n, k, ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, true, out16, beta != 0.0f, false);
    if (out == C) return !bias && !residual;
    const long mn = (long)m * n;
    if (bias16)
        bias_round_kernel<__nv_bfloat16><<<cuda_blocks(mn, 256), 256, 0, cuda_stream()>>>(
            (__nv_bfloat16 *)C, ldc, (const float *)out, bias16, m, mn);
    else
        bias_round_kernel<float><<<cuda_blocks(mn, 256), 256, 0, cuda_stream()>>>((__nv_bfloat16 *)C, ldc,
                                                                                   (const float *)out, bias, m, mn);
    CUDA_LAUNCH_CHECK();
    return true;
}

// Operand o of op(.) with leading dimension ld in bf16: as it is, or its fp32 data through
// operand_bf16 into scratch slot `slot` (cols: its columns as cuBLAS counts them).
static const __nv_bfloat16 *operand_of(int slot, cuda_operand o, int ld, int cols) {
    if (o.bf16) return (const __nv_bfloat16 *)o.p;
    return operand_bf16(slot, (const float *)o.p, (size_t)ld * cols, o.weight, o.reuse);
}

// The operands in bf16 (as operand_of gives them), then product_bf16.
static bool product_of(bool ta, bool tb, int m, int n, int k, cuda_operand A, int lda, cuda_operand B, int ldb,
                       float beta, void *C, bool c16, int ldc, const float *bias, const float *residual,
                       const __nv_bfloat16 *bias16) {
    const __nv_bfloat16 *a = operand_of(SCRATCH_BF16_A, A, lda, ta ? m : k);
    const __nv_bfloat16 *b = operand_of(SCRATCH_BF16_B, B, ldb, tb ? k : n);
    if (!a || !b) return true;  // noted by cuda_scratch: nothing to add to
    return product_bf16(ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, a, lda, b, ldb, beta,
                        C, c16, ldc, bias, residual, bias16);
}

// The product on fp32 A and B rounded to bf16 (sizes as cuBLAS counts them). reuse_a,
// reuse_b: A (B) is unchanged since an earlier product converted it (same buffer, nothing
// written in between), so its scratch slot may still hold the bf16 copy.
static bool gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                      bool a_weight, const float *B, int ldb, bool b_weight, float beta, float *C, int ldc,
                      bool reuse_a, bool reuse_b, const float *bias, const float *residual) {
    return product_of(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, {A, false, a_weight, reuse_a}, lda,
                      {B, false, b_weight, reuse_b}, ldb, beta, C, false, ldc, bias, residual, NULL);
}

__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * OC) out[i] += bias[i % OC];
}


void cuda_product16_bias16(bool ta, bool tb, int m, int n, int k, cuda_operand A, int lda, cuda_operand B, int ldb,
                           void *C, int ldc, const void *bias16) {
    if (!ready() || m <= 0 || n <= 0) return;  // (a bf16 output's bias is always added: no caller's part)
    product_of(ta, tb, m, n, k, A, lda, B, ldb, 0.0f, C, true, ldc, NULL, NULL, (const __nv_bfloat16 *)bias16);
}

void cuda_product_bf16(bool ta, bool tb, int m, int n, int k, cuda_operand A, int lda, cuda_operand B, int ldb,
                       float beta, void *C, bool c16, int ldc, const float *bias, const float *residual) {
    if (!ready() || m <= 0 || n <= 0) return;
    if (c16 && residual) {  // (no caller asks for it: a bf16 output is never a residual stream)
        cuda_note_message("cuda_product_bf16: a residual with a bf16 output", __FILE__, __LINE__);
        return;
    }
    if (product_of(ta, tb, m, n, k, A, lda, B, ldb, beta, C, c16, ldc, bias, residual, NULL)) return;
    // (ldc == m: the callers' outputs are dense)
    const long mn = (long)m * n;
    if (bias) {
        add_bias_kernel<<<cuda_blocks(mn, 256), 256, 0, cuda_stream()>>>((float *)C, bias, n, m);
        CUDA_LAUNCH_CHECK();
    }
    if (residual) cuda_add_inplace((float *)C, residual, mn);
}


// a_weight / b_weight: which operand is a weight matrix (its bf16 copy is cached). bias,
// residual: as gemm_bf16 (applied only there; the return says whether they were).
static bool gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                 bool a_weight, const float *B, int ldb, bool b_weight, float beta, float *C, int ldc,
                 bool reuse_a, bool reuse_b, const float *bias = NULL, const float *residual = NULL) {
    if (!ready() || m <= 0 || n <= 0) return true;
    if (compute == CUBLAS_COMPUTE_32F_FAST_16BF)
        return gemm_bf16(ta, tb, m, n, k, A, lda, a_weight, B, ldb, b_weight, beta, C, ldc, reuse_a, reuse_b, bias,
                         residual);
    const float alpha = 1.0f;
    const int timer = cuda_profile_product_begin();
    CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                              CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
    cuda_profile_product_end(timer, m, n, k, ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, false, false, beta != 0.0f, false);
    return !bias && !residual;
}

// ---- few rows (decode steps): a warp per output column, the bf16 weights read once ----
// cuBLAS's bf16 GEMM with N <= 8 reads the weights at ~10% of the bandwidth (H200, the
// 0.5B decode step: 2.3 ms for 1 GB). Here each warp streams one weight row with 16-byte
// loads while the N rows of x (fp32, not rounded: at least as accurate as the GEMM path)
// stay in L1/L2; lane partial sums go through the same shuffle tree for every output, so
// results are deterministic and a row's output does not depend on the batch around it.
// At batch 1 a decode step is a chain of small kernels, each costing its launch and one
// DRAM round trip more than its bytes, so one launch serves several products of the same
// x (q, k and v: up to GEMV_MAX_SEGS segments, a block belongs to one of them) and the
// gate and up products are taken together with SwiGLU applied on the way out (GEMV_SWIGLU),
// and a decode step's q, k, v come with RoPE and the cache writes done on the way out
// (GEMV_ROPE: a warp takes the two rows a rotation pairs).
// Long rows (IC >= GEMV_SPLIT_IC: the down product) are split over the 4 warps of a block
// (KS = 4), so a row is one round of loads rather than five; the warps' sums are added in
// warp order. KS depends on IC alone, so an output's bits never depend on N or on the
// products launched with it.
// The norm before a layer's products and the residual add after them are folded in too
// (NORM: each block computes the rstd of x's rows itself, in the same order as every other
// block, and normalises x as it reads it; residual: added to the output on the way out), so
// a layer (IC < 2048) is 5 kernels: q/k/v + RoPE + cache writes, attention, o + residual, gate/up +
// SwiGLU, down + residual (Qwen3: 6, its q/k norms, RoPE and the cache writes a kernel after
// the products: decode.cu's qk_norm_rope_kv_cache). The rstd is summed in this kernel's
// own order, so the outputs are not the bits of rmsnorm_forward followed by the products.
enum { GEMV_WARPS = 4, GEMV_MAX_N = 8, GEMV_MAX_SEGS = 3, GEMV_SPLIT_IC = 2048 };

// What a launch's warps compute, each an output (or a pair of them):
//   GEMV_ONE: out[n, o] = x[n] · w[o] (+ bias[o], + residual[n, o]);
//   GEMV_SWIGLU: out[n, o] = SwiGLU of x[n] · w[o] (gate) and x[n] · w2[o] (up);
//   GEMV_ROPE: rows r0 = head · HD + f (f < half = HD / 2) and r1 = r0 + half of w, bias added,
//   then (rotate) RoPE's rotation of the pair at position pos[n] (rope.h), written to out
//   and (cache) to row kv_row[n] of the cache [*, OC].
enum { GEMV_ONE, GEMV_SWIGLU, GEMV_ROPE };

struct gemv_seg {
    const __nv_bfloat16 *w, *w2;  // [OC, IC]; w2: the up weights of GEMV_SWIGLU
    const float *bias;            // [OC] or NULL (not with GEMV_SWIGLU)
    const float *residual;        // [N, OC] added last, or NULL (GEMV_ONE only)
    float *out;                   // [N, OC]
    float *cache;                 // GEMV_ROPE: [*, OC] rows kv_row[n] written too, or NULL
    int OC, block0;               // the segment's blocks start at block0
    bool rotate;                  // GEMV_ROPE: rotate the pairs
};
struct gemv_segs {
    gemv_seg s[GEMV_MAX_SEGS];
    int count;
    const int32_t *pos, *kv_row;  // GEMV_ROPE: [N] each
    const float *inv_freq;        // GEMV_ROPE: [half]
    int half;
};

static int gemv_ks(int IC) { return IC >= GEMV_SPLIT_IC ? GEMV_WARPS : 1; }
static int gemv_blocks(int OC, int IC) { return gemv_ks(IC) > 1 ? OC : (int)cuda_blocks(OC, GEMV_WARPS); }

// rstd[n] = 1 / sqrt(mean(x[n]^2) + eps) for the NN rows of x [NN, IC], by the whole block
// (GEMV_WARPS warps) in one fixed order: float4s of a thread, lanes by shuffles, warps in
// warp order. Every thread gets every rstd. (IC % 4 == 0.)
template <int NN>
__device__ __forceinline__ void rows_rstd(float (&rstd)[NN], const float *__restrict__ x, int IC, float eps) {
    __shared__ float part[NN][GEMV_WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int n = 0; n < NN; n++) {
        const float4 *r = reinterpret_cast<const float4 *>(x + (size_t)n * IC);
        float ss = 0.f;
        for (int c = threadIdx.x; c < IC / 4; c += GEMV_WARPS * 32) {
            float4 v = r[c];
            ss += v.x * v.x, ss += v.y * v.y, ss += v.z * v.z, ss += v.w * v.w;
        }
        ss = warp_sum(ss);
        if (lane == 0) part[n][warp] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < NN; n++) {
        float total = part[n][0];
#pragma unroll
        for (int w = 1; w < GEMV_WARPS; w++) total += part[n][w];
        rstd[n] = rsqrtf(total / IC + eps);
    }
}

// acc[r][n] = x[n] · wrow[r] for the NN rows of x and R weight rows (a pair's two rows
// load together and share x's loads; each row's sums are in the same order either
// way), summed over the 32 lanes; this thread takes the 8-weight chunks first,
// first + stride, ... With NORM, x[n] is read as x[n] * rstd[n] * norm_w (the products in
// RMSNorm's order; rstd itself from rows_rstd).
template <int NN, int R, bool NORM>
__device__ __forceinline__ void gemv_rows(float (&acc)[R][NN], const __nv_bfloat16 *const (&wrow)[R],
                                          const float *__restrict__ x, const float *__restrict__ norm_w,
                                          const float (&rstd)[NN], int IC, int first, int stride) {
    const int chunks = IC / 8;  // 8 weights a 16-byte load
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NN; n++) acc[r][n] = 0.f;
#pragma unroll 4
    for (int c = first; c < chunks; c += stride) {
        float2 w[R][4];
#pragma unroll
        for (int r = 0; r < R; r++) {
            uint4 raw = __ldg(reinterpret_cast<const uint4 *>(wrow[r]) + c);
            const __nv_bfloat162 *pair = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
            for (int e = 0; e < 4; e++) w[r][e] = __bfloat1622float2(pair[e]);
        }
        float4 na, nb;
        if (NORM) {
            const float4 *nw = reinterpret_cast<const float4 *>(norm_w) + 2 * c;
            na = __ldg(nw), nb = __ldg(nw + 1);
        }
#pragma unroll
        for (int n = 0; n < NN; n++) {
            const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)n * IC) + 2 * c;
            float4 a = xr[0], b = xr[1];
            if (NORM) {
                const float s = rstd[n];
                a.x = a.x * s * na.x, a.y = a.y * s * na.y, a.z = a.z * s * na.z, a.w = a.w * s * na.w;
                b.x = b.x * s * nb.x, b.y = b.y * s * nb.y, b.z = b.z * s * nb.z, b.w = b.w * s * nb.w;
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                float s = acc[r][n];
                s = fmaf(a.x, w[r][0].x, s), s = fmaf(a.y, w[r][0].y, s), s = fmaf(a.z, w[r][1].x, s);
                s = fmaf(a.w, w[r][1].y, s), s = fmaf(b.x, w[r][2].x, s), s = fmaf(b.y, w[r][2].y, s);
                s = fmaf(b.z, w[r][3].x, s), s = fmaf(b.w, w[r][3].y, s);
                acc[r][n] = s;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NN; n++) acc[r][n] = warp_sum(acc[r][n]);
}

// With KS warps on one output: the warps' sums (lane 0 of each holds one) added in warp
// order into thread 0's acc.
template <int NN, int KS> __device__ __forceinline__ void gemv_combine(float (&acc)[NN]) {
    if (KS == 1) return;
    __shared__ float part[KS][NN];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
        for (int n = 0; n < NN; n++) part[warp][n] = acc[n];
    __syncthreads();
    if (threadIdx.x == 0)
#pragma unroll
        for (int n = 0; n < NN; n++) {
            float s = part[0][n];
#pragma unroll
            for (int w = 1; w < KS; w++) s += part[w][n];
            acc[n] = s;
        }
    __syncthreads();  // part is reused by a pair's second product
}

// GEMV_ROPE's pair of rows for the warp's output o (< OC / 2): r0 and r0 + half.
__device__ __forceinline__ int rope_pair_row(int o, int half) { return o / half * 2 * half + o % half; }

template <int NN, int MODE, int KS, bool NORM>
__global__ void gemv_bf16_kernel(const gemv_segs segs, const float *__restrict__ x, const float *__restrict__ norm_w,
                                 float eps, int IC) {
    // the block's segment, its fields picked without indexing the parameter array
    gemv_seg g = segs.s[0];
#pragma unroll
    for (int i = 1; i < GEMV_MAX_SEGS; i++)
        if (i < segs.count && (int)blockIdx.x >= segs.s[i].block0) g = segs.s[i];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // KS 1: a warp an output (a pair's, GEMV_ROPE); KS > 1: the block's warps on one output
    const int o = KS == 1 ? ((int)blockIdx.x - g.block0) * GEMV_WARPS + warp : (int)blockIdx.x - g.block0;
    const int outputs = MODE == GEMV_ROPE ? g.OC / 2 : g.OC;
    constexpr int R = MODE == GEMV_ONE ? 1 : 2;
    const int r0 = MODE == GEMV_ROPE ? rope_pair_row(o, segs.half) : o;
    const __nv_bfloat16 *rows[R];
    rows[0] = g.w + (size_t)r0 * IC;
    if (MODE == GEMV_SWIGLU) rows[R - 1] = g.w2 + (size_t)o * IC;
    if (MODE == GEMV_ROPE) rows[R - 1] = g.w + (size_t)(r0 + segs.half) * IC;
    const int first = KS == 1 ? lane : threadIdx.x, stride = 32 * KS;
    const bool pdl_late = pdl_trigger();
    if (o < outputs) {  // the weights do not depend on the kernel before: on their way while it ends
        const size_t bytes = (size_t)IC * sizeof(__nv_bfloat16) / KS, off = (KS == 1 ? 0 : warp) * bytes;
#pragma unroll
        for (int r = 0; r < R; r++) prefetch_l2(reinterpret_cast<const char *>(rows[r]) + off, bytes, lane);
    }
    pdl_wait(pdl_late);
    float rstd[NN];
    if (NORM) rows_rstd<NN>(rstd, x, IC, eps);  // the whole block: before any thread returns
    if (o >= outputs) return;  // with KS > 1 the whole block
    float acc[R][NN];
    gemv_rows<NN, R, NORM>(acc, rows, x, norm_w, rstd, IC, first, stride);
#pragma unroll
    for (int r = 0; r < R; r++) gemv_combine<NN, KS>(acc[r]);
    if (first != 0) return;
#pragma unroll
    for (int n = 0; n < NN; n++) {
        float v = acc[0][n];
        if (MODE == GEMV_ROPE) {
            const int r1 = r0 + segs.half;
            float v1 = acc[R - 1][n];
            if (g.bias) v += g.bias[r0], v1 += g.bias[r1];
            if (g.rotate) rope_rotate(v, v1, rope_angle_of(segs.pos[n], segs.inv_freq[o % segs.half], 1.0f));
            g.out[(size_t)n * g.OC + r1] = v1;
            if (g.cache) {
                float *c = g.cache + (size_t)segs.kv_row[n] * g.OC;
                c[r0] = v, c[r1] = v1;
            }
        } else if (MODE == GEMV_SWIGLU) {
            v = v * (1.0f / (1.0f + expf(-v))) * acc[R - 1][n];  // swiglu_forward_kernel's arithmetic
        } else {
            if (g.bias) v += g.bias[o];
            if (g.residual) v += g.residual[(size_t)n * g.OC + o];
        }
        g.out[(size_t)n * g.OC + r0] = v;
    }
}

template <int NN, int MODE, bool NORM>
static void launch_gemv_n(const gemv_segs &segs, int blocks, const float *x, const float *norm_w, float eps, int IC) {
    dim3 grid(blocks), block(GEMV_WARPS * 32);
    if constexpr (MODE == GEMV_ROPE)  // (its launches have KS 1: gemv_qkv_rope)
        cuda_launch_dependent(gemv_bf16_kernel<NN, MODE, 1, NORM>, grid, block, 0, segs, x, norm_w, eps, IC);
    else if (gemv_ks(IC) > 1)
        cuda_launch_dependent(gemv_bf16_kernel<NN, MODE, GEMV_WARPS, NORM>, grid, block, 0, segs, x, norm_w, eps, IC);
    else
        cuda_launch_dependent(gemv_bf16_kernel<NN, MODE, 1, NORM>, grid, block, 0, segs, x, norm_w, eps, IC);
}

template <int MODE, bool NORM>
static void launch_gemv_norm(const gemv_segs &segs, int blocks, const float *x, const float *norm_w, float eps, int N,
                             int IC) {
    switch (N) {
    case 1: launch_gemv_n<1, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 2: launch_gemv_n<2, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 3: launch_gemv_n<3, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 4: launch_gemv_n<4, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 5: launch_gemv_n<5, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 6: launch_gemv_n<6, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    case 7: launch_gemv_n<7, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    default: launch_gemv_n<8, MODE, NORM>(segs, blocks, x, norm_w, eps, IC); break;
    }
}

// norm_w: the RMSNorm weights x is normalised by on the way in, or NULL.
template <int MODE>
static void launch_gemv(const gemv_segs &segs, int blocks, const float *x, const float *norm_w, float eps, int N,
                        int IC) {
    if (norm_w) launch_gemv_norm<MODE, true>(segs, blocks, x, norm_w, eps, N, IC);
    else launch_gemv_norm<MODE, false>(segs, blocks, x, NULL, eps, N, IC);
}

// With a norm, only rows a warp takes alone (KS 1): a KS > 1 launch has a block an output,
// and each would read all of x again for its rstd (7B q/k/v: ~0.5 GB of L2 reads a layer).
static bool gemv_applies(const float *x, const float *norm_w, int N, int IC) {
    return compute == CUBLAS_COMPUTE_32F_FAST_16BF && N >= 1 && N <= GEMV_MAX_N && IC % 8 == 0 &&
           ((uintptr_t)x & 15) == 0 && ((uintptr_t)norm_w & 15) == 0 && (!norm_w || gemv_ks(IC) == 1);
}

// count products of x (normalised by norm_w when given) in one launch; bias and residual
// may be NULL (none), as may their entries. up given: GEMV_SWIGLU products, out[i] = SwiGLU of
// weight[i]'s (gate) and up[i]'s, no bias or residual. false when the few-rows path does not
// apply (then nothing was launched).
static bool gemv_forward_many(int count, float *const out[], const float *x, const float *norm_w, float eps,
                              const float *const weight[], const float *const up[], const float *const bias[],
                              const float *const residual[], const int OC[], int N, int IC) {
    if (count < 1 || count > GEMV_MAX_SEGS || !gemv_applies(x, norm_w, N, IC)) return false;
    gemv_segs segs = {};
    int blocks = 0;
    for (int i = 0; i < count; i++) {
        const __nv_bfloat16 *w = weight_bf16(weight[i], (size_t)OC[i] * IC);
        const __nv_bfloat16 *w2 = up ? weight_bf16(up[i], (size_t)OC[i] * IC) : NULL;
        if (!w || (up && !w2)) return false;
        segs.s[i] = gemv_seg{w, w2, bias ? bias[i] : NULL, residual ? residual[i] : NULL, out[i], NULL, OC[i], blocks,
                             false};
        blocks += gemv_blocks(OC[i], IC);
    }
    segs.count = count;
    if (blocks > 0 && up) launch_gemv<GEMV_SWIGLU>(segs, blocks, x, norm_w, eps, N, IC);
    else if (blocks > 0) launch_gemv<GEMV_ONE>(segs, blocks, x, norm_w, eps, N, IC);
    return true;
}

// A decode step's q, k, v (weight[0..2], bias[0..2] or NULL entries) rotated and k, v
// written into the caches, in one GEMV_ROPE launch; false when the few-rows path does not
// apply with a warp a pair (nothing launched).
static bool gemv_qkv_rope(float *const out[3], float *k_cache, float *v_cache, const float *x, const float *norm_w,
                          float eps, const float *const weight[3], const float *const bias[3], const int32_t *kv_row,
                          const int32_t *pos, const float *inv_freq, int N, int IC, int NH, int KVH, int HD) {
    if (HD % 2 || !gemv_applies(x, norm_w, N, IC) || gemv_ks(IC) != 1) return false;
    const int OC[3] = {NH * HD, KVH * HD, KVH * HD};
    float *const cache[3] = {NULL, k_cache, v_cache};
    gemv_segs segs = {};
    segs.count = 3, segs.pos = pos, segs.kv_row = kv_row, segs.inv_freq = inv_freq, segs.half = HD / 2;
    int blocks = 0;
    for (int i = 0; i < 3; i++) {
        const __nv_bfloat16 *w = weight_bf16(weight[i], (size_t)OC[i] * IC);
        if (!w) return false;
        segs.s[i] = gemv_seg{w, NULL, bias[i], NULL, out[i], cache[i], OC[i], blocks, i < 2};
        blocks += (int)cuda_blocks(OC[i] / 2, GEMV_WARPS);
    }
    if (blocks > 0) launch_gemv<GEMV_ROPE>(segs, blocks, x, norm_w, eps, N, IC);
    return true;
}

// One product (+ bias, + residual [N, OC]); reuse_x: x's bf16 copy from the previous
// product is still in scratch B. Returns whether this product left x's bf16 copy there.
static bool forward_one(float *out, const float *x, const float *weight, const float *bias, const float *residual,
                        int N, int IC, int OC, bool reuse_x) {
    if (OC <= 0) return false;  // nothing converted
    if (gemv_forward_many(1, &out, x, NULL, 0.0f, &weight, NULL, &bias, &residual, &OC, N, IC)) return false;
    if (gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, weight, IC, true, x, IC, false, 0.0f, out, OC, false, reuse_x, bias,
             residual))
        return true;
    if (bias) {
        add_bias_kernel<<<cuda_blocks((long)N * OC, 256), 256, 0, cuda_stream()>>>(out, bias, N, OC);
        CUDA_LAUNCH_CHECK();
    }
    if (residual) cuda_add_inplace(out, residual, (long)N * OC);
    return true;
}

extern "C" void cuda_linear_forward(float *out, const float *x, const float *weight, const float *bias, int N, int IC,
                                    int OC) {
    if (N > 0) forward_one(out, x, weight, bias, NULL, N, IC, OC, false);
}

extern "C" void cuda_linear_forward_many(int count, float *const out[], const float *x, const float *const weight[],
                                         const float *const bias[], const int OC[], int N, int IC) {
    if (N <= 0 || gemv_forward_many(count, out, x, NULL, 0.0f, weight, NULL, bias, NULL, OC, N, IC)) return;
    // x is B of every product and nothing writes it in between: one bf16 copy serves all
    bool converted = false;
    for (int i = 0; i < count; i++)
        converted = forward_one(out[i], x, weight[i], bias[i], NULL, N, IC, OC[i], converted);
}

extern "C" void cuda_rmsnorm_linear_forward_many(int count, float *const out[], float *ln, const float *x,
                                                 const float *norm_weight, float eps, const float *const weight[],
                                                 const float *const bias[], const int OC[], int N, int IC) {
    if (N <= 0 || gemv_forward_many(count, out, x, norm_weight, eps, weight, NULL, bias, NULL, OC, N, IC)) return;
    if (norm_weight) cuda_rmsnorm_forward(ln, NULL, x, norm_weight, N, IC, eps), x = ln;
    cuda_linear_forward_many(count, out, x, weight, bias, OC, N, IC);
}

extern "C" void cuda_rmsnorm_qkv_rope_cache_forward(float *q, float *k, float *v, float *k_cache, float *v_cache,
                                                    float *ln, const float *x, const float *norm_weight, float eps,
                                                    const float *const weight[3], const float *const bias[3],
                                                    const int32_t *kv_row, const int32_t *pos, const float *inv_freq,
                                                    int n, int C, int NH, int KVH, int HD) {
    float *const out[3] = {q, k, v};
    if (n <= 0) return;
    cuda_decode_path = "fused";
    if (gemv_qkv_rope(out, k_cache, v_cache, x, norm_weight, eps, weight, bias, kv_row, pos, inv_freq, n, C, NH, KVH,
                      HD))
        return;
    cuda_decode_path = "separate";
    const int OC[3] = {NH * HD, KVH * HD, KVH * HD};
    cuda_rmsnorm_linear_forward_many(3, out, ln, x, norm_weight, eps, weight, bias, OC, n, C);
    cuda_rope_kv_cache_forward(q, k, v, k_cache, v_cache, kv_row, pos, inv_freq, n, NH, KVH, HD);
}

extern "C" void cuda_rmsnorm_linear_swiglu_forward(float *act, float *gate, float *up, float *ln, const float *x,
                                                   const float *norm_weight, float eps, const float *w_gate,
                                                   const float *w_up, int N, int IC, int F) {
    if (N <= 0 || gemv_forward_many(1, &act, x, norm_weight, eps, &w_gate, &w_up, NULL, NULL, &F, N, IC)) return;
    // A norm the pair kernel does not fold (rows split over warps, IC >= 2048: 3B and 7B
    // shapes): normalise first, then the pair kernel without it, as before the norms were
    // folded (the bits of the products and swiglu_forward, one kernel fewer).
    if (norm_weight) {
        cuda_rmsnorm_forward(ln, NULL, x, norm_weight, N, IC, eps), x = ln, norm_weight = NULL;
        if (gemv_forward_many(1, &act, x, NULL, 0.0f, &w_gate, &w_up, NULL, NULL, &F, N, IC)) return;
    }
    float *const outs[2] = {gate, up};
    const float *const ws[2] = {w_gate, w_up}, *const bs[2] = {NULL, NULL};
    const int ocs[2] = {F, F};
    cuda_rmsnorm_linear_forward_many(2, outs, ln, x, norm_weight, eps, ws, bs, ocs, N, IC);
    cuda_swiglu_forward(act, gate, up, (long)N * F);
}

extern "C" void cuda_linear_residual_forward(float *out, const float *x, const float *weight, const float *bias,
                                             const float *residual, int N, int IC, int OC) {
    if (N > 0) forward_one(out, x, weight, bias, residual, N, IC, OC, false);
}

// dx (+)= dout · W with beta 1 (add) or 0 (write); dW += dout^T · x; dbias += sum_n dout.
// dout is B of both products: converted to bf16 once (dx, written by the first, is not
// dout); reuse_x: x's bf16 copy from an earlier product of this call may serve.
static void backward_one(float *dx, bool add, float *dweight, float *dbias, const float *dout, const float *x,
                         const float *weight, int N, int IC, int OC, bool reuse_x) {
    if (dx) gemm(CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, weight, IC, true, dout, OC, false, add ? 1.0f : 0.0f, dx, IC,
                 false, false);
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, x, IC, false, dout, OC, false, 1.0f, dweight, IC, reuse_x, dx != NULL);
    if (dbias) cuda_column_sum(dbias, dout, NULL, NULL, N, OC);
}

extern "C" void cuda_linear_backward(float *dx, float *dweight, float *dbias, const float *dout, const float *x,
                                     const float *weight, int N, int IC, int OC) {
    if (N > 0 && OC > 0) backward_one(dx, true, dweight, dbias, dout, x, weight, N, IC, OC, false);
}

extern "C" void cuda_linear_backward_many(int count, float *dx, float *const dweight[], float *const dbias[],
                                          const float *const dout[], const float *x, const float *const weight[],
                                          const int OC[], int N, int IC) {
    if (N <= 0 || IC <= 0) return;
    bool written = false;  // dx: the first product writes (beta 0: no zeroing first), the others add
    for (int i = 0; i < count; i++) {
        if (OC[i] <= 0) continue;
        // x is A of every weight product and nothing writes it here: one bf16 copy serves all
        backward_one(dx, written, dweight[i], dbias ? dbias[i] : NULL, dout[i], x, weight[i], N, IC, OC[i], written);
        written = true;
    }
    if (dx && !written) cuda_memzero(dx, sizeof(float) * (size_t)N * IC);
}
