// gemm.c — tp_sgemm on the library that tests/bench/GEMM.md's measurements chose.
//
// Libraries are loaded with dlopen on the first call, so nothing links against a BLAS and a
// machine without one still builds and runs (slowly). In order of preference:
//   1. oneDNN (libdnnl.so.2, OpenMP runtime): picks its kernels from cpuid itself; as fast as
//      the best OpenBLAS for training shapes, 3x faster for one row (decoding).
//   2. OpenBLAS, its OpenMP build. Debian's 0.3.21 does not recognise recent Xeons and falls
//      back to its slowest kernels; it reads OPENBLAS_CORETYPE once, when it loads, so the
//      core type is chosen here from the CPU's features just before dlopen.
//   3. tp_sgemm_fallback, a plain OpenMP loop.
#include "cpu/gemm.h"

#include "cpu/cpu_ops.h"
#include "error.h"

#include <dlfcn.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void gemm_fn(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc);

static struct {
    gemm_fn *run;  // NULL: the fallback loop
    char name[160];
} backend;

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;

// ---- oneDNN ----

// dnnl_sgemm is row-major like tp_sgemm; its dims are int64 and it returns a status.
typedef int dnnl_sgemm_fn(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
typedef struct {  // dnnl_version_t
    int major, minor, patch;
    const char *hash;
    unsigned cpu_runtime, gpu_runtime;
} dnnl_version;
enum { DNNL_RUNTIME_OMP = 2 };
static dnnl_sgemm_fn *dnnl_sgemm;

// Threads: oneDNN's OpenMP runtime uses omp_get_max_threads(), or one thread when called
// inside a parallel region; nothing to set.
static void run_dnnl(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    int status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (status != 0) tp_die("tp_sgemm: dnnl_sgemm failed with status %d (M=%d N=%d K=%d)", status, M, N, K);
}

static const char *dnnl_isa_name(int isa) {
    switch (isa) {
    case 0x1: return "sse41";
    case 0x3: return "avx";
    case 0x7: return "avx2";
    case 0x407: return "avx2_vnni";
    case 0x27: return "avx512_core";
    case 0x67: return "avx512_core_vnni";
    case 0xe7: return "avx512_core_bf16";
    case 0x3e7: return "avx512_core_amx";
    default: return "isa?";
    }
}

static bool load_dnnl(void) {
    void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) return false;
    const dnnl_version *(*version)(void) = (const dnnl_version *(*)(void))dlsym(h, "dnnl_version");
    int (*isa)(void) = (int (*)(void))dlsym(h, "dnnl_get_effective_cpu_isa");
    dnnl_sgemm = (dnnl_sgemm_fn *)dlsym(h, "dnnl_sgemm");
    // A TBB or threadpool build would run its own threads beside our OpenMP team.
    if (!version || !isa || !dnnl_sgemm || version()->cpu_runtime != DNNL_RUNTIME_OMP) {
        dlclose(h);
        return false;
    }
    const dnnl_version *v = version();
    snprintf(backend.name, sizeof backend.name, "onednn %d.%d.%d (%s kernels, OpenMP)", v->major, v->minor, v->patch,
             dnnl_isa_name(isa()));
    backend.run = run_dnnl;
    return true;
}

// ---- OpenBLAS ----

// The CBLAS ABI (enums are ints); declared here so no BLAS header is needed to build.
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };
typedef void cblas_sgemm_fn(int order, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                            int lda, const float *B, int ldb, float beta, float *C, int ldc);
static cblas_sgemm_fn *cblas_sgemm;
static int (*openblas_get_num_threads)(void);
static void (*openblas_set_num_threads)(int);

static void run_openblas(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc) {
    // The OpenMP build runs single-threaded inside a parallel region by itself; outside, its
    // thread count sticks at 1 once it was 1, so follow the caller's team size on every call.
    if (!omp_in_parallel()) {
        int want = omp_get_max_threads();
        if (openblas_get_num_threads() != want) openblas_set_num_threads(want);
    }
    cblas_sgemm(CBLAS_ROW_MAJOR, trans_a ? CBLAS_TRANS : CBLAS_NO_TRANS, trans_b ? CBLAS_TRANS : CBLAS_NO_TRANS, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The OpenBLAS kernel family for this CPU, by the instructions its kernels use; NULL leaves
// the choice to OpenBLAS (CPUs without AVX2).
static const char *openblas_coretype(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

#if defined(__x86_64__)
#define MULTIARCH "x86_64-linux-gnu"
#elif defined(__aarch64__)
#define MULTIARCH "aarch64-linux-gnu"
#else
#define MULTIARCH "unknown"
#endif

// Only an OpenMP build: a pthreads build would start its own threads beside ours. Debian
// installs it under openblas-openmp/; the plain sonames cover other layouts.
static bool load_openblas(void) {
    static const char *const paths[] = {"/usr/lib/" MULTIARCH "/openblas-openmp/libopenblas.so.0",
                                        "libopenblaso.so.0", "libopenblas.so.0"};
    const char *user = getenv("OPENBLAS_CORETYPE");  // a value set by the user or the machine wins
    const char *core = user ? NULL : openblas_coretype();
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (core) setenv("OPENBLAS_CORETYPE", core, 1);
        void *h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (core) unsetenv("OPENBLAS_CORETYPE");  // not for our children: a newer OpenBLAS knows better
        if (!h) continue;
        int (*parallel)(void) = (int (*)(void))dlsym(h, "openblas_get_parallel");
        char *(*corename)(void) = (char *(*)(void))dlsym(h, "openblas_get_corename");
        char *(*config)(void) = (char *(*)(void))dlsym(h, "openblas_get_config");
        cblas_sgemm = (cblas_sgemm_fn *)dlsym(h, "cblas_sgemm");
        openblas_get_num_threads = (int (*)(void))dlsym(h, "openblas_get_num_threads");
        openblas_set_num_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
        if (!parallel || parallel() != 2 || !corename || !config || !cblas_sgemm || !openblas_get_num_threads ||
            !openblas_set_num_threads) {
            dlclose(h);
            continue;
        }
        char version[32] = "?";  // the config string starts "OpenBLAS 0.3.21 ..."
        sscanf(config(), "OpenBLAS %31s", version);
        snprintf(backend.name, sizeof backend.name, "openblas %s (%s kernels%s, OpenMP)", version, corename(),
                 user ? ", OPENBLAS_CORETYPE from the environment" : "");
        backend.run = run_openblas;
        return true;
    }
    return false;
}

#ifdef __SANITIZE_ADDRESS__
// LeakSanitizer misreads the dynamic TLS of dlopen'd libraries (oneDNN's thread_local data):
// its glibc-version guess fails on current glibc (google/sanitizers#1322) and the leak check
// crashes at exit. Sanitizer builds turn that interception off; weak, so a program's own
// options win, and ASAN_OPTIONS in the environment overrides it.
__attribute__((weak)) const char *__asan_default_options(void);
__attribute__((weak)) const char *__asan_default_options(void) { return "intercept_tls_get_addr=0"; }
#endif

// ---- choosing ----

static void load_backend(void) {
    const char *force = getenv("TP_SGEMM");
    if (force && *force) {
        if (!strcmp(force, "onednn") ? load_dnnl() : !strcmp(force, "openblas") ? load_openblas() : false) return;
        if (!strcmp(force, "fallback")) {
            snprintf(backend.name, sizeof backend.name, "fallback (TP_SGEMM=fallback)");
            return;
        }
        tp_die("TP_SGEMM=%s: not available (onednn needs libdnnl2, openblas libopenblas0-openmp; or fallback)",
               force);
    }
    if (load_dnnl() || load_openblas()) return;
    snprintf(backend.name, sizeof backend.name, "fallback (neither libdnnl2 nor libopenblas0-openmp found)");
}

const char *tp_sgemm_backend(void) {
    pthread_once(&backend_once, load_backend);
    return backend.name;
}

// ---- the fallback: one task per (row of C, block of JB columns) ----

enum { JB = 256 };

// Rows of B are contiguous in k: a dot product, with 16 partial sums so it vectorises
// without -ffast-math (cpu_ops.h).
VECTOR_CLONES float dot16(const float *a, const float *b, int K) {
    float acc[16] = {0};
    int k = 0;
    for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[k + l] * b[k + l];
    float s = 0;
    for (; k < K; k++) s += a[k] * b[k];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

// acc [w] += op(A)[i, :] · B [K, w] (B's rows ldb apart), one row of B at a time.
VECTOR_CLONES static void axpy_rows(float *restrict acc, const float *arow, const float *B, int ldb, int K, int w) {
    for (int j = 0; j < w; j++) acc[j] = 0;
    for (int k = 0; k < K; k++) {
        const float *brow = B + (size_t)k * ldb;
        float a = arow[k];
        for (int j = 0; j < w; j++) acc[j] += a * brow[j];
    }
}

void tp_sgemm_fallback(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc) {
    long nb = (N + JB - 1) / JB, tasks = (long)M * nb;
    // Nested inside a parallel region it runs on the caller's thread alone.
#pragma omp parallel if (!omp_in_parallel() && tasks > 1 && (double)M * N * K > 1e6)
    {
        float acc[JB];
        float *arow = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1));
        if (!arow) tp_die("tp_sgemm: out of memory (%d floats)", K);
        long packed = -1;
        // Task t: column block t / M, row t % M, so consecutive tasks reuse one block of B in cache.
#pragma omp for schedule(static)
        for (long t = 0; t < tasks; t++) {
            long i = t % M, j0 = t / M * JB;
            int w = N - j0 < JB ? (int)(N - j0) : JB;
            if (packed != i) {  // op(A)[i, :], contiguous
                for (int k = 0; k < K; k++) arow[k] = trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                packed = i;
            }
            if (trans_b) {
                for (int j = 0; j < w; j++) acc[j] = dot16(arow, B + (size_t)(j0 + j) * ldb, K);
            } else {
                axpy_rows(acc, arow, B + j0, ldb, K, w);
            }
            float *crow = C + (size_t)i * ldc + j0;
            // beta = 0 must not read C: it may hold NaN or garbage.
            for (int j = 0; j < w; j++) crow[j] = alpha * acc[j] + (beta == 0 ? 0 : beta * crow[j]);
        }
        free(arow);
    }
}

// ---- the interface ----

void tp_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    int a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
    if (M < 0 || N < 0 || K < 0 || lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) ||
        ldc < (N > 1 ? N : 1))
        tp_die("tp_sgemm: bad shape: M=%d N=%d K=%d trans_a=%d trans_b=%d lda=%d ldb=%d ldc=%d", M, N, K, trans_a,
               trans_b, lda, ldb, ldc);
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0) {  // as BLAS defines it: C = beta * C, A and B not read
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    pthread_once(&backend_once, load_backend);
    (backend.run ? backend.run : tp_sgemm_fallback)(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
