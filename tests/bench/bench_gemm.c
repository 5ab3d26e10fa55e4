// bench_gemm — sgemm candidates at the model's shapes (Qwen2.5-0.5B: 896 -> 4864 -> 896, and
// the 151,936-token head), 2 threads and 1 thread, GFLOP/s medians, and each candidate's
// error against double-precision dot products on sampled entries of C.
//
//   make bench   (or: build/release/bench/bench_gemm [--runs N] [--quick] [--only NAME,NAME...])
//
// About 11 minutes on 2 cores (the slow candidates at the 151,936 head dominate); --quick
// keeps 1 and 64 rows of the MLP shapes (under a minute). Results: tests/bench/GEMM.md.
//
// Every candidate runs in a child process (this program re-executed with --child NAME),
// because OpenBLAS reads OPENBLAS_CORETYPE once, when it loads, and two libraries in one
// process could share symbols. Libraries are loaded with dlopen, so a missing one is a
// "-" column, not a build failure. A benchmark, never a test.
#include "cpu/gemm.h"
#include "error.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIBDIR "/usr/lib/x86_64-linux-gnu/"

typedef struct {
    const char *name;      // column heading and --child argument
    const char *lib;       // dlopen path; NULL for our own code
    const char *coretype;  // OPENBLAS_CORETYPE for the child; NULL: unset
    const char *tp_sgemm;  // TP_SGEMM for the child
} candidate;

static const candidate candidates[] = {
    {"openblas", LIBDIR "openblas-openmp/libopenblas.so.0", NULL, NULL},
    {"ob-skx", LIBDIR "openblas-openmp/libopenblas.so.0", "SkylakeX", NULL},
    {"ob-cpx", LIBDIR "openblas-openmp/libopenblas.so.0", "Cooperlake", NULL},
    {"ob-hsw", LIBDIR "openblas-openmp/libopenblas.so.0", "Haswell", NULL},
    {"blis", LIBDIR "blis-openmp/libblis.so.4", NULL, NULL},
    {"onednn", "libdnnl.so.2", NULL, NULL},
    {"fallback", NULL, NULL, "fallback"},
    {"tp_sgemm", NULL, NULL, NULL},
};
enum { NCAND = sizeof candidates / sizeof candidates[0] };

typedef struct {
    const char *label;
    bool ta, tb;
    int M, N, K;
    float beta;
} shape;

// Forward y[rows, out] = x[rows, in] · W[out, in]^T; backward at 512 rows:
// dW[out, in] += dy^T[out, rows] · x[rows, in] and dx[rows, in] += dy[rows, out] · W[out, in].
static shape shapes[32];
static int nshapes;

static void make_shapes(bool quick) {
    static const int pairs[][2] = {{896, 4864}, {4864, 896}, {896, 151936}};
    static const int rows[] = {1, 64, 512};
    static char labels[32][48];
    for (int r = 0; r < 3; r++)
        for (int p = 0; p < 3; p++) {
            if (quick && (rows[r] == 512 || p == 2)) continue;  // --quick: 1 and 64 rows, the MLP pair
            snprintf(labels[nshapes], sizeof labels[0], "fwd %3d x %d->%d", rows[r], pairs[p][0], pairs[p][1]);
            shapes[nshapes] = (shape){labels[nshapes], false, true, rows[r], pairs[p][1], pairs[p][0], 0};
            nshapes++;
        }
    for (int p = 0; p < 3 && !quick; p++) {
        int in = pairs[p][0], out = pairs[p][1];
        snprintf(labels[nshapes], sizeof labels[0], "dW  512 x %d->%d", in, out);
        shapes[nshapes] = (shape){labels[nshapes], true, false, out, in, 512, 1};
        nshapes++;
        snprintf(labels[nshapes], sizeof labels[0], "dx  512 x %d->%d", in, out);
        shapes[nshapes] = (shape){labels[nshapes], false, false, 512, in, out, 1};
        nshapes++;
    }
}

// ---- the candidates, behind one row-major signature ----

typedef void gemm_fn(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc);
typedef void cblas_sgemm_fn(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
                            float *, int);
typedef int dnnl_sgemm_fn(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *,
                          int64_t, float, float *, int64_t);
static cblas_sgemm_fn *cblas;
static dnnl_sgemm_fn *dnnl;
static void (*set_threads)(int);

static void run_cblas(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    cblas(101, ta ? 112 : 111, tb ? 112 : 111, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void run_dnnl(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc) {
    if (dnnl(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != 0)
        tp_die("dnnl_sgemm failed (M=%d N=%d K=%d)", M, N, K);
}

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) tp_die("%s: %s", name, dlerror());
    return p;
}

// Loads the candidate; returns its kernel and fills info (kernel family, version), or NULL.
static gemm_fn *load(const candidate *c, char *info, size_t n) {
    if (!c->lib) {
        snprintf(info, n, "%s", c->tp_sgemm ? "plain OpenMP loop, no library" : tp_sgemm_backend());
        return c->tp_sgemm ? tp_sgemm_fallback : tp_sgemm;
    }
    void *h = dlopen(c->lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(info, n, "not installed (%s)", dlerror());
        return NULL;
    }
    if (strstr(c->lib, "openblas")) {
        char *(*corename)(void) = sym(h, "openblas_get_corename");
        char *(*config)(void) = sym(h, "openblas_get_config");
        snprintf(info, n, "%s kernels; %s", corename(), config());
        cblas = sym(h, "cblas_sgemm");
        set_threads = sym(h, "openblas_set_num_threads");
        return run_cblas;
    }
    if (strstr(c->lib, "blis")) {
        const char *(*arch_string)(int) = sym(h, "bli_arch_string");
        int (*arch_id)(void) = sym(h, "bli_arch_query_id");
        const char *(*version)(void) = sym(h, "bli_info_get_version_str");
        snprintf(info, n, "BLIS %s, %s kernels", version(), arch_string(arch_id()));
        cblas = sym(h, "cblas_sgemm");
        set_threads = sym(h, "bli_thread_set_num_threads");
        return run_cblas;
    }
    struct {
        int major, minor, patch;
        const char *hash;
        unsigned cpu_runtime, gpu_runtime;
    } const *(*version)(void) = sym(h, "dnnl_version");
    int (*isa)(void) = sym(h, "dnnl_get_effective_cpu_isa");
    snprintf(info, n, "oneDNN %d.%d.%d, effective ISA 0x%x (0x27 avx512_core, 0xe7 +bf16, 0x3e7 +AMX)",
             version()->major, version()->minor, version()->patch, (unsigned)isa());
    dnnl = sym(h, "dnnl_sgemm");
    return run_dnnl;
}

// ---- data and the double-precision check ----

static float value(uint64_t i, uint64_t seed) {  // uniform in [-1, 1), a hash of the index
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return (float)((double)((z ^ (z >> 31)) >> 40) / (double)(1 << 23) - 1.0);
}

static float *filled(size_t n, uint64_t seed) {
    float *p = tp_xmalloc(sizeof(float) * (n ? n : 1));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) p[i] = value(i, seed);
    return p;
}

enum { SAMPLES = 300 };

// Max over sampled entries of |C - ref| / (|alpha| sum_k |a_ik b_kj| + |beta c0|): the error
// relative to the size of what was summed, which stays meaningful when ref is near zero.
static double check(const shape *s, const float *A, int lda, const float *B, int ldb, const float *C, int ldc,
                    const float *c0, const int *si, const int *sj) {
    double worst = 0;
    for (int t = 0; t < SAMPLES; t++) {
        int i = si[t], j = sj[t];
        double ref = 0, mag = 0;
        for (int k = 0; k < s->K; k++) {
            double a = s->ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
            double b = s->tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
            ref += a * b, mag += fabs(a * b);
        }
        ref += s->beta * (double)c0[t], mag += fabs(s->beta * (double)c0[t]);
        double got = C[(size_t)i * ldc + j], err = fabs(got - ref) / (mag > 0 ? mag : 1);
        if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
    }
    return worst;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- a child: one candidate, driven by the parent over two pipes ----
//   S shape   -> "E err2 err1"   set up the shape, one checked call at 2 threads and at 1
//   T threads -> "D seconds"     seconds per call (see timed_call)
//   F         -> "K"             free the shape's buffers
// A candidate too slow for a shape (the fallback loop on the 151,936 head) answers "E skip".

static struct {
    gemm_fn *gemm;
    const shape *sh;
    float *A, *B, *C;
    int lda, ldb, ldc;
} cur;

static void set_up(int s, FILE *out, bool floor_only) {
    const shape *sh = cur.sh = &shapes[s];
    if (floor_only && 2.0 * sh->M * sh->N * sh->K > 2e10) {  // minutes per call: the floor is clear anyway
        fprintf(out, "E skip\n");
        cur.A = cur.B = cur.C = NULL;
        return;
    }
    cur.lda = sh->ta ? sh->M : sh->K, cur.ldb = sh->tb ? sh->K : sh->N, cur.ldc = sh->N;
    cur.A = filled((size_t)sh->M * sh->K, 1), cur.B = filled((size_t)sh->K * sh->N, 2);
    cur.C = filled((size_t)sh->M * sh->N, 3);
    int si[SAMPLES], sj[SAMPLES];
    float c0[SAMPLES];
    for (int t = 0; t < SAMPLES; t++) {  // the four corners first: edge tiles are where kernels go wrong
        double u = t < 4 ? (t & 1) : (value(t, 7) + 1) / 2, v = t < 4 ? (t >> 1) : (value(t, 8) + 1) / 2;
        si[t] = (int)(u * (sh->M - 1) + 0.5), sj[t] = (int)(v * (sh->N - 1) + 0.5);
    }
    double err[3];
    for (int threads = 2; threads >= 1; threads--) {
        omp_set_num_threads(threads);
        if (set_threads) set_threads(threads);
        for (int t = 0; t < SAMPLES; t++) c0[t] = cur.C[(size_t)si[t] * cur.ldc + sj[t]];
        cur.gemm(sh->ta, sh->tb, sh->M, sh->N, sh->K, 1.0f, cur.A, cur.lda, cur.B, cur.ldb, sh->beta, cur.C, cur.ldc);
        err[threads] = check(sh, cur.A, cur.lda, cur.B, cur.ldb, cur.C, cur.ldc, c0, si, sj);
    }
    fprintf(out, "E %.3g %.3g\n", err[2], err[1]);
}

// Seconds per call. A short call is repeated for 0.2 s and the first, warming, call dropped:
// a lone millisecond call after a pause measures thread wake-up and cold caches, not the kernel.
static double timed_call(int threads) {
    const shape *sh = cur.sh;
    omp_set_num_threads(threads);
    if (set_threads) set_threads(threads);
    double t0 = now(), first = 0, t;
    int calls = 0;
    do {
        cur.gemm(sh->ta, sh->tb, sh->M, sh->N, sh->K, 1.0f, cur.A, cur.lda, cur.B, cur.ldb, sh->beta, cur.C, cur.ldc);
        t = now() - t0;
        if (calls++ == 0) first = t;
    } while (first < 0.1 && t < 0.2);
    return calls == 1 ? first : (t - first) / (calls - 1);
}

static int child(const char *name) {
    const candidate *c = NULL;
    for (int i = 0; i < NCAND; i++)
        if (!strcmp(candidates[i].name, name)) c = &candidates[i];
    if (!c) tp_die("unknown candidate %s", name);
    char info[512], cmd[64];
    cur.gemm = load(c, info, sizeof info);
    printf("I %s\n", info);
    fflush(stdout);
    int arg;
    while (cur.gemm && fgets(cmd, sizeof cmd, stdin)) {
        if (sscanf(cmd, "S %d", &arg) == 1 && arg >= 0 && arg < nshapes) set_up(arg, stdout, !c->lib && c->tp_sgemm);
        else if (sscanf(cmd, "T %d", &arg) == 1 && cur.A) printf("D %.9f\n", timed_call(arg));
        else if (cmd[0] == 'F') free(cur.A), free(cur.B), free(cur.C), cur.A = NULL, printf("K\n");
        else break;
        fflush(stdout);
    }
    return 0;
}

// ---- the parent: all children alive at once, one timed call each in turn ----

typedef struct {
    pid_t pid;
    FILE *to, *from;
    bool alive;
    char info[600];
} proc;

static double gflops[NCAND][32][3], errs[NCAND][32][3];

static void start_child(const char *self, int ci, bool quick, proc *p) {
    int down[2], up[2];
    // close-on-exec: a later child must not hold this child's pipe ends open
    if (pipe2(down, O_CLOEXEC) || pipe2(up, O_CLOEXEC)) tp_die("pipe failed");
    fflush(stdout);
    p->pid = fork();
    if (p->pid < 0) tp_die("fork failed");
    if (p->pid == 0) {
        const candidate *c = &candidates[ci];
        if (c->coretype) setenv("OPENBLAS_CORETYPE", c->coretype, 1);
        else unsetenv("OPENBLAS_CORETYPE");  // "as installed": the library's own detection; tp_sgemm chooses
        if (c->tp_sgemm) setenv("TP_SGEMM", c->tp_sgemm, 1);
        else unsetenv("TP_SGEMM");
        dup2(down[0], 0), dup2(up[1], 1);
        close(down[0]), close(down[1]), close(up[0]), close(up[1]);
        execl(self, self, "--child", c->name, quick ? "--quick" : (char *)NULL, (char *)NULL);
        _exit(127);
    }
    close(down[0]), close(up[1]);
    p->to = fdopen(down[1], "w"), p->from = fdopen(up[0], "r");
    char line[700];
    p->alive = false;
    snprintf(p->info, sizeof p->info, "did not start");
    if (fgets(line, sizeof line, p->from) && line[0] == 'I') {
        snprintf(p->info, sizeof p->info, "%.*s", (int)strcspn(line + 2, "\n"), line + 2);
        p->alive = !strstr(p->info, "not installed");
    }
}

// Sends a command, returns the reply (or NULL: the child died, and is marked so).
static const char *ask(proc *p, const char *fmt, int arg) {
    static char line[256];
    fprintf(p->to, fmt, arg);
    fflush(p->to);
    if (fgets(line, sizeof line, p->from)) return line;
    p->alive = false;
    snprintf(p->info + strlen(p->info), sizeof p->info - strlen(p->info), " [died]");
    return NULL;
}

static void stop_child(proc *p) {
    fclose(p->to), fclose(p->from);
    int status;
    waitpid(p->pid, &status, 0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Candidates take turns call by call, so a burst of load from outside falls on all of them;
// a 30 ms pause after each call lets the OpenMP threads of the last one stop spinning.
static void measure(proc *procs, const bool *use, int max_runs) {
    for (int s = 0; s < nshapes; s++) {
        bool live[NCAND] = {0};
        for (int c = 0; c < NCAND; c++) {
            if (!use[c] || !procs[c].alive) continue;
            const char *r = ask(&procs[c], "S %d\n", s);
            double e2, e1;
            if (r && sscanf(r, "E %lf %lf", &e2, &e1) == 2) errs[c][s][2] = e2, errs[c][s][1] = e1, live[c] = true;
        }
        static double secs[NCAND][3][64];
        int runs[NCAND][3] = {{0}};
        double spent[NCAND][3] = {{0}};
        for (int rep = 0; rep < max_runs; rep++)
            for (int threads = 2; threads >= 1; threads--)
                for (int k = 0; k < NCAND; k++) {
                    int c = (k + rep) % NCAND;
                    int n = runs[c][threads];
                    if (!live[c] || (n >= 3 && spent[c][threads] > 2)) continue;
                    const char *r = ask(&procs[c], "T %d\n", threads);
                    double d;
                    if (!r || sscanf(r, "D %lf", &d) != 1) {
                        live[c] = false;
                        continue;
                    }
                    secs[c][threads][n] = d, runs[c][threads] = n + 1, spent[c][threads] += d;
                    nanosleep(&(struct timespec){0, 30000000}, NULL);
                }
        for (int c = 0; c < NCAND; c++) {
            if (live[c]) ask(&procs[c], "F\n", 0);
            for (int t = 1; t <= 2; t++) {
                int n = runs[c][t];
                if (!n) continue;
                qsort(secs[c][t], (size_t)n, sizeof(double), cmp_double);
                double med = n % 2 ? secs[c][t][n / 2] : (secs[c][t][n / 2 - 1] + secs[c][t][n / 2]) / 2;
                gflops[c][s][t] = 2.0 * shapes[s].M * shapes[s].N * shapes[s].K / med * 1e-9;
            }
        }
        fprintf(stderr, ".");
    }
    fprintf(stderr, "\n");
}

static void table(const bool *use, int threads) {
    printf("\n%d thread%s, GFLOP/s (median):\n%-26s", threads, threads > 1 ? "s" : "", "shape (M x K->N)");
    for (int c = 0; c < NCAND; c++)
        if (use[c]) printf(" %9s", candidates[c].name);
    printf("\n");
    for (int s = 0; s < nshapes; s++) {
        printf("%-26s", shapes[s].label);
        for (int c = 0; c < NCAND; c++)
            if (use[c]) gflops[c][s][threads] > 0 ? printf(" %9.1f", gflops[c][s][threads]) : printf(" %9s", "-");
        printf("\n");
    }
}

int main(int argc, char **argv) {
    tp_set_program(argv[0]);
    int runs = 7;
    bool quick = false;
    const char *only = NULL, *child_name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--child") && i + 1 < argc) child_name = argv[++i];
        else tp_die_usage("usage: bench_gemm [--runs N] [--quick] [--only NAME,NAME...]");
    }
    if (runs < 3 || runs > 64) tp_die_usage("--runs must be 3..64");
    make_shapes(quick);
    if (child_name) return child(child_name);

    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) tp_die("cannot find /proc/self/exe");
    self[len] = 0;
    printf("sgemm at the model's shapes: forward y = x·W^T, backward dW += dy^T·x and dx += dy·W; "
           "medians of 3 to %d timed calls per cell, candidates taking turns call by call\n",
           runs);
    bool use[NCAND] = {0};
    proc procs[NCAND];
    for (int c = 0; c < NCAND; c++) {
        char list[256], key[64];
        snprintf(list, sizeof list, ",%s,", only ? only : "");
        snprintf(key, sizeof key, ",%s,", candidates[c].name);
        if (only && !strstr(list, key)) continue;
        start_child(self, c, quick, &procs[c]);
        use[c] = true;
        const char *core = candidates[c].coretype;
        printf("  %-9s %s%s%s\n", candidates[c].name, procs[c].info, core ? "; OPENBLAS_CORETYPE=" : "",
               core ? core : "");
    }
    fflush(stdout);
    measure(procs, use, runs);
    for (int c = 0; c < NCAND; c++)
        if (use[c]) stop_child(&procs[c]);
    table(use, 2);
    table(use, 1);
    printf("\nworst error over the shapes and thread counts (|C - ref| / sum|a*b|, %d sampled entries of C per "
           "shape, ref in double):\n",
           SAMPLES);
    for (int c = 0; c < NCAND; c++) {
        if (!use[c]) continue;
        double worst = 0;
        int at = -1;
        for (int s = 0; s < nshapes; s++)
            for (int t = 1; t <= 2; t++)
                if (gflops[c][s][t] > 0 && !(errs[c][s][t] <= worst)) worst = errs[c][s][t], at = s;
        if (at < 0) printf("  %-9s -\n", candidates[c].name);
        else printf("  %-9s %.2g (%s)%s\n", candidates[c].name, worst, shapes[at].label, worst > 1e-5 ? "  WRONG" : "");
    }
    return 0;
}
