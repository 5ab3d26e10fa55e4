// tp_sgemm (whatever backend this machine loads, and the library-free fallback) and the
// linear op, against double-precision loops.
#include "cpu/gemm.h"
#include "ops.h"
#include "test.h"

#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

static float *random_floats(size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = (float)(test_uniform() * 2 - 1);
    return p;
}

typedef void gemm_fn(bool, bool, int, int, int, float, const float *, int, const float *, int, float, float *, int);

// Worst |C - ref| / (|alpha| sum_k |a b| + |beta c0|) over C[M, N]: the error relative to what
// was summed (fp32 accumulation over K terms gives ~1e-7 here). Also checks that the padding
// columns N..ldc-1 of every row still hold their old values.
static double gemm_err(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, const float *C0, const float *C, int ldc, bool *pad_ok) {
    double worst = 0;
    *pad_ok = true;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double sum = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                sum += a * b, mag += fabs(a * b);
            }
            double c0 = beta == 0 ? 0 : C0[(size_t)i * ldc + j];  // beta = 0: C0 may be NaN
            double ref = alpha * sum + beta * c0, scale = fabs(alpha) * mag + fabs(beta * c0);
            double err = fabs(C[(size_t)i * ldc + j] - ref) / (scale > 0 ? scale : 1);
            if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
        }
        for (int j = N; j < ldc; j++)
            if (memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], sizeof(float))) *pad_ok = false;
    }
    return worst;
}

static void nan_padding(float *X, int rows, int width, int ld) {
    for (int r = 0; r < rows; r++)
        for (int c = width; c < ld; c++) X[(size_t)r * ld + c] = NAN;
}

// One call on random data with padded strides; returns the error, CHECKs the padding.
static double run_case(gemm_fn *gemm, bool ta, bool tb, int M, int N, int K, float alpha, float beta, int pad) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    float *A = random_floats((size_t)(ta ? K : M) * lda), *B = random_floats((size_t)(tb ? N : K) * ldb);
    float *C0 = random_floats((size_t)M * ldc), *C = malloc(sizeof(float) * (size_t)M * ldc);
    nan_padding(A, ta ? K : M, ta ? M : K, lda);  // a read past the width shows up as NaN in C
    nan_padding(B, tb ? N : K, tb ? K : N, ldb);
    if (beta == 0)
        for (size_t i = 0; i < (size_t)M * ldc; i++)
            if (i % (size_t)ldc < (size_t)N) C0[i] = NAN;  // must be overwritten, never read
    memcpy(C, C0, sizeof(float) * (size_t)M * ldc);
    gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    bool pad_ok;
    double err = gemm_err(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc, &pad_ok);
    CHECK_MSG(pad_ok, "padding columns changed: ta=%d tb=%d M=%d N=%d K=%d pad=%d", ta, tb, M, N, K, pad);
    free(A), free(B), free(C0), free(C);
    return err;
}

static void check_all_shapes(gemm_fn *gemm) {
    static const int Ms[] = {1, 7, 65}, Ns[] = {1, 5, 67}, Ks[] = {3, 16, 257};
    static const float ab[][2] = {{1, 0}, {1, 1}, {-0.5f, 2}, {2, -1}};
    int cases = 0;
    for (int t = 0; t < 4; t++)
        for (int m = 0; m < 3; m++)
            for (int n = 0; n < 3; n++)
                for (int k = 0; k < 3; k++) {
                    bool ta = t & 1, tb = t & 2;
                    const float *c = ab[cases++ % 4];
                    int pad = cases % 3 == 0 ? 0 : 1 + cases % 5;
                    double err = run_case(gemm, ta, tb, Ms[m], Ns[n], Ks[k], c[0], c[1], pad);
                    CHECK_MSG(err <= 1e-6, "ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g pad=%d: error %.3g", ta, tb,
                              Ms[m], Ns[n], Ks[k], c[0], c[1], pad, err);
                }
}

static void test_sgemm_shapes(void) { check_all_shapes(tp_sgemm); }
static void test_fallback_shapes(void) { check_all_shapes(tp_sgemm_fallback); }

// Shapes big enough for the libraries' threaded and blocked paths (several tiles, edge tiles).
static void test_sgemm_model_like(void) {
    static const int shapes[][3] = {{64, 300, 200}, {129, 97, 515}, {1, 1000, 896}, {300, 1, 64}};
    for (int s = 0; s < 4; s++)
        for (int t = 0; t < 4; t++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            double err = run_case(tp_sgemm, t & 1, t & 2, M, N, K, 1, t == 3 ? 1.0f : 0.0f, t);
            CHECK_MSG(err <= 1e-6, "M=%d N=%d K=%d trans=%d: error %.3g", M, N, K, t, err);
        }
}

// K = 0 or alpha = 0: C = beta * C, and A and B are not read (NaN there must not leak in).
static void test_sgemm_degenerate(void) {
    float A[6], B[6], C[4] = {1, 2, 3, 4};
    for (int i = 0; i < 6; i++) A[i] = B[i] = NAN;
    tp_sgemm(false, false, 2, 2, 0, 1, A, 1, B, 2, 2, C, 2);
    CHECK(C[0] == 2 && C[1] == 4 && C[2] == 6 && C[3] == 8);
    tp_sgemm(false, true, 2, 2, 3, 0, A, 3, B, 3, 0.5f, C, 2);
    CHECK(C[0] == 1 && C[1] == 2 && C[2] == 3 && C[3] == 4);
    C[0] = NAN;
    tp_sgemm(true, false, 2, 2, 3, 0, A, 2, B, 2, 0, C, 2);
    CHECK(C[0] == 0 && C[3] == 0);
    tp_sgemm(false, false, 0, 2, 3, 1, A, 3, B, 2, 0, C, 2);  // M = 0: nothing
    CHECK(C[3] == 0);
}

// Inside a parallel region every thread's call runs alone and gives the serial answer; with
// one thread and with the caller's team the results agree.
static void test_sgemm_threads(void) {
    const int M = 96, N = 160, K = 384;
    float *A = random_floats((size_t)M * K), *B = random_floats((size_t)N * K);
    float *ref = calloc((size_t)M * N, sizeof(float)), *par = calloc((size_t)M * N, sizeof(float));
    float *one = calloc((size_t)M * N, sizeof(float));
    tp_sgemm(false, true, M, N, K, 1, A, K, B, K, 0, ref, N);
#pragma omp parallel for num_threads(2) schedule(static)
    for (int b = 0; b < 4; b++)  // four row blocks of 24
        tp_sgemm(false, true, 24, N, K, 1, A + (size_t)b * 24 * K, K, B, K, 0, par + (size_t)b * 24 * N, N);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    tp_sgemm(false, true, M, N, K, 1, A, K, B, K, 0, one, N);
    omp_set_num_threads(saved);
    double worst = 0;
    for (size_t i = 0; i < (size_t)M * N; i++) {
        worst = fmax(worst, fabs(par[i] - ref[i]) / (fabs(ref[i]) + 1));
        worst = fmax(worst, fabs(one[i] - ref[i]) / (fabs(ref[i]) + 1));
    }
    CHECK_MSG(worst <= 1e-5, "threaded results differ by %.3g", worst);
    free(A), free(B), free(ref), free(par), free(one);
}

static void test_sgemm_bad_shape_dies(void) {
    int fd[2];
    if (pipe(fd)) SKIP("pipe failed");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        float A[4] = {0}, B[4] = {0}, C[4] = {0};
        tp_sgemm(false, false, 2, 2, 2, 1, A, 1, B, 2, 0, C, 2);  // lda 1 < K 2
        _exit(0);
    }
    close(fd[1]);
    char msg[512] = "";
    ssize_t n = read(fd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = 0;
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    CHECK_CONTAINS(msg, "tp_sgemm: bad shape: M=2 N=2 K=2 trans_a=0 trans_b=0 lda=1");
}

// Same inputs, same thread count: the same bits (rollout and training must agree exactly).
static void test_sgemm_deterministic(void) {
    const int M = 130, N = 300, K = 520;
    float *A = random_floats((size_t)M * K), *B = random_floats((size_t)N * K);
    float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
    tp_sgemm(false, true, M, N, K, 1, A, K, B, K, 0, C1, N);
    tp_sgemm(false, true, M, N, K, 1, A, K, B, K, 0, C2, N);
    CHECK(!memcmp(C1, C2, sizeof(float) * M * N));
    free(A), free(B), free(C1), free(C2);
}

static void test_backend_named(void) {
    const char *name = tp_sgemm_backend();
    CHECK(name && *name);
    printf("# tp_sgemm backend: %s\n", name);
}

// Every library this machine has, not only the preferred one: this program again, with
// TP_SGEMM set, running the tp_sgemm tests alone.
static void check_backend(const char *name) {
    int fd[2];
    if (pipe(fd)) SKIP("pipe failed");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1), dup2(fd[1], 2);
        close(fd[0]), close(fd[1]);
        setenv("TP_SGEMM", name, 1);
        execl("/proc/self/exe", "test_gemm", "--sgemm-only", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char out[4096];
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (strstr(out, "not available")) SKIP("library not installed");
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "TP_SGEMM=%s:\n%s", name, out);
    CHECK_CONTAINS(out, name);  // the backend line names the library
}

static void test_backend_onednn(void) { check_backend("onednn"); }
static void test_backend_openblas(void) { check_backend("openblas"); }

// ---- linear ----

// Worst |got - ref| / mag, mag = the sum of the magnitudes of what was added up (as gemm_err).
static double max_err(const float *got, const double *ref, const double *mag, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - ref[i]) / (mag[i] > 0 ? mag[i] : 1);
        if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

static void test_linear_forward(void) {
    const int N = 7, IC = 33, OC = 19;
    float *x = random_floats((size_t)N * IC), *W = random_floats((size_t)OC * IC), *b = random_floats(OC);
    float *out = malloc(sizeof(float) * N * OC);
    double *ref = malloc(sizeof(double) * N * OC), *mag = malloc(sizeof(double) * N * OC);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        for (int i = 0; i < N * OC; i++) out[i] = NAN;  // overwritten, never read
        linear_forward(out, x, W, with_bias ? b : NULL, N, IC, OC);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double s = with_bias ? b[o] : 0, m = fabs(s);
                for (int c = 0; c < IC; c++) {
                    double t = (double)x[n * IC + c] * W[o * IC + c];
                    s += t, m += fabs(t);
                }
                ref[n * OC + o] = s, mag[n * OC + o] = m;
            }
        double err = max_err(out, ref, mag, (size_t)N * OC);
        CHECK_MSG(err <= 1e-6, "bias=%d: error %.3g", with_bias, err);
    }
    free(x), free(W), free(b), free(out), free(ref), free(mag);
}

// A gradient buffer's expected value after accumulation: ref = old + sum, mag = |old| + sum |terms|.
typedef struct {
    double *ref, *mag;
} expect;

static expect expect_from(const float *old, size_t n) {
    expect e = {malloc(sizeof(double) * n), malloc(sizeof(double) * n)};
    for (size_t i = 0; i < n; i++) e.ref[i] = old[i], e.mag[i] = fabs(old[i]);
    return e;
}

static void add(expect *e, size_t i, double v) { e->ref[i] += v, e->mag[i] += fabs(v); }

// The backward pass adds to what the gradients already hold; dx and dbias may be NULL.
static void test_linear_backward_accumulates(void) {
    const int N = 65, IC = 37, OC = 300;  // OC > one bias block of 256 columns
    float *x = random_floats((size_t)N * IC), *W = random_floats((size_t)OC * IC);
    float *dout = random_floats((size_t)N * OC);
    float *dx = random_floats((size_t)N * IC), *dW = random_floats((size_t)OC * IC), *db = random_floats(OC);
    expect ex = expect_from(dx, (size_t)N * IC), eW = expect_from(dW, (size_t)OC * IC), eb = expect_from(db, OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double g = dout[n * OC + o];
            add(&eb, o, g);
            for (int c = 0; c < IC; c++) {
                add(&ex, (size_t)n * IC + c, g * W[o * IC + c]);
                add(&eW, (size_t)o * IC + c, g * x[n * IC + c]);
            }
        }
    float *dW2 = malloc(sizeof(float) * OC * IC);
    memcpy(dW2, dW, sizeof(float) * OC * IC);
    linear_backward(dx, dW, db, dout, x, W, N, IC, OC);
    double e1 = max_err(dx, ex.ref, ex.mag, (size_t)N * IC), e2 = max_err(dW, eW.ref, eW.mag, (size_t)OC * IC);
    double e3 = max_err(db, eb.ref, eb.mag, OC);
    CHECK_MSG(e1 <= 1e-6 && e2 <= 1e-6 && e3 <= 1e-6, "errors: dx %.3g dW %.3g dbias %.3g", e1, e2, e3);
    linear_backward(NULL, dW2, NULL, dout, x, W, N, IC, OC);  // no dx, no bias: dW alone
    e2 = max_err(dW2, eW.ref, eW.mag, (size_t)OC * IC);
    CHECK_MSG(e2 <= 1e-6, "dW (dx NULL) error %.3g", e2);
    free(x), free(W), free(dout), free(dx), free(dW), free(db), free(dW2);
    free(ex.ref), free(ex.mag), free(eW.ref), free(eW.mag), free(eb.ref), free(eb.mag);
}

// linear_backward_many: dx WRITTEN as the sum over the products (its old contents, NaN
// here, must not leak in), each dW and dbias accumulated as linear_backward does; a product
// with OC 0 adds nothing, one with a NULL bias has none; dx NULL skips dx; no product at all
// leaves dx zero.
static void test_linear_backward_many(void) {
    enum { N = 33, IC = 29, COUNT = 3 };
    const int OC[COUNT] = {300, 0, 41};
    float *x = random_floats((size_t)N * IC), *dx = malloc(sizeof(float) * N * IC);
    float *W[COUNT], *dout[COUNT], *dW[COUNT], *db[COUNT], *dW_ref[COUNT], *db_ref[COUNT];
    double *dx_ref = calloc((size_t)N * IC, sizeof(double));
    for (int i = 0; i < COUNT; i++) {
        size_t nw = (size_t)OC[i] * IC + 1;
        W[i] = random_floats(nw), dout[i] = random_floats((size_t)N * OC[i] + 1);
        dW[i] = random_floats(nw), db[i] = i == 2 ? NULL : random_floats((size_t)OC[i] + 1);
        dW_ref[i] = malloc(sizeof(float) * nw), memcpy(dW_ref[i], dW[i], sizeof(float) * nw);
        db_ref[i] = db[i] ? malloc(sizeof(float) * (OC[i] + 1)) : NULL;
        if (db[i]) memcpy(db_ref[i], db[i], sizeof(float) * (OC[i] + 1));
        // the references: linear_backward of each product alone, dx summed in double
        float *dxi = calloc((size_t)N * IC, sizeof(float));
        linear_backward(dxi, dW_ref[i], db_ref[i], dout[i], x, W[i], N, IC, OC[i]);
        for (size_t e = 0; e < (size_t)N * IC; e++) dx_ref[e] += dxi[e];
        free(dxi);
    }
    for (size_t e = 0; e < (size_t)N * IC; e++) dx[e] = NAN;
    linear_backward_many(COUNT, dx, dW, db, (const float *const *)dout, x, (const float *const *)W, OC, N, IC);
    double worst = 0;
    for (size_t e = 0; e < (size_t)N * IC; e++) {
        double d = fabs(dx[e] - dx_ref[e]) / (1 + fabs(dx_ref[e]));
        worst = d > worst || d != d ? d : worst;
    }
    CHECK_MSG(worst <= 1e-5, "dx differs from the sum of the products by %.3g", worst);
    for (int i = 0; i < COUNT; i++) {
        CHECK_MSG(!memcmp(dW[i], dW_ref[i], sizeof(float) * ((size_t)OC[i] * IC + 1)), "dW %d differs", i);
        if (db[i]) CHECK_MSG(!memcmp(db[i], db_ref[i], sizeof(float) * (OC[i] + 1)), "dbias %d differs", i);
    }
    // dx NULL: the weights' gradients alone, the same again
    linear_backward_many(COUNT, NULL, dW, db, (const float *const *)dout, x, (const float *const *)W, OC, N, IC);
    for (int i = 0; i < COUNT; i++)
        linear_backward(NULL, dW_ref[i], db_ref[i], dout[i], x, W[i], N, IC, OC[i]);
    for (int i = 0; i < COUNT; i++)
        CHECK_MSG(!memcmp(dW[i], dW_ref[i], sizeof(float) * ((size_t)OC[i] * IC + 1)), "dW %d (dx NULL)", i);
    // no product with outputs: dx is zero
    for (size_t e = 0; e < (size_t)N * IC; e++) dx[e] = NAN;
    linear_backward_many(1, dx, dW + 1, NULL, (const float *const *)dout + 1, x, (const float *const *)W + 1, OC + 1,
                         N, IC);
    bool zero = true;
    for (size_t e = 0; e < (size_t)N * IC; e++) zero = zero && dx[e] == 0.0f;
    CHECK_MSG(zero, "dx is not zero after products with no outputs");
    for (int i = 0; i < COUNT; i++)
        free(W[i]), free(dout[i]), free(dW[i]), free(db[i]), free(dW_ref[i]), free(db_ref[i]);
    free(x), free(dx), free(dx_ref);
}

int main(int argc, char **argv) {
    RUN(test_backend_named);
    RUN(test_sgemm_shapes);
    RUN(test_sgemm_model_like);
    RUN(test_sgemm_degenerate);
    RUN(test_sgemm_threads);
    RUN(test_sgemm_deterministic);
    if (argc > 1 && !strcmp(argv[1], "--sgemm-only")) return TEST_SUMMARY();
    RUN(test_backend_onednn);
    RUN(test_backend_openblas);
    RUN(test_fallback_shapes);
    RUN(test_sgemm_bad_shape_dies);
    RUN(test_linear_forward);
    RUN(test_linear_backward_accumulates);
    RUN(test_linear_backward_many);
    return TEST_SUMMARY();
}
