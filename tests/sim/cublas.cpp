// cublas.cpp — the simulator's cuBLAS and cuBLASLt: the calls kernels/cuda/linear.cu makes,
// run on the CPU, so the CUDA backend's host code can be tested without a GPU or the libraries.
//
// What it does: D = alpha * op(A) · op(B) + beta * C (+ bias [m] on every column), column-major
// as cuBLAS, for A and B in bf16 or fp32 and C = D in fp32 or bf16: the combinations cuBLAS
// lists for its fp32 compute types; anything else answers CUBLAS_STATUS_NOT_SUPPORTED rather
// than a wrong product. The compute type's input rounding is the GPU's (FAST_16BF: A and B to
// bf16, FAST_TF32: to 10 mantissa bits, both nearest-even); the sums are fp32, taken by the
// project's tp_sgemm in whatever order its library uses, so results match a GPU's to rounding,
// not bit for bit. beta == 0 never reads C (it may hold NaN). C may be D.
// Each product goes through sim::enqueue with all it needs copied at call time (alpha, beta,
// the descriptors' attributes and layouts), so a captured graph replays it as the GPU would: the
// buffers are read at replay, the descriptors may have changed or gone by then.
// What it does not do: algorithms (the heuristic offers one placeholder), workspace (ignored),
// tensor cores, streams (the simulator has one order of work), pointer modes other than host,
// batches, epilogues other than DEFAULT and BIAS, matrix orders other than column-major.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sim.h"

extern "C" {
#include "cpu/gemm.h"
}

// The handles: nothing to hold but the stream, which is kept and not used.
struct cublasContext {
    cudaStream_t stream;
};
struct cublasLtContext {
    int unused;
};

namespace {

// What cublasLtMatmulDesc_t points to here (the header's opaque struct is only a name for it).
struct matmul_desc {
    int32_t compute;     // cublasComputeType_t
    int32_t scale;       // cudaDataType of alpha and beta
    int32_t pointer_mode;
    int32_t trans_a, trans_b;
    uint32_t epilogue;
    const void *bias;
    int32_t bias_type;   // cudaDataType; -1: D's type, as cuBLASLt's default
    bool unsupported;    // an attribute this file does not model was set: every use fails
};

struct matrix_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

struct matmul_pref {
    int unused;  // the preferences (workspace, alignments) cannot change a CPU product
};

enum rounding { ROUND_NONE, ROUND_BF16, ROUND_TF32 };

// One product, everything by value: what the enqueued work runs, possibly much later.
struct product {
    bool ta, tb;  // op(A) = A^T, op(B) = B^T
    int m, n, k;
    const void *A, *B, *C;
    void *D;
    const void *bias;  // [m] or NULL
    cudaDataType_t at, bt, ct, bias_type;  // D has C's type
    int lda, ldb, ldc, ldd;
    float alpha, beta;
    rounding round;  // applied to A and B on the way in
};

// The fp32 temporaries, kept from product to product (per thread, as the work could run on
// any): fresh pages can cost more than the conversion itself where page faults are slow
// (a VM here took 7 s to fault in 2.4 GB).
struct scratch {
    std::vector<float> a, b, acc;
};

// The most floats a temporary holds (A's rows, B's columns, a tile of D), where k allows.
enum { TILE_FLOATS = 1 << 22 };

}  // namespace

static matmul_desc *desc_of(cublasLtMatmulDesc_t d) { return reinterpret_cast<matmul_desc *>(d); }
static matrix_layout *layout_of(cublasLtMatrixLayout_t l) { return reinterpret_cast<matrix_layout *>(l); }

// ---- the product ----

// Where element i of a t-typed array starts.
static const void *element(const void *p, cudaDataType_t t, size_t i) {
    return static_cast<const char *>(p) + i * (t == CUDA_R_32F ? sizeof(float) : sizeof(__nv_bfloat16));
}

// TF32 keeps fp32's exponent and 10 of its 23 mantissa bits: round the low 13 away, to nearest
// even (a carry into the exponent is the right answer; Inf and NaN pass unchanged).
static float round_tf32(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= ~0x1fffu;
    memcpy(&v, &u, sizeof v);
    return v;
}

// n elements of x (type t) as fp32, rounded by r. bf16 data needs no rounding: bf16 and TF32
// both hold its 8 bits of precision.
static void widen(float *out, const void *x, cudaDataType_t t, rounding r, int n) {
    if (t == CUDA_R_16BF) {
        const __nv_bfloat16 *b = static_cast<const __nv_bfloat16 *>(x);
        for (int i = 0; i < n; i++) out[i] = __bfloat162float(b[i]);
        return;
    }
    const float *f = static_cast<const float *>(x);
    if (r == ROUND_BF16)
        for (int i = 0; i < n; i++) out[i] = __bfloat162float(__float2bfloat16_rn(f[i]));
    else if (r == ROUND_TF32)
        for (int i = 0; i < n; i++) out[i] = round_tf32(f[i]);
    else
        memcpy(out, f, (size_t)n * sizeof(float));
}

// v[i] += s * x[i] for n elements of x (type t).
static void add_scaled(float *v, const void *x, cudaDataType_t t, float s, int n) {
    if (t == CUDA_R_32F) {
        const float *f = static_cast<const float *>(x);
        for (int i = 0; i < n; i++) v[i] += s * f[i];
    } else {
        const __nv_bfloat16 *b = static_cast<const __nv_bfloat16 *>(x);
        for (int i = 0; i < n; i++) v[i] += s * __bfloat162float(b[i]);
    }
}

// n floats of v into x as type t (bf16: rounded to nearest even).
static void narrow(void *x, cudaDataType_t t, const float *v, int n) {
    if (t == CUDA_R_32F) {
        memcpy(x, v, (size_t)n * sizeof(float));
    } else {
        __nv_bfloat16 *b = static_cast<__nv_bfloat16 *>(x);
        for (int i = 0; i < n; i++) b[i] = __float2bfloat16_rn(v[i]);
    }
}

// buf with room for n floats: grown, never shrunk, so its pages are touched once (not zeroed
// again on every product, as resizing a vector up would).
static float *room(std::vector<float> &buf, size_t n) {
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// X (column-major rows x cols, leading dimension ld, type t) as fp32 with rounding r: X itself
// when it is fp32 that nothing rounds, else a dense copy in buf. *ld_out: the result's ld.
static const float *operand_f32(const void *x, cudaDataType_t t, int rows, int cols, int ld, rounding r,
                                std::vector<float> &buf, int *ld_out) {
    if (t == CUDA_R_32F && r == ROUND_NONE) {
        *ld_out = ld;
        return static_cast<const float *>(x);
    }
    float *out = room(buf, (size_t)rows * cols);
    for (int j = 0; j < cols; j++) widen(out + (size_t)j * rows, element(x, t, (size_t)j * ld), t, r, rows);
    *ld_out = rows;
    return out;
}

// Rows i0 .. i0+h-1, columns j0 .. j0+w-1 of D from acc, their op(A) op(B) [h x w] (ld h),
// which is overwritten: D = alpha * acc + beta * C + bias, in that order, in fp32.
static void finish_tile(const product &p, float *acc, int i0, int h, int j0, int w) {
    for (int j = 0; j < w; j++) {
        float *v = acc + (size_t)j * h;
        const size_t col = (size_t)j0 + j;
        for (int i = 0; i < h; i++) v[i] *= p.alpha;
        if (p.beta != 0.0f) add_scaled(v, element(p.C, p.ct, col * p.ldc + i0), p.ct, p.beta, h);  // 0: C unread
        if (p.bias) add_scaled(v, element(p.bias, p.bias_type, i0), p.bias_type, 1.0f, h);
        narrow(const_cast<void *>(element(p.D, p.ct, col * p.ldd + i0)), p.ct, v, h);
    }
}

// Column-major D [m, n] read row-major is D^T [n, m] = op(B)^T · op(A)^T, and a column-major
// X read row-major is X^T: so tp_sgemm gets B and A as they lie, with trans flags tb and ta
// (op N: the storage read row-major is already op(X)^T; op T: it is op(X), to be transposed).
// D goes in tiles of h rows x w columns, so the temporaries stay under TILE_FLOATS whatever the
// shape (a logits product can be gigabytes); A's rows i0.. are A + i0 (op N) or A + i0*lda
// (op T), B's columns j0.. are B + j0*ldb (op N) or B + j0 (op T). The element loops here are
// serial: tp_sgemm has the threads, and the passes over memory are not worth a fork each.
static void run_product(const product &p) {
    if (p.m == 0 || p.n == 0) return;
    const bool multiply = p.k > 0 && p.alpha != 0.0f;  // as BLAS: else A and B are not read
    thread_local scratch s;
    const int k = std::max(p.k, 1);
    const int mb = std::max(1, std::min(p.m, TILE_FLOATS / k));
    const int nb = std::max(1, std::min(p.n, TILE_FLOATS / std::max(k, mb)));
    for (int i0 = 0; i0 < p.m; i0 += mb) {
        const int h = std::min(mb, p.m - i0);
        const float *a = NULL, *b = NULL;
        int lda = 0, ldb = 0;
        if (multiply) {
            const void *ai = element(p.A, p.at, p.ta ? (size_t)i0 * p.lda : (size_t)i0);
            a = operand_f32(ai, p.at, p.ta ? p.k : h, p.ta ? h : p.k, p.lda, p.round, s.a, &lda);
        }
        for (int j0 = 0; j0 < p.n; j0 += nb) {
            const int w = std::min(nb, p.n - j0);
            float *acc = room(s.acc, (size_t)h * w);
            if (multiply) {
                const void *bj = element(p.B, p.bt, p.tb ? (size_t)j0 : (size_t)j0 * p.ldb);
                b = operand_f32(bj, p.bt, p.tb ? w : p.k, p.tb ? p.k : w, p.ldb, p.round, s.b, &ldb);
                tp_sgemm(p.tb, p.ta, w, h, p.k, 1.0f, b, ldb, a, lda, 0.0f, acc, h);
            } else {
                memset(acc, 0, (size_t)h * w * sizeof(float));
            }
            finish_tile(p, acc, i0, h, j0, w);
        }
    }
}

// ---- checks shared by both APIs ----

static bool op_of(int32_t op, bool *trans) {
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T && op != CUBLAS_OP_C) return false;
    *trans = op != CUBLAS_OP_N;  // C is T for real data
    return true;
}

// The combinations cuBLAS documents for the fp32 compute types (A and B alike): bf16 -> bf16 or
// fp32, fp32 -> fp32; the FAST types on fp32 only. *r: the rounding of A and B.
static cublasStatus_t check_types(cudaDataType_t at, cudaDataType_t bt, cudaDataType_t ct,
                                  cublasComputeType_t compute, rounding *r) {
    if (compute == CUBLAS_COMPUTE_32F) *r = ROUND_NONE;
    else if (compute == CUBLAS_COMPUTE_32F_FAST_16BF) *r = ROUND_BF16;
    else if (compute == CUBLAS_COMPUTE_32F_FAST_TF32) *r = ROUND_TF32;
    else return CUBLAS_STATUS_NOT_SUPPORTED;
    if (at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (at == CUDA_R_16BF && compute == CUBLAS_COMPUTE_32F && (ct == CUDA_R_16BF || ct == CUDA_R_32F))
        return CUBLAS_STATUS_SUCCESS;
    if (at == CUDA_R_32F && ct == CUDA_R_32F) return CUBLAS_STATUS_SUCCESS;
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

// A leading dimension for `rows` rows: at least max(1, rows), as cuBLAS checks; beyond int,
// which tp_sgemm takes, is not supported here.
static cublasStatus_t check_ld(int64_t ld, int64_t rows) {
    if (ld < std::max<int64_t>(1, rows)) return CUBLAS_STATUS_INVALID_VALUE;
    return ld > INT_MAX ? CUBLAS_STATUS_NOT_SUPPORTED : CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLAS ----

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext{};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

// cublasGemmEx's arguments checked and gathered (C and D are the same matrix here).
static cublasStatus_t gemm_ex_product(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                                      const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                                      cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                      cublasComputeType_t compute, product *p) {
    *p = product{};
    if (!op_of(transa, &p->ta) || !op_of(transb, &p->tb)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s;
    if ((s = check_ld(lda, p->ta ? k : m)) || (s = check_ld(ldb, p->tb ? n : k)) || (s = check_ld(ldc, m))) return s;
    if ((s = check_types(at, bt, ct, compute, &p->round))) return s;
    if (m > 0 && n > 0 && (!C || (k > 0 && *static_cast<const float *>(alpha) != 0.0f && (!A || !B))))
        return CUBLAS_STATUS_INVALID_VALUE;  // NULL operands only where they are not read
    p->m = m, p->n = n, p->k = k;
    p->A = A, p->B = B, p->C = C, p->D = C;
    p->at = at, p->bt = bt, p->ct = ct;
    p->lda = lda, p->ldb = ldb, p->ldc = ldc, p->ldd = ldc;
    p->alpha = *static_cast<const float *>(alpha), p->beta = *static_cast<const float *>(beta);  // host pointers
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" {

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                         int lda, const void *B, cudaDataType Btype, int ldb, const void *beta,
                                         void *C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    product p;
    cublasStatus_t s = gemm_ex_product(transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype,
                                       ldc, computeType, &p);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (m > 0 && n > 0) sim::enqueue([p] { run_product(p); });
    return CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLASLt: handle and descriptors ----

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t *lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = new cublasLtContext{};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc,
                                                     cublasComputeType_t computeType, cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    matmul_desc *d = new matmul_desc{};
    d->compute = computeType, d->scale = scaleType, d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->trans_a = d->trans_b = CUBLAS_OP_N, d->epilogue = CUBLASLT_EPILOGUE_DEFAULT, d->bias_type = -1;
    *matmulDesc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    delete desc_of(matmulDesc);
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

// Copies an attribute of `size` bytes, the size cuBLASLt checks it against.
static cublasStatus_t set_value(void *field, size_t size, const void *buf, size_t sizeInBytes) {
    if (!buf || sizeInBytes != size) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(field, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" {

// Values are checked when used (the heuristic, the product), except the transposes' range.
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr, const void *buf,
                                                           size_t sizeInBytes) {
    matmul_desc *d = desc_of(matmulDesc);
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t op;
    bool trans;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return set_value(&d->compute, sizeof d->compute, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return set_value(&d->scale, sizeof d->scale, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
        return set_value(&d->pointer_mode, sizeof d->pointer_mode, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (set_value(&op, sizeof op, buf, sizeInBytes) || !op_of(op, &trans)) return CUBLAS_STATUS_INVALID_VALUE;
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->trans_a : d->trans_b) = op;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_value(&d->epilogue, sizeof d->epilogue, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_value(&d->bias, sizeof d->bias, buf, sizeInBytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set_value(&d->bias_type, sizeof d->bias_type, buf, sizeInBytes);
    default:
        // Not modelled: fail now and at every later use, rather than compute something else.
        d->unsupported = true;
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
    if (!matLayout || rows > INT_MAX || cols > INT_MAX) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t s = check_ld(ld, (int64_t)rows);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    *matLayout = reinterpret_cast<cublasLtMatrixLayout_t>(new matrix_layout{type, rows, cols, ld});
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    delete layout_of(matLayout);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new matmul_pref{});
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete reinterpret_cast<matmul_pref *>(pref);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t,
                                                                 const void *buf, size_t sizeInBytes) {
    if (!pref || !buf || sizeInBytes == 0) return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;  // accepted and ignored
}

}  // extern "C"

// ---- cuBLASLt: the product ----

// The bias's type as the product reads it: -1 is D's type, as cuBLASLt's default.
static cublasStatus_t bias_type_of(const matmul_desc *d, cudaDataType_t dt, cudaDataType_t *out) {
    *out = d->bias_type == -1 ? dt : (cudaDataType_t)d->bias_type;
    return *out == CUDA_R_32F || *out == CUDA_R_16BF ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

// Shapes, types and attributes of a cuBLASLt product checked and gathered into *p (all but
// the pointers and scalars): op(A) [m, k], op(B) [k, n], C and D [m, n].
static cublasStatus_t lt_product(const matmul_desc *d, const matrix_layout *a, const matrix_layout *b,
                                 const matrix_layout *c, const matrix_layout *dl, product *p) {
    *p = product{};
    if (!d || !a || !b || !c || !dl) return CUBLAS_STATUS_INVALID_VALUE;
    if (d->unsupported || d->scale != CUDA_R_32F || d->pointer_mode != CUBLASLT_POINTER_MODE_HOST)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && d->epilogue != CUBLASLT_EPILOGUE_BIAS)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!op_of(d->trans_a, &p->ta) || !op_of(d->trans_b, &p->tb)) return CUBLAS_STATUS_INVALID_VALUE;
    const uint64_t m = p->ta ? a->cols : a->rows, k = p->ta ? a->rows : a->cols;
    const uint64_t kb = p->tb ? b->cols : b->rows, n = p->tb ? b->rows : b->cols;
    if (k != kb || c->rows != m || c->cols != n || dl->rows != m || dl->cols != n) return CUBLAS_STATUS_INVALID_VALUE;
    if (c->type != dl->type) return CUBLAS_STATUS_NOT_SUPPORTED;
    cublasStatus_t s = check_types(a->type, b->type, c->type, (cublasComputeType_t)d->compute, &p->round);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (d->epilogue == CUBLASLT_EPILOGUE_BIAS && (s = bias_type_of(d, dl->type, &p->bias_type))) return s;
    p->m = (int)m, p->n = (int)n, p->k = (int)k;  // (the layouts' rows and columns fit int)
    p->at = a->type, p->bt = b->type, p->ct = c->type;
    p->lda = (int)a->ld, p->ldb = (int)b->ld, p->ldc = (int)c->ld, p->ldd = (int)dl->ld;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" {

// One placeholder algorithm, no workspace, for any product cublasLtMatmul would take.
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle,
                                                           cublasLtMatmulDesc_t operationDesc,
                                                           cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                                           cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                                           cublasLtMatmulPreference_t preference,
                                                           int requestedAlgoCount,
                                                           cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                           int *returnAlgoCount) {
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!preference || requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount)
        return CUBLAS_STATUS_INVALID_VALUE;
    *returnAlgoCount = 0;
    product p;
    cublasStatus_t s = lt_product(desc_of(operationDesc), layout_of(Adesc), layout_of(Bdesc), layout_of(Cdesc),
                                  layout_of(Ddesc), &p);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    cublasLtMatmulHeuristicResult_t *r = &heuristicResultsArray[0];
    memset(r, 0, sizeof *r);
    r->workspaceSize = 0;
    r->state = CUBLAS_STATUS_SUCCESS;
    r->wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

// algo and workspace are ignored: there is one way to multiply here.
cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                           const void *alpha, const void *A, cublasLtMatrixLayout_t Adesc,
                                           const void *B, cublasLtMatrixLayout_t Bdesc, const void *beta,
                                           const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                                           cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *, void *, size_t,
                                           cudaStream_t) {
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const matmul_desc *d = desc_of(computeDesc);
    product p;
    cublasStatus_t s = lt_product(d, layout_of(Adesc), layout_of(Bdesc), layout_of(Cdesc), layout_of(Ddesc), &p);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    p.alpha = *static_cast<const float *>(alpha), p.beta = *static_cast<const float *>(beta);  // host pointers
    if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
    // In place needs one layout; NULL operands only where they are not read.
    if (!D || (C == D && p.ldc != p.ldd) || (p.beta != 0.0f && !C) || (p.k > 0 && p.alpha != 0.0f && (!A || !B)))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (d->epilogue == CUBLASLT_EPILOGUE_BIAS && !(p.bias = d->bias)) return CUBLAS_STATUS_INVALID_VALUE;
    p.A = A, p.B = B, p.C = C, p.D = D;
    sim::enqueue([p] { run_product(p); });
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
