// The CUDA ops against their CPU twins (kernels/ops.h) on fresh random inputs: fp32
// within 1e-5 relative, matrix products in bf16 within 1e-2. Outputs start as NaN so an
// element a kernel never writes fails; accumulating outputs start at the same random
// values on both sides. Skipped without a GPU. (Attention: test_cuda_attention.c.)
#include "cuda_test.h"
#include "ops.h"
#include "tensor.h"

#ifdef TP_HAVE_CUDA
static double worst_seen;

// Compares device buffer d [n] with host reference ref; tol relative to max |ref|.
static void expect_close(const char *what, const float *d, const float *ref, size_t n, double tol) {
    float *got = host_of(d, n);
    double e = max_rel(got, ref, n);
    if (e > worst_seen) worst_seen = e;
    CHECK_MSG(e <= tol, "%s: max rel err %.3g > %.1g", what, e, tol);
    free(got);
}

static float *rnd(size_t n) {
    float *p = malloc(n * sizeof *p + 4);
    fill_uniform(p, n, -2, 2);
    return p;
}

static void test_embedding(void) {
    NEED_GPU();
    int V = 1000, C = 96, N = 500;
    int32_t *ids = malloc(N * sizeof *ids);
    for (int n = 0; n < N; n++) ids[n] = n % 7 == 0 ? (int32_t)(test_rand() % V) : (int32_t)(test_rand() % 40);
    float *table = rnd((size_t)V * C), *out = malloc((size_t)N * C * 4), *dout = rnd((size_t)N * C);
    float *dtable = rnd((size_t)V * C);
    int32_t *d_ids = dev_copy(ids, N * sizeof *ids);
    float *d_table = dev_copy(table, (size_t)V * C * 4), *d_out = dev_poisoned((size_t)N * C);
    float *d_dout = dev_copy(dout, (size_t)N * C * 4), *d_dtable = dev_copy(dtable, (size_t)V * C * 4);
    embedding_forward(out, ids, table, N, C);
    cuda_embedding_forward(d_out, d_ids, d_table, N, C);
    expect_close("embedding forward", d_out, out, (size_t)N * C, 0);
    embedding_backward(dtable, dout, ids, N, C);
    cuda_embedding_backward(d_dtable, d_dout, d_ids, N, C);
    expect_close("embedding backward", d_dtable, dtable, (size_t)V * C, 1e-6);
    CHECK_CUDA_OK();
    free(ids), free(table), free(out), free(dout), free(dtable);
    cuda_free(d_ids), cuda_free(d_table), cuda_free(d_out), cuda_free(d_dout), cuda_free(d_dtable);
}

static void test_rmsnorm(void) {
    NEED_GPU();
    // block-per-row kernel: one, two and four float4s a thread; warp-per-row: C % 4 != 0.
    // The backward's one-pass kernel: parts of 16 rows (1200 rows: 75 parts; 37 and 20003:
    // a short last part), one to four float4s a thread (896, 3584, 5120, 8192), and past it
    // (12288, 16000: the dx kernel and the column sums).
    const int shapes[][2] = {{37, 896}, {1200, 128}, {5, 1},     {3, 4097},  {1, 896},    {2, 8192},
                             {3, 12288}, {4, 36},    {2, 16000}, {2, 16388}, {20003, 36}, {70, 3584},
                             {19, 5120}, {33, 8192}};
    for (int s = 0; s < 14; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t nc = (size_t)N * C;
        float *x = rnd(nc), *w = rnd(C), *out = malloc(nc * 4), *rstd = malloc(N * 4);
        float *dout = rnd(nc), *dx = rnd(nc), *dw = rnd(C);
        float *d_x = dev_copy(x, nc * 4), *d_w = dev_copy(w, C * 4), *d_out = dev_poisoned(nc), *d_rstd = dev_poisoned(N);
        float *d_dout = dev_copy(dout, nc * 4), *d_dx = dev_copy(dx, nc * 4), *d_dw = dev_copy(dw, C * 4);
        rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
        cuda_rmsnorm_forward(d_out, d_rstd, d_x, d_w, N, C, 1e-6f);
        expect_close("rmsnorm forward", d_out, out, nc, 1e-5);
        expect_close("rmsnorm rstd", d_rstd, rstd, N, 1e-5);
        rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
        cuda_rmsnorm_backward(d_dx, d_dw, d_dout, d_x, d_w, d_rstd, N, C);
        expect_close("rmsnorm backward dx", d_dx, dx, nc, 1e-5);
        expect_close("rmsnorm backward dweight", d_dw, dw, C, 1e-5);
        CHECK_CUDA_OK();
        free(x), free(w), free(out), free(rstd), free(dout), free(dx), free(dw);
        cuda_free(d_x), cuda_free(d_w), cuda_free(d_out), cuda_free(d_rstd), cuda_free(d_dout), cuda_free(d_dx),
            cuda_free(d_dw);
    }
}

// The fused residual add + norm against its CPU twin, and against the two CUDA ops it
// replaces (the same bits: decode steps and training use either).
static void test_add_rmsnorm(void) {
    NEED_GPU();
    const int shapes[][2] = {{37, 896}, {1, 1536}, {5, 1}, {300, 4097}, {2, 12288}, {1, 896}};
    for (int s = 0; s < 6; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t nc = (size_t)N * C;
        float *a = rnd(nc), *b = rnd(nc), *w = rnd(C), *sum = malloc(nc * 4), *out = malloc(nc * 4);
        float *rstd = malloc(N * 4);
        float *d_a = dev_copy(a, nc * 4), *d_b = dev_copy(b, nc * 4), *d_w = dev_copy(w, C * 4);
        float *d_sum = dev_poisoned(nc), *d_out = dev_poisoned(nc), *d_rstd = dev_poisoned(N);
        float *d_sum2 = dev_copy(a, nc * 4), *d_out2 = dev_poisoned(nc), *d_rstd2 = dev_poisoned(N);
        add_rmsnorm_forward(sum, out, rstd, a, b, w, N, C, 1e-6f);
        cuda_add_rmsnorm_forward(d_sum, d_out, d_rstd, d_a, d_b, d_w, N, C, 1e-6f);
        expect_close("add_rmsnorm sum", d_sum, sum, nc, 1e-6);
        expect_close("add_rmsnorm out", d_out, out, nc, 1e-5);
        expect_close("add_rmsnorm rstd", d_rstd, rstd, N, 1e-5);
        cuda_add_inplace(d_sum2, d_b, (long)nc);
        cuda_rmsnorm_forward(d_out2, d_rstd2, d_sum2, d_w, N, C, 1e-6f);
        float *f1 = host_of(d_out, nc), *f2 = host_of(d_out2, nc), *s1 = host_of(d_sum, nc), *s2 = host_of(d_sum2, nc);
        CHECK_MSG(!memcmp(f1, f2, nc * 4) && !memcmp(s1, s2, nc * 4), "N=%d C=%d: fused differs from add + rmsnorm",
                  N, C);
        cuda_add_rmsnorm_forward(d_a, d_out, NULL, d_a, d_b, d_w, N, C, 1e-6f);  // the sum over a
        expect_close("add_rmsnorm in place", d_a, sum, nc, 1e-6);
        expect_close("add_rmsnorm in place, out", d_out, out, nc, 1e-5);
        CHECK_CUDA_OK();
        free(a), free(b), free(w), free(sum), free(out), free(rstd), free(f1), free(f2), free(s1), free(s2);
        cuda_free(d_a), cuda_free(d_b), cuda_free(d_w), cuda_free(d_sum), cuda_free(d_out), cuda_free(d_rstd);
        cuda_free(d_sum2), cuda_free(d_out2), cuda_free(d_rstd2);
    }
}

// An input that is not 16-byte aligned (a row offset by one float) while sum is: the sum goes
// into sum first, and the bits stay those of add + rmsnorm.
static void test_add_rmsnorm_misaligned(void) {
    NEED_GPU();
    int N = 3, C = 896;
    size_t nc = (size_t)N * C;
    float *a = rnd(nc + 1), *b = rnd(nc), *w = rnd(C), *sum = malloc(nc * 4), *out = malloc(nc * 4);
    float *d_a = dev_copy(a, (nc + 1) * 4), *d_b = dev_copy(b, nc * 4), *d_w = dev_copy(w, C * 4);
    float *d_sum = dev_poisoned(nc), *d_out = dev_poisoned(nc), *d_sum2 = dev_copy(b, nc * 4);
    float *d_out2 = dev_poisoned(nc);
    add_rmsnorm_forward(sum, out, NULL, a + 1, b, w, N, C, 1e-6f);
    cuda_add_rmsnorm_forward(d_sum, d_out, NULL, d_a + 1, d_b, d_w, N, C, 1e-6f);
    expect_close("add_rmsnorm, a misaligned: sum", d_sum, sum, nc, 1e-6);
    expect_close("add_rmsnorm, a misaligned: out", d_out, out, nc, 1e-5);
    cuda_add_inplace(d_sum2, d_a + 1, (long)nc);
    cuda_rmsnorm_forward(d_out2, NULL, d_sum2, d_w, N, C, 1e-6f);
    float *o1 = host_of(d_out, nc), *o2 = host_of(d_out2, nc);
    CHECK_MSG(!memcmp(o1, o2, nc * 4), "add_rmsnorm with a misaligned input differs from add + rmsnorm");
    cuda_add_rmsnorm_forward(d_b, d_out, NULL, d_a + 1, d_b, d_w, N, C, 1e-6f);  // the sum over b
    expect_close("add_rmsnorm, a misaligned, in place over b", d_b, sum, nc, 1e-6);
    CHECK_CUDA_OK();
    free(a), free(b), free(w), free(sum), free(out), free(o1), free(o2);
    cuda_free(d_a), cuda_free(d_b), cuda_free(d_w), cuda_free(d_sum), cuda_free(d_out), cuda_free(d_sum2),
        cuda_free(d_out2);
}

static void linear_case(int N, int IC, int OC, bool bias, const char *precision, double tol) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    size_t nx = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *x = rnd(nx), *w = rnd(nw), *b = bias ? rnd(OC) : NULL, *out = malloc(no * 4);
    float *dout = rnd(no), *dx = rnd(nx), *dw = rnd(nw), *db = rnd(OC);
    float *d_x = dev_copy(x, nx * 4), *d_w = dev_copy(w, nw * 4), *d_b = bias ? dev_copy(b, OC * 4) : NULL;
    float *d_out = dev_poisoned(no), *d_dout = dev_copy(dout, no * 4), *d_dx = dev_copy(dx, nx * 4);
    float *d_dw = dev_copy(dw, nw * 4), *d_db = dev_copy(db, OC * 4);
    char what[96];
    linear_forward(out, x, w, b, N, IC, OC);
    cuda_linear_forward(d_out, d_x, d_w, d_b, N, IC, OC);
    snprintf(what, sizeof what, "linear forward %dx%dx%d %s", N, IC, OC, precision);
    expect_close(what, d_out, out, no, tol);
    linear_backward(dx, dw, bias ? db : NULL, dout, x, w, N, IC, OC);
    cuda_linear_backward(d_dx, d_dw, bias ? d_db : NULL, d_dout, d_x, d_w, N, IC, OC);
    snprintf(what, sizeof what, "linear backward dx %dx%dx%d %s", N, IC, OC, precision);
    expect_close(what, d_dx, dx, nx, tol);
    snprintf(what, sizeof what, "linear backward dweight %dx%dx%d %s", N, IC, OC, precision);
    expect_close(what, d_dw, dw, nw, tol);
    if (bias) expect_close("linear backward dbias", d_db, db, OC, tol);
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(w), free(b), free(out), free(dout), free(dx), free(dw), free(db);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_b), cuda_free(d_out), cuda_free(d_dout), cuda_free(d_dx),
        cuda_free(d_dw), cuda_free(d_db);
}

// Three products of one input (q, k, v; one bias missing) against the CPU twin and, bit
// for bit, against three cuda_linear_forward calls.
static void linear_many_case(int N, int IC, const char *precision, double tol) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    const int OC[3] = {3 * IC / 2, IC / 4, IC / 4};
    size_t nx = (size_t)N * IC;
    float *x = rnd(nx), *d_x = dev_copy(x, nx * 4);
    float *w[3], *b[3], *out[3], *d_w[3], *d_b[3], *d_out[3], *d_one[3];
    for (int i = 0; i < 3; i++) {
        size_t nw = (size_t)OC[i] * IC, no = (size_t)N * OC[i];
        w[i] = rnd(nw), b[i] = i == 1 ? NULL : rnd(OC[i]), out[i] = malloc(no * 4);
        d_w[i] = dev_copy(w[i], nw * 4), d_b[i] = b[i] ? dev_copy(b[i], OC[i] * 4) : NULL;
        d_out[i] = dev_poisoned(no), d_one[i] = dev_poisoned(no);
    }
    linear_forward_many(3, out, x, (const float *const *)w, (const float *const *)b, OC, N, IC);
    cuda_linear_forward_many(3, d_out, d_x, (const float *const *)d_w, (const float *const *)d_b, OC, N, IC);
    for (int i = 0; i < 3; i++) cuda_linear_forward(d_one[i], d_x, d_w[i], d_b[i], N, IC, OC[i]);
    for (int i = 0; i < 3; i++) {
        size_t no = (size_t)N * OC[i];
        char what[96];
        snprintf(what, sizeof what, "linear forward many %d: %dx%dx%d %s", i, N, IC, OC[i], precision);
        expect_close(what, d_out[i], out[i], no, tol);
        float *many = host_of(d_out[i], no), *one = host_of(d_one[i], no);
        CHECK_MSG(!memcmp(many, one, no * 4), "%s: differs from a single product", what);
        free(many), free(one), free(w[i]), free(b[i]), free(out[i]);
        cuda_free(d_w[i]), cuda_free(d_b[i]), cuda_free(d_out[i]), cuda_free(d_one[i]);
    }
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), cuda_free(d_x);
}

// The backward of three products of one input (q, k, v; one bias missing) against the CPU
// twin: dx starts NaN (it is written, not accumulated: a kernel that added to it fails),
// the weights' and biases' gradients start random and accumulate. empty_middle: the second
// product has no outputs (it adds nothing, and x's bf16 copy must still serve the third).
static void linear_backward_many_case(int N, int IC, const char *precision, double tol, bool empty_middle) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    const int OC[3] = {3 * IC / 2, empty_middle ? 0 : IC / 4, IC / 4};
    size_t nx = (size_t)N * IC;
    float *x = rnd(nx), *dx = malloc(nx * 4), *d_x = dev_copy(x, nx * 4), *d_dx = dev_poisoned(nx);
    float *w[3], *dw[3], *db[3], *dout[3], *d_w[3], *d_dw[3], *d_db[3], *d_dout[3];
    for (int i = 0; i < 3; i++) {
        size_t nw = (size_t)OC[i] * IC, no = (size_t)N * OC[i];
        w[i] = rnd(nw), dw[i] = rnd(nw), db[i] = i == 1 ? NULL : rnd(OC[i]), dout[i] = rnd(no);
        d_w[i] = dev_copy(w[i], nw * 4), d_dw[i] = dev_copy(dw[i], nw * 4), d_dout[i] = dev_copy(dout[i], no * 4);
        d_db[i] = db[i] ? dev_copy(db[i], OC[i] * 4) : NULL;
    }
    linear_backward_many(3, dx, dw, db, (const float *const *)dout, x, (const float *const *)w, OC, N, IC);
    cuda_linear_backward_many(3, d_dx, d_dw, d_db, (const float *const *)d_dout, d_x, (const float *const *)d_w, OC,
                              N, IC);
    char what[96];
    snprintf(what, sizeof what, "linear backward many dx: %dx%d %s", N, IC, precision);
    expect_close(what, d_dx, dx, nx, tol);
    for (int i = 0; i < 3; i++) {
        snprintf(what, sizeof what, "linear backward many dweight %d: %dx%dx%d %s", i, N, IC, OC[i], precision);
        expect_close(what, d_dw[i], dw[i], (size_t)OC[i] * IC, tol);
        snprintf(what, sizeof what, "linear backward many dbias %d: %dx%dx%d %s", i, N, IC, OC[i], precision);
        if (db[i]) expect_close(what, d_db[i], db[i], OC[i], tol);
        free(w[i]), free(dw[i]), free(db[i]), free(dout[i]);
        cuda_free(d_w[i]), cuda_free(d_dw[i]), cuda_free(d_db[i]), cuda_free(d_dout[i]);
    }
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(dx), cuda_free(d_x), cuda_free(d_dx);
}

// bf16 products of up to 8 rows take a kernel of their own (decode steps): each row's
// output is the same bits whether it is computed alone or with 7 others.
static void rows_independent_case(int IC) {
    int N = 8, OC = 1000;
    float *x = rnd((size_t)N * IC), *w = rnd((size_t)OC * IC), *b = rnd(OC);
    float *d_x = dev_copy(x, (size_t)N * IC * 4), *d_w = dev_copy(w, (size_t)OC * IC * 4), *d_b = dev_copy(b, OC * 4);
    float *d_all = dev_poisoned((size_t)N * OC), *d_one = dev_poisoned(OC);
    cuda_linear_forward(d_all, d_x, d_w, d_b, N, IC, OC);
    float *all = host_of(d_all, (size_t)N * OC);
    for (int n = 0; n < N; n++) {
        cuda_linear_forward(d_one, d_x + (size_t)n * IC, d_w, d_b, 1, IC, OC);
        float *one = host_of(d_one, OC);
        CHECK_MSG(!memcmp(one, all + (size_t)n * OC, OC * 4), "row %d alone differs from row %d of 8", n, n);
        free(one);
    }
    CHECK_CUDA_OK();
    free(x), free(w), free(b), free(all);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_b), cuda_free(d_all), cuda_free(d_one);
}

static void test_linear_rows_independent(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    rows_independent_case(896);
    rows_independent_case(4864);  // rows split over a block's warps
    CHECK(cuda_set_matmul_precision("fp32") == 0);
}

// The bf16 copies of weights are cached by address: a weight freed and another of the same
// size allocated (cudaMalloc readily hands back the same address) must not be multiplied
// through the old one's copy — also when the weight sat inside a larger allocation (the
// model's parameters are one), and when several copies are dropped by one free.
static void test_weight_cache_follows_free(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    int IC = 256, OC = 300;
    size_t nw = (size_t)OC * IC;
    float *x = rnd(IC), *out = malloc(OC * 4), *d_x = dev_copy(x, IC * 4), *d_out = dev_poisoned(OC);
    int reused = 0;
    float *last = NULL;
    for (int round = 0; round < 4; round++) {
        // an arena of two weights, the second at an offset; round 3 frees a lone buffer in between
        float *w = rnd(2 * nw), *d_arena = cuda_alloc(2 * nw * 4), *lone = round == 3 ? cuda_alloc(4096) : NULL;
        cuda_upload(d_arena, w, 2 * nw * 4);
        reused += d_arena == last;
        last = d_arena;
        for (int half = 0; half < 2; half++) {
            linear_forward(out, x, w + half * nw, NULL, 1, IC, OC);
            cuda_linear_forward(d_out, d_x, d_arena + half * nw, NULL, 1, IC, OC);
            expect_close("product through a weight allocated after a free", d_out, out, OC, 1e-2);
        }
        cuda_free(lone);
        free(w), cuda_free(d_arena);
    }
    printf("# weight cache: %d of 3 arenas came back at the freed address\n", reused);
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(out), cuda_free(d_x), cuda_free(d_out);
}

// A decode-like chain of the fused ops with no synchronisation between them gives the same
// bits with programmatic dependent launch as without (a kernel that read its input before
// pdl_wait would see the previous kernel's output half written).
static void test_dependent_launch_chain(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    int C = 896, F = 2432, N = 1;
    float *x = rnd(C), *nw = rnd(C), *wq = rnd((size_t)C * C), *wg = rnd((size_t)F * C), *wu = rnd((size_t)F * C);
    float *wd = rnd((size_t)C * F);
    float *d_x = dev_copy(x, C * 4), *d_nw = dev_copy(nw, C * 4), *d_wq = dev_copy(wq, (size_t)C * C * 4);
    float *d_wg = dev_copy(wg, (size_t)F * C * 4), *d_wu = dev_copy(wu, (size_t)F * C * 4);
    float *d_wd = dev_copy(wd, (size_t)C * F * 4), *d_ln = dev_poisoned(C), *d_q = dev_poisoned(C);
    float *d_mid = dev_poisoned(C), *d_act = dev_poisoned(F), *d_g = dev_poisoned(F), *d_u = dev_poisoned(F);
    float *d_y = dev_poisoned(C), *d_z = dev_poisoned(C), *got[2];
    for (int pdl = 0; pdl < 2; pdl++) {
        cuda_set_pdl(pdl);
        const float *const w1[1] = {d_wq}, *const b1[1] = {NULL};
        float *const o1[1] = {d_q};
        const int oc1[1] = {C};
        for (int rep = 0; rep < 20; rep++) {  // z feeds the next round: 100 dependent launches
            cuda_rmsnorm_linear_forward_many(1, o1, d_ln, rep ? d_z : d_x, d_nw, 1e-6f, w1, b1, oc1, N, C);
            cuda_linear_residual_forward(d_mid, d_q, d_wq, NULL, rep ? d_z : d_x, N, C, C);
            cuda_rmsnorm_linear_swiglu_forward(d_act, d_g, d_u, d_ln, d_mid, d_nw, 1e-6f, d_wg, d_wu, N, C, F);
            cuda_linear_residual_forward(d_y, d_act, d_wd, NULL, d_mid, N, F, C);
            cuda_rmsnorm_forward(d_z, NULL, d_y, d_nw, N, C, 1e-6f);
        }
        got[pdl] = host_of(d_z, C);
    }
    cuda_set_pdl(1);
    printf("# dependent launch %s\n",
           cuda_pdl_enabled() ? "used" : "not available here: the test compared two plain runs");
    cuda_set_pdl(-1);
    CHECK_MSG(!memcmp(got[0], got[1], C * 4), "a chain of decode ops differs with dependent launch");
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(got[0]), free(got[1]), free(x), free(nw), free(wq), free(wg), free(wu), free(wd);
    cuda_free(d_x), cuda_free(d_nw), cuda_free(d_wq), cuda_free(d_wg), cuda_free(d_wu), cuda_free(d_wd);
    cuda_free(d_ln), cuda_free(d_q), cuda_free(d_mid), cuda_free(d_act), cuda_free(d_g), cuda_free(d_u);
    cuda_free(d_y), cuda_free(d_z);
}

static void test_linear(void) {
    NEED_GPU();
    linear_case(1, 896, 4864, true, "bf16", 1e-2);  // the few-rows kernel
    linear_case(3, 4864, 896, false, "bf16", 1e-2);
    linear_case(8, 64, 100, true, "bf16", 1e-2);
    linear_case(9, 896, 200, true, "bf16", 1e-2);  // one row too many: the GEMM
    linear_many_case(1, 896, "bf16", 1e-2);
    linear_many_case(2, 2048, "bf16", 1e-2);  // rows split over a block's warps
    linear_many_case(1, 904, "bf16", 1e-2);   // segments of 1356, 226, 226: partial last blocks
    linear_many_case(77, 256, "bf16", 1e-2);
    linear_many_case(77, 256, "fp32", 1e-5);
    linear_case(70, 96, 200, true, "fp32", 1e-5);
    linear_case(333, 896, 128, false, "fp32", 1e-5);
    linear_case(1, 64, 1000, true, "fp32", 1e-5);
    linear_case(333, 896, 128, true, "bf16", 1e-2);
    linear_case(512, 1536, 256, false, "tf32", 5e-3);
    linear_backward_many_case(77, 256, "bf16", 1e-2, false);
    linear_backward_many_case(300, 896, "bf16", 1e-2, false);
    linear_backward_many_case(77, 256, "bf16", 1e-2, true);
    linear_backward_many_case(77, 256, "fp32", 1e-5, false);
    CHECK(cuda_set_matmul_precision("fp16?") == -1);
}

// cuBLASLt plans are kept per shape, at most a few hundred: a product whose plan was
// evicted by 300 other shapes gives the same bits when it comes back (training and
// scoring promise bits that do not depend on the shapes a process saw before).
static void test_product_plans_evicted(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    int N = 16, IC = 64, OC = 96;
    float *x = rnd((size_t)N * IC), *w = rnd((size_t)400 * IC), *b = rnd(400);
    float *d_x = dev_copy(x, (size_t)N * IC * 4), *d_w = dev_copy(w, (size_t)400 * IC * 4), *d_b = dev_copy(b, 1600);
    float *d_out = dev_poisoned((size_t)N * 400);
    cuda_linear_forward(d_out, d_x, d_w, d_b, N, IC, OC);
    float *first = host_of(d_out, (size_t)N * OC);
    for (int oc = 100; oc < 400; oc++) cuda_linear_forward(d_out, d_x, d_w, d_b, N, IC, oc);  // 300 other shapes
    cuda_linear_forward(d_out, d_x, d_w, d_b, N, IC, OC);
    float *again = host_of(d_out, (size_t)N * OC);
    CHECK_MSG(!memcmp(first, again, (size_t)N * OC * 4), "a product differs after its plan was evicted");
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(w), free(b), free(first), free(again);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_b), cuda_free(d_out);
}

static void test_rope(void) {
    NEED_GPU();
    int N = 50, H = 3, HD = 64;
    size_t n = (size_t)N * H * HD;
    int32_t *pos = malloc(N * 4);
    for (int i = 0; i < N; i++) pos[i] = (int32_t)(test_rand() % 5000);
    float inv[32];
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(1e6, -2.0 * i / HD);
    float *x = rnd(n);
    int32_t *d_pos = dev_copy(pos, N * 4);
    float *d_inv = dev_copy(inv, sizeof inv), *d_x = dev_copy(x, n * 4);
    rope_forward(x, pos, inv, N, H, HD);
    cuda_rope_forward(d_x, d_pos, d_inv, N, H, HD);
    expect_close("rope forward", d_x, x, n, 1e-5);
    rope_backward(x, pos, inv, N, H, HD);
    cuda_rope_backward(d_x, d_pos, d_inv, N, H, HD);
    expect_close("rope backward", d_x, x, n, 1e-5);
    CHECK_CUDA_OK();
    free(pos), free(x);
    cuda_free(d_pos), cuda_free(d_inv), cuda_free(d_x);
}

// The decode step's fused products (the norm before, SwiGLU or the residual add after)
// against their CPU twins, N = 9 taking the GEMM path; IC 2048 splits rows over warps;
// IC 1536 (Qwen2.5-1.5B's hidden size) and 64 (fewer 8-weight chunks than lanes) fold the
// norm too.
static const int fused_cases[][2] = {{1, 896}, {3, 896}, {8, 896}, {9, 896}, {2, 2048}, {4, 1536}, {5, 64}};  // N, IC

// Random rows whose scales differ (row n times n + 1): a kernel that normalised one row by
// another's rstd would be off by far more than the tolerance.
static float *rnd_rows(int N, int IC) {
    float *x = rnd((size_t)N * IC);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IC; i++) x[(size_t)n * IC + i] *= (float)(n + 1);
    return x;
}

// q/k/v-like products of rmsnorm(x) (one bias missing), with and without the norm; a row's
// outputs are the same bits alone or among 8 (every block computes the norm in one order).
static void test_rmsnorm_linear(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    for (int t = 0; t < (int)(sizeof fused_cases / sizeof fused_cases[0]); t++) {
        int N = fused_cases[t][0], IC = fused_cases[t][1];
        const int OC[3] = {IC, IC / 8 + 2, IC / 8 + 1};  // partial last blocks of 4 outputs
        size_t nx = (size_t)N * IC;
        float *x = rnd_rows(N, IC), *nw = rnd(IC), *ln = malloc(nx * 4), *d_x = dev_copy(x, nx * 4);
        float *d_nw = dev_copy(nw, IC * 4), *d_ln = dev_poisoned(nx);
        float *w[3], *b[3], *out[3], *d_w[3], *d_b[3], *d_out[3];
        for (int i = 0; i < 3; i++) {
            size_t nw_i = (size_t)OC[i] * IC, no = (size_t)N * OC[i];
            w[i] = rnd(nw_i), b[i] = i == 1 ? NULL : rnd(OC[i]), out[i] = malloc(no * 4);
            d_w[i] = dev_copy(w[i], nw_i * 4), d_b[i] = b[i] ? dev_copy(b[i], OC[i] * 4) : NULL;
            d_out[i] = dev_poisoned(no);
        }
        for (int with_norm = 0; with_norm < 2; with_norm++) {
            const float *norm = with_norm ? nw : NULL, *d_norm = with_norm ? d_nw : NULL;
            rmsnorm_linear_forward_many(3, out, ln, x, norm, 1e-6f, (const float *const *)w, (const float *const *)b,
                                        OC, N, IC);
            cuda_rmsnorm_linear_forward_many(3, d_out, d_ln, d_x, d_norm, 1e-6f, (const float *const *)d_w,
                                             (const float *const *)d_b, OC, N, IC);
            for (int i = 0; i < 3; i++) {
                char what[96];
                snprintf(what, sizeof what, "rmsnorm_linear %d N=%d IC=%d norm=%d", i, N, IC, with_norm);
                expect_close(what, d_out[i], out[i], (size_t)N * OC[i], 1e-2);
            }
        }
        if (N > 1 && N <= 8) {  // row N-1 alone, normalised in its own launch
            float *d_one[3];
            for (int i = 0; i < 3; i++) d_one[i] = dev_poisoned(OC[i]);
            cuda_rmsnorm_linear_forward_many(3, d_one, d_ln, d_x + (size_t)(N - 1) * IC, d_nw, 1e-6f,
                                             (const float *const *)d_w, (const float *const *)d_b, OC, 1, IC);
            for (int i = 0; i < 3; i++) {
                float *one = host_of(d_one[i], OC[i]), *all = host_of(d_out[i], (size_t)N * OC[i]);
                CHECK_MSG(!memcmp(one, all + (size_t)(N - 1) * OC[i], OC[i] * 4),
                          "N=%d IC=%d: product %d of a row alone differs", N, IC, i);
                free(one), free(all), cuda_free(d_one[i]);
            }
        }
        CHECK_CUDA_OK();
        for (int i = 0; i < 3; i++) free(w[i]), free(b[i]), free(out[i]), cuda_free(d_w[i]), cuda_free(d_b[i]),
                                    cuda_free(d_out[i]);
        free(x), free(nw), free(ln), cuda_free(d_x), cuda_free(d_nw), cuda_free(d_ln);
    }
    CHECK(cuda_set_matmul_precision("fp32") == 0);
}

// gate/up of rmsnorm(x) with SwiGLU on the way out; without the norm, bit for bit the two
// products and swiglu_forward.
static void test_rmsnorm_linear_swiglu(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    int F = 1202;  // a partial last block of 4 outputs
    for (int t = 0; t < (int)(sizeof fused_cases / sizeof fused_cases[0]); t++) {
        int N = fused_cases[t][0], IC = fused_cases[t][1];
        size_t nx = (size_t)N * IC, nf = (size_t)N * F, nw = (size_t)F * IC;
        float *x = rnd_rows(N, IC), *normw = rnd(IC), *wg = rnd(nw), *wu = rnd(nw);
        // Gates 0 and 1 of every row far out on either side, with or without the norm:
        // x and the norm weights positive, weight rows 0 and 1 all +40 and -40: gate 1 is -40
        // times a sum of IC >= 64 positive terms of order 1 (with or without the norm), far
        // below -88, so exp(-gate) overflows (silu's limit, -0); gate 0 the reverse.
        for (size_t i = 0; i < nx; i++) x[i] = fabsf(x[i]) + 0.5f;
        for (int c = 0; c < IC; c++) normw[c] = fabsf(normw[c]) + 0.5f, wg[c] = 40.0f, wg[IC + c] = -40.0f;
        // Weights that bf16 holds exactly, so the CPU twin multiplies what the GPU does: the
        // largest output, silu(gate 0) * up 0, is off by up 0's relative error, and with
        // rounded weights that is up to ~1% where up 0's terms cancel (the tolerance is
        // relative to that output). Left: the sums' order, and for N > 8 (cuBLAS, not the
        // few-rows kernel) x rounded to bf16.
        for (size_t i = 0; i < nw; i++) wg[i] = tp_bf16_to_f32(tp_f32_to_bf16(wg[i]));
        for (size_t i = 0; i < nw; i++) wu[i] = tp_bf16_to_f32(tp_f32_to_bf16(wu[i]));
        float *act = malloc(nf * 4), *gate = malloc(nf * 4), *up = malloc(nf * 4), *ln = malloc(nx * 4);
        float *d_x = dev_copy(x, nx * 4), *d_norm = dev_copy(normw, IC * 4), *d_wg = dev_copy(wg, nw * 4);
        float *d_wu = dev_copy(wu, nw * 4), *d_ln = dev_poisoned(nx);
        float *d_act = dev_poisoned(nf), *d_gate = dev_poisoned(nf), *d_up = dev_poisoned(nf);
        float *d_act2 = dev_poisoned(nf), *d_g2 = dev_poisoned(nf), *d_u2 = dev_poisoned(nf);
        char what[80];
        for (int with_norm = 0; with_norm < 2; with_norm++) {
            const float *norm = with_norm ? normw : NULL, *dn = with_norm ? d_norm : NULL;
            rmsnorm_linear_swiglu_forward(act, gate, up, ln, x, norm, 1e-6f, wg, wu, N, IC, F);
            cuda_rmsnorm_linear_swiglu_forward(d_act, d_gate, d_up, d_ln, d_x, dn, 1e-6f, d_wg, d_wu, N, IC, F);
            snprintf(what, sizeof what, "rmsnorm_linear_swiglu N=%d IC=%d norm=%d", N, IC, with_norm);
            expect_close(what, d_act, act, nf, N <= 8 ? 1e-4 : 1e-2);
            if (N > 1 && N <= 8) {  // the last row alone: the same bits
                float *d_one = dev_poisoned(F);
                cuda_rmsnorm_linear_swiglu_forward(d_one, d_gate, d_up, d_ln, d_x + (size_t)(N - 1) * IC, dn, 1e-6f,
                                                   d_wg, d_wu, 1, IC, F);
                float *one = host_of(d_one, F), *all = host_of(d_act, nf);
                CHECK_MSG(!memcmp(one, all + (size_t)(N - 1) * F, F * 4), "%s: a row alone differs", what);
                free(one), free(all), cuda_free(d_one);
            }
        }
        float *const outs[2] = {d_g2, d_u2};
        const float *const ws[2] = {d_wg, d_wu}, *const bs[2] = {NULL, NULL};
        const int ocs[2] = {F, F};
        cuda_rmsnorm_linear_swiglu_forward(d_act, d_gate, d_up, d_ln, d_x, NULL, 1e-6f, d_wg, d_wu, N, IC, F);
        cuda_linear_forward_many(2, outs, d_x, ws, bs, ocs, N, IC);
        cuda_swiglu_forward(d_act2, d_g2, d_u2, (long)nf);
        float *a1 = host_of(d_act, nf), *a2 = host_of(d_act2, nf);
        if (N <= 8)  // (N = 9: the same three ops on both sides)
            CHECK_MSG(!memcmp(a1, a2, nf * 4), "%s: differs from the products and swiglu", what);
        CHECK_CUDA_OK();
        free(x), free(normw), free(wg), free(wu), free(act), free(gate), free(up), free(ln), free(a1), free(a2);
        cuda_free(d_x), cuda_free(d_norm), cuda_free(d_wg), cuda_free(d_wu), cuda_free(d_ln), cuda_free(d_act);
        cuda_free(d_gate), cuda_free(d_up), cuda_free(d_act2), cuda_free(d_g2), cuda_free(d_u2);
    }
    CHECK(cuda_set_matmul_precision("fp32") == 0);
}

// The fused ops' other paths: x or the norm weights not 16-byte aligned (at decode sizes:
// the norm, then the products) and fp32 products (no few-rows kernel), against the CPU twins.
static void test_fused_fallbacks(void) {
    NEED_GPU();
    int N = 2, IC = 896, F = 602;
    size_t nx = (size_t)N * IC, nf = (size_t)N * F, nw = (size_t)F * IC;
    float *x = rnd_rows(N, IC), *normw = rnd(IC + 1), *wg = rnd(nw), *wu = rnd(nw), *xs = malloc((nx + 1) * 4);
    float *act = malloc(nf * 4), *gate = malloc(nf * 4), *up = malloc(nf * 4), *ln = malloc(nx * 4);
    xs[0] = 0, memcpy(xs + 1, x, nx * 4);  // x one float past an aligned address
    float *d_x = dev_copy(x, nx * 4), *d_xs = dev_copy(xs, (nx + 1) * 4), *d_norm = dev_copy(normw, (IC + 1) * 4);
    float *d_wg = dev_copy(wg, nw * 4), *d_wu = dev_copy(wu, nw * 4), *d_ln = dev_poisoned(nx);
    float *d_act = dev_poisoned(nf), *d_gate = dev_poisoned(nf), *d_up = dev_poisoned(nf);
    const char *modes[] = {"bf16", "fp32"};
    for (int m = 0; m < 2; m++) {
        CHECK(cuda_set_matmul_precision(modes[m]) == 0);
        for (int x_off = 0; x_off < 2; x_off++) {  // x misaligned, or else the norm weights
            const float *dx = x_off ? d_xs + 1 : d_x, *dn = x_off ? d_norm : d_norm + 1;
            const float *hn = x_off ? normw : normw + 1;
            rmsnorm_linear_swiglu_forward(act, gate, up, ln, x, hn, 1e-6f, wg, wu, N, IC, F);
            cuda_rmsnorm_linear_swiglu_forward(d_act, d_gate, d_up, d_ln, dx, dn, 1e-6f, d_wg, d_wu, N, IC, F);
            char what[80];
            snprintf(what, sizeof what, "rmsnorm_linear_swiglu %s, %s misaligned", modes[m], x_off ? "x" : "norm");
            expect_close(what, d_act, act, nf, m ? 1e-5 : 1e-2);
        }
    }
    CHECK_CUDA_OK();
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(normw), free(wg), free(wu), free(xs), free(act), free(gate), free(up), free(ln);
    cuda_free(d_x), cuda_free(d_xs), cuda_free(d_norm), cuda_free(d_wg), cuda_free(d_wu), cuda_free(d_ln);
    cuda_free(d_act), cuda_free(d_gate), cuda_free(d_up);
}

// o and down with the residual added on the way out: against the CPU twin, and bit for bit
// the product then add_inplace (few rows). N = 9 takes the GEMM, with the residual as its C
// matrix and the bias in its epilogue (cuBLASLt): once without a bias and once with.
static void linear_residual_case(int N, int IC, bool bias) {
    int OC = 640;
    size_t nx = (size_t)N * IC, no = (size_t)N * OC, nw = (size_t)OC * IC;
    float *x = rnd(nx), *w = rnd(nw), *b = rnd(OC), *r = rnd(no), *out = malloc(no * 4);
    float *d_x = dev_copy(x, nx * 4), *d_w = dev_copy(w, nw * 4), *d_b = dev_copy(b, OC * 4);
    float *d_r = dev_copy(r, no * 4), *d_out = dev_poisoned(no), *d_out2 = dev_poisoned(no);
    linear_residual_forward(out, x, w, bias ? b : NULL, r, N, IC, OC);
    cuda_linear_residual_forward(d_out, d_x, d_w, bias ? d_b : NULL, d_r, N, IC, OC);
    char what[80];
    snprintf(what, sizeof what, "linear_residual N=%d IC=%d bias=%d", N, IC, bias);
    expect_close(what, d_out, out, no, 1e-2);
    cuda_linear_forward(d_out2, d_x, d_w, bias ? d_b : NULL, N, IC, OC);
    cuda_add_inplace(d_out2, d_r, (long)no);
    float *o1 = host_of(d_out, no), *o2 = host_of(d_out2, no);
    if (N <= 8)  // (the GEMM adds bias and residual in its epilogue, rounding differently)
        CHECK_MSG(!memcmp(o1, o2, no * 4), "%s: differs from the product and add_inplace", what);
    CHECK_CUDA_OK();
    free(x), free(w), free(b), free(r), free(out), free(o1), free(o2);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_b), cuda_free(d_r), cuda_free(d_out), cuda_free(d_out2);
}

static void test_linear_residual(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    for (int t = 0; t < (int)(sizeof fused_cases / sizeof fused_cases[0]); t++) {
        int N = fused_cases[t][0], IC = fused_cases[t][1];
        if (N > 8) linear_residual_case(N, IC, false), linear_residual_case(N, IC, true);
        else linear_residual_case(N, IC, t == 1 || t == 4);  // rows split over warps (IC 2048) or not
    }
    CHECK(cuda_set_matmul_precision("fp32") == 0);
}

// A decode step's rotation and cache writes in one launch against the CPU twin (the caches
// start random on both sides: rows not named must keep their values).
static void test_rope_kv_cache(void) {
    NEED_GPU();
    const int shapes[][4] = {{1, 14, 2, 64}, {5, 8, 8, 16}, {3, 12, 2, 128}};  // n, NH, KVH, HD
    for (int s = 0; s < 3; s++) {
        int n = shapes[s][0], NH = shapes[s][1], KVH = shapes[s][2], HD = shapes[s][3], rows = 40;
        size_t nq = (size_t)n * NH * HD, nk = (size_t)n * KVH * HD, nc = (size_t)rows * KVH * HD;
        int32_t pos[5], row[5];
        for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand() % 3000), row[i] = (int32_t)(i * 7 + 3);
        float inv[64];
        for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(1e6, -2.0 * i / HD);
        float *q = rnd(nq), *k = rnd(nk), *v = rnd(nk), *kc = rnd(nc), *vc = rnd(nc);
        int32_t *d_pos = dev_copy(pos, sizeof pos), *d_row = dev_copy(row, sizeof row);
        float *d_inv = dev_copy(inv, sizeof inv), *d_q = dev_copy(q, nq * 4), *d_k = dev_copy(k, nk * 4);
        float *d_v = dev_copy(v, nk * 4), *d_kc = dev_copy(kc, nc * 4), *d_vc = dev_copy(vc, nc * 4);
        rope_kv_cache_forward(q, k, v, kc, vc, row, pos, inv, n, NH, KVH, HD);
        cuda_rope_kv_cache_forward(d_q, d_k, d_v, d_kc, d_vc, d_row, d_pos, d_inv, n, NH, KVH, HD);
        expect_close("rope_kv_cache q", d_q, q, nq, 1e-5);
        expect_close("rope_kv_cache k", d_k, k, nk, 1e-5);
        expect_close("rope_kv_cache k cache", d_kc, kc, nc, 1e-5);
        expect_close("rope_kv_cache v cache", d_vc, vc, nc, 0);
        CHECK_CUDA_OK();
        free(q), free(k), free(v), free(kc), free(vc);
        cuda_free(d_pos), cuda_free(d_row), cuda_free(d_inv), cuda_free(d_q), cuda_free(d_k), cuda_free(d_v);
        cuda_free(d_kc), cuda_free(d_vc);
    }
}

// The decode step's q, k, v products with RoPE and the cache writes (one kernel at up to 8
// rows and C < 2048, a warp a rotated pair) against the same ops in two calls: the same bits
// in q, k, v and both caches (random before, rows not named keep their values; outputs
// NaN-poisoned), and within bf16 tolerance of the cpu twin.
static void qkv_rope_cache_case(int n, int C, int NH, int KVH, int HD, bool bias, const char *path) {
    const int Q = NH * HD, KV = KVH * HD, rows = 40;
    const size_t nx = (size_t)n * C, nq = (size_t)n * Q, nk = (size_t)n * KV, nc = (size_t)rows * KV;
    int32_t pos[9], row[9];
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand() % 3000), row[i] = (int32_t)(i * 4 + 1);
    float inv[64], *x = rnd(nx), *norm = rnd(C), *w[3], *b[3], *d_w[3], *d_b[3];
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(1e6, -2.0 * i / HD);
    const int OC[3] = {Q, KV, KV};
    for (int i = 0; i < 3; i++) {
        w[i] = rnd((size_t)OC[i] * C), b[i] = bias ? rnd(OC[i]) : NULL;
        d_w[i] = dev_copy(w[i], (size_t)OC[i] * C * 4), d_b[i] = bias ? dev_copy(b[i], OC[i] * 4) : NULL;
    }
    float *kc = rnd(nc), *vc = rnd(nc), *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
    float *ln = malloc(nx * 4), *d_x = dev_copy(x, nx * 4), *d_norm = dev_copy(norm, C * 4), *d_ln = dev_poisoned(nx);
    int32_t *d_pos = dev_copy(pos, sizeof pos), *d_row = dev_copy(row, sizeof row);
    float *d_inv = dev_copy(inv, sizeof inv), *got[5], *ref[5];  // q, k, v, k cache, v cache
    const size_t sizes[5] = {nq, nk, nk, nc, nc};
    for (int t = 0; t < 2; t++) {  // t 0: the fused op; 1: the two ops
        float *d_q = dev_poisoned(nq), *d_k = dev_poisoned(nk), *d_v = dev_poisoned(nk);
        float *d_kc = dev_copy(kc, nc * 4), *d_vc = dev_copy(vc, nc * 4);
        const float *const ws[3] = {d_w[0], d_w[1], d_w[2]}, *const bs[3] = {d_b[0], d_b[1], d_b[2]};
        if (t == 0) {
            cuda_rmsnorm_qkv_rope_cache_forward(d_q, d_k, d_v, d_kc, d_vc, d_ln, d_x, d_norm, 1e-6f, ws, bs, d_row,
                                                d_pos, d_inv, n, C, NH, KVH, HD);
            CHECK_MSG(!strcmp(cuda_decode_last_path(), path), "qkv_rope_cache n=%d C=%d: the %s path ran, not %s", n,
                      C, cuda_decode_last_path(), path);
        } else {
            cuda_rmsnorm_linear_forward_many(3, (float *const[]){d_q, d_k, d_v}, d_ln, d_x, d_norm, 1e-6f, ws, bs, OC,
                                             n, C);
            cuda_rope_kv_cache_forward(d_q, d_k, d_v, d_kc, d_vc, d_row, d_pos, d_inv, n, NH, KVH, HD);
        }
        float *d[5] = {d_q, d_k, d_v, d_kc, d_vc};
        for (int i = 0; i < 5; i++) (t ? ref : got)[i] = host_of(d[i], sizes[i]), cuda_free(d[i]);
    }
    CHECK_CUDA_OK();
    const char *names[5] = {"q", "k", "v", "k cache", "v cache"};
    for (int i = 0; i < 5; i++)
        CHECK_MSG(!memcmp(got[i], ref[i], sizes[i] * 4), "qkv_rope_cache n=%d C=%d NH=%d KVH=%d HD=%d: %s differs from "
                  "the products and rope_kv_cache", n, C, NH, KVH, HD, names[i]);
    rmsnorm_qkv_rope_cache_forward(q, k, v, kc, vc, ln, x, norm, 1e-6f, (const float *const *)w,
                                   (const float *const *)b, row, pos, inv, n, C, NH, KVH, HD);
    const float *cpu[5] = {q, k, v, kc, vc};
    char what[96];
    for (int i = 0; i < 5; i++) {
        float *d_got = dev_copy(got[i], sizes[i] * 4);
        snprintf(what, sizeof what, "qkv_rope_cache n=%d C=%d HD=%d %s vs cpu", n, C, HD, names[i]);
        expect_close(what, d_got, cpu[i], sizes[i], 1e-2);
        cuda_free(d_got), free(got[i]), free(ref[i]);
    }
    for (int i = 0; i < 3; i++) free(w[i]), free(b[i]), cuda_free(d_w[i]), cuda_free(d_b[i]);
    free(x), free(norm), free(kc), free(vc), free(q), free(k), free(v), free(ln);
    cuda_free(d_x), cuda_free(d_norm), cuda_free(d_ln), cuda_free(d_pos), cuda_free(d_row), cuda_free(d_inv);
}

static void test_qkv_rope_cache(void) {
    NEED_GPU();
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    qkv_rope_cache_case(1, 896, 14, 2, 64, true, "fused");  // Qwen2.5-0.5B's shape, one sequence
    qkv_rope_cache_case(3, 128, 4, 4, 32, false, "fused");  // no GQA, no biases
    qkv_rope_cache_case(8, 64, 4, 2, 16, true, "fused");    // the most rows one launch takes
    qkv_rope_cache_case(2, 64, 3, 1, 12, true, "fused");    // pairs a segment not a multiple of 4 warps
    qkv_rope_cache_case(5, 96, 6, 2, 12, false, "fused");
    qkv_rope_cache_case(9, 64, 4, 2, 16, true, "separate");     // more rows: the two ops
    qkv_rope_cache_case(2, 2048, 4, 2, 64, false, "separate");  // rows split over warps
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    qkv_rope_cache_case(2, 64, 4, 2, 16, true, "separate");  // fp32 products
}

// Qwen3's decode step: the per-head norms of q and k, RoPE and the cache writes in one
// kernel (HD 64, 128) against the three ops: the same bits in q, k and both caches (random
// before; outputs NaN-poisoned), and the cpu twin's values within 1e-5.
static void qk_norm_rope_cache_case(int n, int NH, int KVH, int HD, const char *path) {
    const int rows = 40;
    const size_t nq = (size_t)n * NH * HD, nk = (size_t)n * KVH * HD, nc = (size_t)rows * KVH * HD;
    int32_t pos[9], row[9];
    for (int i = 0; i < n; i++) pos[i] = (int32_t)(test_rand() % 3000), row[i] = (int32_t)(i * 4 + 2);
    float inv[64];
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(1e6, -2.0 * i / HD);
    float *qr = rnd(nq), *kr = rnd(nk), *v = rnd(nk), *qn = rnd(HD), *kn = rnd(HD), *kc = rnd(nc), *vc = rnd(nc);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *got[4], *ref[4];
    float *d_qr = dev_copy(qr, nq * 4), *d_kr = dev_copy(kr, nk * 4), *d_v = dev_copy(v, nk * 4);
    float *d_qn = dev_copy(qn, HD * 4), *d_kn = dev_copy(kn, HD * 4), *d_inv = dev_copy(inv, sizeof inv);
    int32_t *d_pos = dev_copy(pos, sizeof pos), *d_row = dev_copy(row, sizeof row);
    const size_t sizes[4] = {nq, nk, nc, nc};
    for (int t = 0; t < 2; t++) {  // t 0: the fused op; 1: the three ops
        float *d_q = dev_poisoned(nq), *d_k = dev_poisoned(nk);
        float *d_kc = dev_copy(kc, nc * 4), *d_vc = dev_copy(vc, nc * 4);
        if (t == 0) {
            cuda_qk_norm_rope_kv_cache_forward(d_q, d_k, d_qr, d_kr, d_v, d_kc, d_vc, d_qn, d_kn, 1e-6f, d_row, d_pos,
                                               d_inv, n, NH, KVH, HD);
            CHECK_MSG(!strcmp(cuda_decode_last_path(), path), "qk_norm_rope_cache HD=%d: the %s path ran, not %s", HD,
                      cuda_decode_last_path(), path);
        } else {
            cuda_rmsnorm_forward(d_q, NULL, d_qr, d_qn, n * NH, HD, 1e-6f);
            cuda_rmsnorm_forward(d_k, NULL, d_kr, d_kn, n * KVH, HD, 1e-6f);
            cuda_rope_kv_cache_forward(d_q, d_k, d_v, d_kc, d_vc, d_row, d_pos, d_inv, n, NH, KVH, HD);
        }
        float *d[4] = {d_q, d_k, d_kc, d_vc};
        for (int i = 0; i < 4; i++) (t ? ref : got)[i] = host_of(d[i], sizes[i]), cuda_free(d[i]);
    }
    CHECK_CUDA_OK();
    qk_norm_rope_kv_cache_forward(q, k, qr, kr, v, kc, vc, qn, kn, 1e-6f, row, pos, inv, n, NH, KVH, HD);
    const char *names[4] = {"q", "k", "k cache", "v cache"};
    const float *cpu[4] = {q, k, kc, vc};
    char what[96];
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(!memcmp(got[i], ref[i], sizes[i] * 4), "qk_norm_rope_cache n=%d NH=%d KVH=%d HD=%d: %s differs from "
                  "the norms and rope_kv_cache", n, NH, KVH, HD, names[i]);
        float *d_got = dev_copy(got[i], sizes[i] * 4);
        snprintf(what, sizeof what, "qk_norm_rope_cache n=%d HD=%d %s vs cpu", n, HD, names[i]);
        expect_close(what, d_got, cpu[i], sizes[i], 1e-5);
        cuda_free(d_got), free(got[i]), free(ref[i]);
    }
    free(qr), free(kr), free(v), free(qn), free(kn), free(kc), free(vc), free(q), free(k);
    cuda_free(d_qr), cuda_free(d_kr), cuda_free(d_v), cuda_free(d_qn), cuda_free(d_kn), cuda_free(d_inv);
    cuda_free(d_pos), cuda_free(d_row);
}

static void test_qk_norm_rope_cache(void) {
    NEED_GPU();
    qk_norm_rope_cache_case(1, 16, 8, 128, "fused");  // Qwen3-0.6B's heads: more than a block's 8 warps
    qk_norm_rope_cache_case(3, 4, 2, 64, "fused");
    qk_norm_rope_cache_case(9, 2, 2, 64, "fused");     // no GQA
    qk_norm_rope_cache_case(2, 4, 2, 32, "separate");  // the three ops
}

static void test_swiglu_add_rows(void) {
    NEED_GPU();
    long n = 10007;
    float *g = rnd(n), *u = rnd(n), *out = malloc(n * 4), *dout = rnd(n), *dg = malloc(n * 4), *du = malloc(n * 4);
    g[0] = -100, g[1] = 100;  // exp overflow at both ends
    float *d_g = dev_copy(g, n * 4), *d_u = dev_copy(u, n * 4), *d_out = dev_poisoned(n), *d_dout = dev_copy(dout, n * 4);
    float *d_dg = dev_poisoned(n), *d_du = dev_poisoned(n);
    swiglu_forward(out, g, u, n);
    cuda_swiglu_forward(d_out, d_g, d_u, n);
    expect_close("swiglu forward", d_out, out, n, 1e-5);
    swiglu_backward(dg, du, dout, g, u, n);
    cuda_swiglu_backward(d_dg, d_du, d_dout, d_g, d_u, n);
    expect_close("swiglu backward dgate", d_dg, dg, n, 1e-5);
    expect_close("swiglu backward dup", d_du, du, n, 1e-5);
    add_inplace(out, u, n);
    cuda_add_inplace(d_out, d_u, n);
    expect_close("add_inplace", d_out, out, n, 1e-6);

    int N = 300, C = 33, k = 57;
    int32_t idx[57];
    for (int i = 0; i < k; i++) idx[i] = (int32_t)((i * 97 + 11) % N);  // distinct: 97 and 300 are coprime
    float *x = rnd((size_t)N * C), *rows = malloc((size_t)k * C * 4), *drows = rnd((size_t)k * C), *dx = rnd((size_t)N * C);
    int32_t *d_idx = dev_copy(idx, sizeof idx);
    float *d_x = dev_copy(x, (size_t)N * C * 4), *d_rows = dev_poisoned((size_t)k * C);
    float *d_drows = dev_copy(drows, (size_t)k * C * 4), *d_dx = dev_copy(dx, (size_t)N * C * 4);
    gather_rows(rows, x, idx, k, C);
    cuda_gather_rows(d_rows, d_x, d_idx, k, C);
    expect_close("gather_rows", d_rows, rows, (size_t)k * C, 0);
    scatter_add_rows(dx, drows, idx, k, C);
    cuda_scatter_add_rows(d_dx, d_drows, d_idx, k, C);
    expect_close("scatter_add_rows", d_dx, dx, (size_t)N * C, 1e-6);
    CHECK_CUDA_OK();
    free(g), free(u), free(out), free(dout), free(dg), free(du), free(x), free(rows), free(drows), free(dx);
    cuda_free(d_g), cuda_free(d_u), cuda_free(d_out), cuda_free(d_dout), cuda_free(d_dg), cuda_free(d_du);
    cuda_free(d_idx), cuda_free(d_x), cuda_free(d_rows), cuda_free(d_drows), cuda_free(d_dx);
}

// ---- the MLP block (mlp.cu) ----

// n elements of an MLP activation buffer (element_bytes 2: bf16, 4: fp32) as host floats.
static float *act_host(const void *d, size_t n, size_t element_bytes) {
    if (element_bytes == 4) return host_of(d, n);
    uint16_t *h16 = malloc(n * 2 + 4);
    float *h = malloc(n * 4 + 4);
    cuda_download(h16, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = tp_bf16_to_f32(h16[i]);
    free(h16);
    return h;
}

// A device copy of x [n] of eb bytes an element: with 2, x is rounded to bf16 in place
// first (the CPU side then computes from the values the device holds).
static float *dev_act_copy(float *x, size_t n, size_t eb) {
    if (eb == 4) return dev_copy(x, n * 4);
    uint16_t *h = malloc(n * 2 + 2);
    for (size_t i = 0; i < n; i++) h[i] = tp_f32_to_bf16(x[i]), x[i] = tp_bf16_to_f32(h[i]);
    float *d = dev_copy(h, n * 2);
    free(h);
    return d;
}

static void expect_act_close(const char *what, const void *d, const float *ref, size_t n, size_t eb, double tol) {
    float *got = act_host(d, n, eb);
    double e = max_rel(got, ref, n);
    if (e > worst_seen) worst_seen = e;
    CHECK_MSG(e <= tol, "%s: max rel err %.3g > %.1g", what, e, tol);
    free(got);
}

// The three MLP ops against the CPU's (fp32 throughout) on one shape. act16: x and the
// [N, F] tensors in bf16 (with bf16 products; -1 the default). offset: the [N, F] buffers start
// this many elements into their allocations (1: not 16-byte aligned, the one-at-a-time
// SwiGLU kernel and products on 2-byte aligned pointers).
static void mlp_case(int N, int C, int F, const char *precision, int act16, int offset, double tol) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    cuda_set_act16(act16);
    const size_t eb = cuda_act_bytes(), nf = (size_t)N * F, nc = (size_t)N * C, nw = (size_t)F * C;
    CHECK(eb == (!strcmp(precision, "bf16") && act16 != 0 ? 2u : 4u));
    float *x = rnd(nc), *res = rnd(nc), *dout = rnd(nc), *wg = rnd(nw), *wu = rnd(nw), *wd = rnd(nw);
    float *dwg = rnd(nw), *dwu = rnd(nw), *dwd = rnd(nw);
    for (size_t i = 0; i < nw; i++) {
        wg[i] *= 0.2f, wu[i] *= 0.2f, wd[i] *= 0.1f;  // gate values of a few units
        dwg[i] *= 0.01f, dwu[i] *= 0.01f, dwd[i] *= 0.01f;  // accumulated into, but the increment dominates
    }
    float *act = malloc(nf * 4), *gate = malloc(nf * 4), *up = malloc(nf * 4), *out = malloc(nc * 4);
    float *dx = malloc(nc * 4), *dact = malloc(nf * 4), *dgate = malloc(nf * 4), *dup = malloc(nf * 4);
    float *d_x = dev_act_copy(x, nc, eb), *d_res = dev_copy(res, nc * 4), *d_dout = dev_copy(dout, nc * 4);
    float *d_wg = dev_copy(wg, nw * 4), *d_wu = dev_copy(wu, nw * 4), *d_wd = dev_copy(wd, nw * 4);
    float *d_dwg = dev_copy(dwg, nw * 4), *d_dwu = dev_copy(dwu, nw * 4), *d_dwd = dev_copy(dwd, nw * 4);
    float *d_out = dev_poisoned(nc), *d_dx = dev_poisoned(nc);
    char *bufs[6];  // act, gate, up, dact, dgate, dup
    for (int i = 0; i < 6; i++) bufs[i] = dev_poisoned_bytes((nf + (size_t)offset) * eb);
    void *b[6];
    for (int i = 0; i < 6; i++) b[i] = bufs[i] + (size_t)offset * eb;
    mlp_up_forward(act, gate, up, x, wg, wu, N, C, F);  // (the weight gradients start equal on both sides)
    mlp_down_forward(out, act, wd, res, N, F, C);
    mlp_backward(dx, dwg, dwu, dwd, dout, x, act, gate, up, wg, wu, wd, dact, dgate, dup, N, C, F);
    cuda_mlp_up_forward(b[0], b[1], b[2], d_x, d_wg, d_wu, N, C, F);
    cuda_mlp_down_forward(d_out, b[0], d_wd, d_res, N, F, C);
    cuda_mlp_backward(d_dx, d_dwg, d_dwu, d_dwd, d_dout, d_x, b[0], b[1], b[2], d_wg, d_wu, d_wd, b[3], b[4], b[5], N,
                      C, F);
    char what[128];
    const char *names[6] = {"act", "gate", "up", "dact", "dgate", "dup"};
    const float *refs[6] = {act, gate, up, dact, dgate, dup};
    for (int i = 0; i < 6; i++) {
        snprintf(what, sizeof what, "mlp %s: %dx%dx%d %s, %zu-byte activations%s", names[i], N, C, F, precision, eb,
                 offset ? ", misaligned" : "");
        expect_act_close(what, b[i], refs[i], nf, eb, tol);
    }
    for (int i = 0; i < 6 && offset; i++) {  // the element before a misaligned buffer is untouched
        uint16_t before[2] = {0, 0};
        cuda_download(before, bufs[i], eb);
        CHECK_MSG(before[0] == 0xFFFF && (eb == 2 || before[1] == 0xFFFF), "mlp %s: written before its start",
                  names[i]);
    }
    const float *dev[5] = {d_out, d_dx, d_dwg, d_dwu, d_dwd}, *ref[5] = {out, dx, dwg, dwu, dwd};
    const char *dnames[5] = {"out", "dx", "dw_gate", "dw_up", "dw_down"};
    const size_t dn[5] = {nc, nc, nw, nw, nw};
    for (int i = 0; i < 5; i++) {
        snprintf(what, sizeof what, "mlp %s: %dx%dx%d %s, %zu-byte activations%s", dnames[i], N, C, F, precision, eb,
                 offset ? ", misaligned" : "");
        expect_close(what, dev[i], ref[i], dn[i], tol);
    }
    CHECK_CUDA_OK();
    cuda_set_act16(-1);
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    float *h[] = {x, res, dout, wg, wu, wd, dwg, dwu, dwd, act, gate, up, out, dx, dact, dgate, dup};
    for (size_t i = 0; i < sizeof h / sizeof *h; i++) free(h[i]);
    float *d[] = {d_x, d_res, d_dout, d_wg, d_wu, d_wd, d_dwg, d_dwu, d_dwd, d_out, d_dx};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) cuda_free(d[i]);
    for (int i = 0; i < 6; i++) cuda_free(bufs[i]);
}

// bf16 tolerance 2e-2: gate, up and act, and the gradients, are each rounded to bf16 as
// well as the products' operands (a numpy model of these shapes puts the worst case near
// 1.2e-2 over 300 seeds).
static void test_mlp(void) {
    NEED_GPU();
    // N x F not a multiple of 8 (SwiGLU's short last run); N <= 8 (the fp32 path's few-rows
    // kernel); a Qwen-like ratio of F to C
    const int shapes[][3] = {{37, 96, 260}, {5, 64, 200}, {128, 128, 704}};
    for (int s = 0; s < 3; s++) {
        const int N = shapes[s][0], C = shapes[s][1], F = shapes[s][2];
        mlp_case(N, C, F, "fp32", -1, 0, 1e-5);
        mlp_case(N, C, F, "bf16", 1, 0, 2e-2);
        mlp_case(N, C, F, "bf16", 0, 0, 2e-2);
    }
    mlp_case(37, 96, 260, "bf16", 1, 1, 2e-2);
}

// ---- the attention block ----

struct attn_shape {
    int lens[2];  // two sequences packed in one row
    int C, NH, KVH, HD;
    bool qk_norm, bias;  // Qwen3's per-head norms; Qwen2's q/k/v biases (and an o bias)
};

static int qkv_join_mode = -1;  // what the test last gave cuda_set_qkv_join

// Fills `bytes` of device buffer d with 0xFF again (NaN as fp32 and as bf16).
static void dev_poison(void *d, size_t bytes) {
    unsigned char *h = malloc(bytes + 4);
    memset(h, 0xFF, bytes);
    cuda_upload(d, h, bytes);
    free(h);
}

static bool on_simulator(void) {
    char dev[128];
    return cuda_device_describe(dev, sizeof dev) == 0 && strstr(dev, "simulator");
}

static float *scaled(size_t n, float s, float add) {
    float *p = rnd(n);
    for (size_t i = 0; i < n; i++) p[i] = p[i] * s + add;
    return p;
}

// Host tensors of one side of attn_case: the activations as fp32 (cpu) or device buffers.
typedef struct attn_side {
    attn_acts a;
    attn_scratch s;
    attn_grads g;
    float *mid, *ln2, *rstd2, *dres;
} attn_side;

// attn_forward and attn_backward against the CPU's (fp32 throughout) on one shape: every
// stored activation, mid, ln2, d/d(x) and each weight gradient (started from small random
// values, added to). act16: the activations in bf16 (bf16 products; -1 the default).
// offset: the activation buffers start this many elements into their allocations (1: not
// 16-byte aligned: the norms' warp-per-row kernels, attention through fp32 copies).
// joined: without per-head norms, dq, dk, dv inside one dqkv buffer (ops.h attn_scratch;
// the model's layout, which the GPU in bf16 fills row by row), else three tensors, no dqkv.
static void attn_case(const struct attn_shape *sh, const char *precision, int act16, int offset, bool joined,
                      double tol) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    cuda_set_act16(act16);
    const size_t eb = cuda_act_bytes();
    const int N = sh->lens[0] + sh->lens[1], C = sh->C, NH = sh->NH, KVH = sh->KVH, HD = sh->HD;
    const int Q = NH * HD, KV = KVH * HD;
    const size_t nc = (size_t)N * C, nq = (size_t)N * Q, nkv = (size_t)N * KV;
    const float ws = 1.0f / sqrtf((float)C);
    // weights: norm, wq, wk, wv, wo, bq, bk, bv, bo, q_norm, k_norm
    const size_t wn[11] = {C, (size_t)Q * C, (size_t)KV * C, (size_t)KV * C, (size_t)C * Q, Q, KV, KV, C, HD, HD};
    float *hw[11], *dw[11] = {0}, *hg[11], *dg[11] = {0};
    for (int i = 0; i < 11; i++) {
        bool present = (i < 5) || (i < 9 ? sh->bias : sh->qk_norm);
        hw[i] = present ? (i == 0 || i >= 9 ? scaled(wn[i], 0.1f, 1.0f) : scaled(wn[i], ws, 0.0f)) : NULL;
        hg[i] = present ? scaled(wn[i], 0.01f, 0.0f) : NULL;
        dw[i] = hw[i] ? dev_copy(hw[i], wn[i] * 4) : NULL;
        dg[i] = hg[i] ? dev_copy(hg[i], wn[i] * 4) : NULL;
    }
    float *norm2 = scaled(C, 0.1f, 1.0f), *x = rnd(nc), *dres = scaled(nc, 0.5f, 0.0f);
    int32_t *pos = malloc(N * 4), *seg = malloc(N * 4);
    float *inv_freq = malloc(HD / 2 * 4);
    for (int n = 0; n < N; n++) seg[n] = n < sh->lens[0] ? 0 : sh->lens[0], pos[n] = n - seg[n];
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * i / HD);
    float *d_norm2 = dev_copy(norm2, C * 4), *d_x = dev_copy(x, nc * 4);
    int32_t *d_pos = dev_copy(pos, N * 4), *d_seg = dev_copy(seg, N * 4);
    float *d_inv = dev_copy(inv_freq, HD / 2 * 4);

    // the cpu, fp32
    attn_side h = {0}, d = {0};
    void **acts[8] = {&h.a.ln, &h.a.q_raw, &h.a.k_raw, &h.a.q, &h.a.k, &h.a.v, &h.a.att, (void **)&h.ln2};
    void **dacts[8] = {&d.a.ln, &d.a.q_raw, &d.a.k_raw, &d.a.q, &d.a.k, &d.a.v, &d.a.att, (void **)&d.ln2};
    const size_t an[8] = {nc, nq, nkv, nq, nkv, nkv, nq, nc};
    const char *anames[8] = {"ln", "q_raw", "k_raw", "q", "k", "v", "att", "ln2"};
    char *dalloc[8] = {0};  // the allocations under dacts (offset elements before)
    for (int i = 0; i < 8; i++) {
        if ((i == 1 || i == 2) && !sh->qk_norm) continue;
        *acts[i] = malloc(an[i] * 4);
        dalloc[i] = dev_poisoned_bytes((an[i] + (size_t)offset) * eb);
        *dacts[i] = dalloc[i] + (size_t)offset * eb;
    }
    float **f32[5] = {&h.a.rstd, &h.a.q_rstd, &h.a.k_rstd, &h.a.lse, &h.rstd2};
    float **df32[5] = {&d.a.rstd, &d.a.q_rstd, &d.a.k_rstd, &d.a.lse, &d.rstd2};
    const size_t fn[5] = {N, (size_t)N * NH, (size_t)N * KVH, (size_t)N * NH, N};
    const char *fnames[5] = {"rstd", "q_rstd", "k_rstd", "lse", "rstd2"};
    for (int i = 0; i < 5; i++) {
        if ((i == 1 || i == 2) && !sh->qk_norm) continue;
        *f32[i] = malloc(fn[i] * 4);
        *df32[i] = dev_poisoned(fn[i]);
    }
    h.mid = malloc(nc * 4), d.mid = dev_poisoned(nc);
    // backward scratch (poisoned: the block must write before it reads)
    h.s.datt = malloc(nq * 4), d.s.datt = dev_poisoned_bytes(nq * eb);
    // dq, dk, dv: of act_bytes without per-head norms, else fp32 (ops.h attn_scratch)
    void **sc[6] = {(void **)&h.s.dln, &h.s.dq, &h.s.dk, &h.s.dv, (void **)&h.s.dq_raw, (void **)&h.s.dk_raw};
    void **dsc[6] = {(void **)&d.s.dln, &d.s.dq, &d.s.dk, &d.s.dv, (void **)&d.s.dq_raw, (void **)&d.s.dk_raw};
    const size_t sn[6] = {nc, nq, nkv, nkv, nq, nkv};
    joined = joined && !sh->qk_norm;
    if (joined) d.s.dqkv = dev_poisoned_bytes((nq + 2 * nkv) * eb);
    for (int i = 0; i < 6; i++) {
        if (i >= 4 && !sh->qk_norm) continue;
        const size_t bytes = i >= 1 && i <= 3 && !sh->qk_norm ? eb : 4;
        *sc[i] = malloc(sn[i] * 4);
        if (joined && i >= 1 && i <= 3) *dsc[i] = (char *)d.s.dqkv + (i == 1 ? 0 : nq + (i - 2) * nkv) * eb;
        else *dsc[i] = dev_poisoned_bytes(sn[i] * bytes);
    }
    h.dres = malloc(nc * 4), memcpy(h.dres, dres, nc * 4), d.dres = dev_copy(dres, nc * 4);
    const attn_weights hwt = {hw[0], hw[1], hw[2], hw[3], hw[4], hw[5], hw[6], hw[7], hw[8], hw[9], hw[10]};
    const attn_weights dwt = {dw[0], dw[1], dw[2], dw[3], dw[4], dw[5], dw[6], dw[7], dw[8], dw[9], dw[10]};
    h.g = (attn_grads){hg[0], hg[1], hg[2], hg[3], hg[4], hg[5], hg[6], hg[7], hg[8], hg[9], hg[10]};
    d.g = (attn_grads){dg[0], dg[1], dg[2], dg[3], dg[4], dg[5], dg[6], dg[7], dg[8], dg[9], dg[10]};
    const attn_batch hb = {N, C, NH, KVH, HD, 1e-6f, pos, seg, inv_freq};
    const attn_batch db = {N, C, NH, KVH, HD, 1e-6f, d_pos, d_seg, d_inv};

    attn_forward(h.mid, h.ln2, h.rstd2, &h.a, x, &hwt, norm2, &hb);
    attn_backward(h.dres, &h.g, &h.a, x, &hwt, &h.s, &hb);
    cuda_attn_forward(d.mid, d.ln2, d.rstd2, &d.a, d_x, &dwt, d_norm2, &db);
    if (eb == 2) {  // the forms of q, k, v the forward can take (cuda_ops.h cuda_set_qkv_join)
        const bool can_join = sh->qk_norm ? HD == 64 || HD == 128 || HD == 256 : HD % 8 == 0 && offset == 0;
        CHECK_STR(cuda_qkv_last_path(), qkv_join_mode != 0 && can_join ? "joined" : "three");
    }
    cuda_attn_backward(d.dres, &d.g, &d.a, d_x, &dwt, &d.s, &db);
    CHECK_CUDA_OK();

    char what[160];
#define ATTN_WHAT(name)                                                                                          \
    snprintf(what, sizeof what, "attn %s: N %d C %d NH %d KVH %d HD %d%s%s, %s, %zu-byte activations%s", name, N, \
             C, NH, KVH, HD, sh->qk_norm ? " qk-norm" : "", sh->bias ? " bias" : "", precision, eb,                \
             offset ? ", misaligned" : "")
    for (int i = 0; i < 8; i++) {
        if (!*acts[i]) continue;
        ATTN_WHAT(anames[i]);
        expect_act_close(what, *dacts[i], *acts[i], an[i], eb, tol);
    }
    for (int i = 0; i < 5; i++) {
        if (!*f32[i]) continue;
        ATTN_WHAT(fnames[i]);
        expect_close(what, *df32[i], *f32[i], fn[i], tol);
    }
    if (joined && eb == 2) {  // the gradients of q, k, v (the cpu's after RoPE's backward) in dqkv's rows
        const size_t L = (size_t)Q + 2 * KV;
        float *rows = act_host(d.s.dqkv, nq + 2 * nkv, eb), *part = malloc(nq * 4);
        const float *ref[3] = {h.s.dq, h.s.dk, h.s.dv};
        const size_t width[3] = {(size_t)Q, (size_t)KV, (size_t)KV}, at[3] = {0, (size_t)Q, (size_t)Q + KV};
        for (int t = 0; t < 3; t++) {
            for (size_t n = 0; n < (size_t)N; n++) memcpy(part + n * width[t], rows + n * L + at[t], width[t] * 4);
            const double e = max_rel(part, ref[t], (size_t)N * width[t]);
            const char *name = t == 0 ? "dq" : t == 1 ? "dk" : "dv";
            CHECK_MSG(e <= tol, "attn: %s in the rows of dqkv: max rel err %.3g > %.1g", name, e, tol);
        }
        free(rows), free(part);
    }
    ATTN_WHAT("mid");
    expect_close(what, d.mid, h.mid, nc, tol);
    ATTN_WHAT("dx");
    expect_close(what, d.dres, h.dres, nc, tol);
    const char *gnames[11] = {"dnorm", "dwq", "dwk", "dwv", "dwo", "dbq", "dbk", "dbv", "dbo", "dq_norm", "dk_norm"};
    for (int i = 0; i < 11; i++) {
        if (!hg[i]) continue;
        ATTN_WHAT(gnames[i]);
        expect_close(what, dg[i], hg[i], wn[i], tol);
    }
#undef ATTN_WHAT
    if (eb == 2 && on_simulator()) {
        // The forward's two forms of q, k, v (one joined product and a kernel that splits its
        // rows, or three products, the norms and RoPE one by one) give the same bits on the
        // simulator, whose products sum each element in one order whatever their shape. (A
        // GPU's cuBLAS may pick other algorithms for the joined product's width: there
        // only the tolerances above hold.)
        float *got[2][8] = {{0}}, *fgot[2][5] = {{0}}, *mids[2];
        for (int form = 0; form < 2; form++) {
            for (int i = 0; i < 8; i++)
                if (*dacts[i]) dev_poison(*dacts[i], an[i] * eb);
            for (int i = 0; i < 5; i++)
                if (*df32[i]) dev_poison(*df32[i], fn[i] * 4);
            dev_poison(d.mid, nc * 4);
            cuda_set_qkv_join(form);
            cuda_attn_forward(d.mid, d.ln2, d.rstd2, &d.a, d_x, &dwt, d_norm2, &db);
            for (int i = 0; i < 8; i++) got[form][i] = *dacts[i] ? act_host(*dacts[i], an[i], eb) : NULL;
            for (int i = 0; i < 5; i++) fgot[form][i] = *df32[i] ? host_of(*df32[i], fn[i]) : NULL;
            mids[form] = host_of(d.mid, nc);
        }
        cuda_set_qkv_join(qkv_join_mode);
        for (int i = 0; i < 8; i++)
            CHECK_MSG(!got[0][i] || !memcmp(got[0][i], got[1][i], an[i] * 4),
                      "attn %s: the joined q, k, v product's forward differs from three products'", anames[i]);
        for (int i = 0; i < 5; i++)
            CHECK_MSG(!fgot[0][i] || !memcmp(fgot[0][i], fgot[1][i], fn[i] * 4),
                      "attn %s: the joined q, k, v product's forward differs from three products'", fnames[i]);
        CHECK_MSG(!memcmp(mids[0], mids[1], nc * 4), "attn mid: the joined q, k, v product's forward differs");
        for (int form = 0; form < 2; form++) {
            for (int i = 0; i < 8; i++) free(got[form][i]);
            for (int i = 0; i < 5; i++) free(fgot[form][i]);
            free(mids[form]);
        }
    }
    CHECK_CUDA_OK();
    cuda_set_act16(-1);
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    for (int i = 0; i < 8; i++) free(*acts[i]), cuda_free(dalloc[i]);
    for (int i = 0; i < 5; i++) free(*f32[i]), cuda_free(*df32[i]);
    for (int i = 0; i < 6; i++) free(*sc[i]), cuda_free(joined && i >= 1 && i <= 3 ? NULL : *dsc[i]);
    cuda_free(d.s.dqkv);
    for (int i = 0; i < 11; i++) free(hw[i]), free(hg[i]), cuda_free(dw[i]), cuda_free(dg[i]);
    free(h.mid), free(h.s.datt), free(h.dres), free(norm2), free(x), free(dres), free(pos), free(seg), free(inv_freq);
    cuda_free(d.mid), cuda_free(d.s.datt), cuda_free(d.dres), cuda_free(d_norm2), cuda_free(d_x), cuda_free(d_pos);
    cuda_free(d_seg), cuda_free(d_inv);
}

// Qwen2-like (biases; HD 64: the tensor-core attention), Qwen3-like (per-head norms, HD
// 128; with biases too), per-head norms at HD 32 (attention through fp32 copies in bf16
// mode), Llama-like (neither), in fp32, and in bf16 with the activations in bf16 and in
// fp32; then misaligned, and the forward's three q, k, v products (not one joined).
static void test_attn_block(void) {
    NEED_GPU();
    const struct attn_shape shapes[] = {
        {{100, 60}, 128, 4, 2, 64, false, true},
        {{45, 20}, 256, 4, 2, 128, true, true},
        {{37, 33}, 96, 4, 2, 32, true, false},
        {{50, 30}, 192, 6, 2, 32, false, false},  // Llama-like: neither
    };
    const double before = worst_seen;
    double worst[3] = {0, 0, 0};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const char *prec[3] = {"fp32", "bf16", "bf16"};
        const int act16[3] = {-1, 1, 0};
        for (int m = 0; m < 3; m++) {
            worst_seen = 0;
            attn_case(&shapes[i], prec[m], act16[m], 0, true, m ? 2e-2 : 1e-5);
            worst[m] = fmax(worst[m], worst_seen);
        }
    }
    worst_seen = 0;
    attn_case(&shapes[1], "bf16", 1, 1, true, 2e-2);
    attn_case(&shapes[0], "fp32", -1, 1, true, 1e-5);
    attn_case(&shapes[0], "bf16", 1, 0, false, 2e-2);  // the three gradients as tensors of their own
    attn_case(&shapes[0], "bf16", 1, 1, true, 2e-2);   // q, k, v misaligned: three products, not one
    cuda_set_qkv_join(qkv_join_mode = 0);  // the three products with bf16 activations: biases, none, norms
    attn_case(&shapes[0], "bf16", 1, 0, true, 2e-2);
    attn_case(&shapes[3], "bf16", 1, 0, true, 2e-2);
    attn_case(&shapes[1], "bf16", 1, 0, true, 2e-2);
    cuda_set_qkv_join(qkv_join_mode = -1);
    worst[1] = fmax(worst[1], worst_seen);
    printf("# attention block: worst max rel err fp32 %.3g, bf16 with bf16 activations %.3g, with fp32 %.3g\n",
           worst[0], worst[1], worst[2]);
    worst_seen = fmax(before, fmax(worst[0], fmax(worst[1], worst[2])));
}

// The head of a training step on one chunk: loss, the gradient left in the logits, dx
// (written) and dw (accumulated) against the CPU's fp32; rows with target -1 count nothing.
static void head_case(int n, int C, int V, const char *precision, int act16, double tol) {
    CHECK(cuda_set_matmul_precision(precision) == 0);
    cuda_set_act16(act16);
    const size_t eb = cuda_act_bytes(), nx = (size_t)n * C, nw = (size_t)V * C, nz = (size_t)n * V;
    float *x = rnd(nx), *w = rnd(nw), *dw = rnd(nw), *dx = malloc(nx * 4), *z = malloc(nz * 4);
    for (size_t i = 0; i < nw; i++) w[i] *= 0.5f, dw[i] *= 1e-4f;  // logits up to ~25; dw: the increment dominates
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int r = 0; r < n; r++) t[r] = r % 5 == 3 ? -1 : (int32_t)(test_rand() % (unsigned)V);
    float *d_x = dev_copy(x, nx * 4), *d_w = dev_copy(w, nw * 4), *d_dw = dev_copy(dw, nw * 4);
    float *d_dx = dev_poisoned(nx);
    int32_t *d_t = dev_copy(t, (size_t)n * sizeof *t);
    void *d_z = dev_poisoned_bytes(nz * eb);
    const float scale = 0.25f;
    double loss = head_loss_backward(dx, dw, x, w, t, z, n, C, V, scale);
    double d_loss = cuda_head_loss_backward(d_dx, d_dw, d_x, d_w, d_t, d_z, n, C, V, scale);
    CHECK_MSG(fabs(d_loss - loss) <= tol * fabs(loss), "head %dx%dx%d %s, %zu-byte logits: loss %.9g vs %.9g", n, C,
              V, precision, eb, d_loss, loss);
    char what[128];
    snprintf(what, sizeof what, "head dlogits: %dx%dx%d %s, %zu-byte logits", n, C, V, precision, eb);
    expect_act_close(what, d_z, z, nz, eb, tol);
    snprintf(what, sizeof what, "head dx: %dx%dx%d %s, %zu-byte logits", n, C, V, precision, eb);
    expect_close(what, d_dx, dx, nx, tol);
    snprintf(what, sizeof what, "head dw: %dx%dx%d %s, %zu-byte logits", n, C, V, precision, eb);
    expect_close(what, d_dw, dw, nw, tol);
    CHECK_CUDA_OK();
    cuda_set_act16(-1);
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    free(x), free(w), free(dw), free(dx), free(z), free(t);
    cuda_free(d_x), cuda_free(d_w), cuda_free(d_dw), cuda_free(d_dx), cuda_free(d_t), cuda_free(d_z);
}

// bf16 logits of up to ~25 are rounded by up to 0.06, which moves the probabilities (and so
// the gradient) by up to ~6% of themselves: torch's autocast logits do the same. A numpy
// model of the shapes puts the worst case at 2.9e-2 of the largest gradient with bf16
// logits, 1.2e-2 with fp32 ones (bf16 operands only); a wrong index is off by O(1).
static void test_head_loss(void) {
    NEED_GPU();
    // V of 8-element multiples (16-byte bf16 runs) and not; Qwen's vocabulary
    const int shapes[][3] = {{20, 64, 5000}, {7, 96, 4099}, {3, 64, 151936}};
    for (int s = 0; s < 3; s++) {
        const int n = shapes[s][0], C = shapes[s][1], V = shapes[s][2];
        head_case(n, C, V, "fp32", -1, 1e-5);
        head_case(n, C, V, "bf16", 1, 5e-2);
        head_case(n, C, V, "bf16", 0, 3e-2);
    }
}

static void test_crossentropy(void) {
    NEED_GPU();
    // rows of 4-float multiples take float4s, the others single floats
    const int shapes[][2] = {{20, 5000}, {3, 151936}, {64, 257}, {4, 4099}};
    for (int s = 0; s < 4; s++) {
        int n = shapes[s][0], V = shapes[s][1];
        size_t nv = (size_t)n * V;
        float *logits = malloc(nv * 4);
        fill_uniform(logits, nv, -8, 8);
        logits[5] = 30;  // one row with a confident prediction
        for (int j = 0; j < V; j++) logits[(size_t)V + j] = -20.0f + 30.0f * j / V;  // a row's max moves every step
        int32_t *t = malloc(n * 4);
        for (int i = 0; i < n; i++) t[i] = i % 5 == 3 ? -1 : (int32_t)(test_rand() % V);
        t[0] = 5;
        float *d_logits = dev_copy(logits, nv * 4);
        int32_t *d_t = dev_copy(t, n * 4);
        double ref = crossentropy_forward_backward(logits, t, n, V, 0.05f);
        double got = cuda_crossentropy_forward_backward(d_logits, d_t, n, V, 0.05f);
        CHECK_MSG(fabs(got - ref) <= 1e-5 * fabs(ref), "crossentropy loss %.10g vs %.10g", got, ref);
        expect_close("crossentropy gradient", d_logits, logits, nv, 1e-5);
        CHECK_CUDA_OK();
        free(logits), free(t);
        cuda_free(d_logits), cuda_free(d_t);
    }
}

// A NaN logit makes the row's loss NaN on both sides (a training step must not hide it).
static void test_crossentropy_nan(void) {
    NEED_GPU();
    const int Vs[2] = {4096, 1001};  // float4 rows and single floats
    for (int s = 0; s < 2; s++) {
        int n = 2, V = Vs[s];
        size_t nv = (size_t)n * V;
        float *logits = malloc(nv * 4);
        fill_uniform(logits, nv, -8, 8);
        logits[V + 700] = NAN;  // row 1, mid-row
        logits[0] = NAN;        // row 0, a thread's first element
        int32_t t[2] = {3, 5}, *d_t = dev_copy(t, sizeof t);
        float *d_logits = dev_copy(logits, nv * 4);
        double ref = crossentropy_forward_backward(logits, t, n, V, 1.0f);
        double got = cuda_crossentropy_forward_backward(d_logits, d_t, n, V, 1.0f);
        CHECK_MSG(ref != ref && got != got, "V=%d: loss with a NaN logit: cpu %g, cuda %g", V, ref, got);
        CHECK_CUDA_OK();
        free(logits), cuda_free(d_logits), cuda_free(d_t);
    }
}

// AdamW over ranges of one flat buffer (with and without decay, an empty range, a gap no
// range covers, the gradients read scaled), against the cpu's; and the products' bf16 copy
// of a range's weights, written by the same pass, equal to the new weights rounded: a
// product of the identity with them reads the copy back whole.
static void test_optimizer_ops(void) {
    NEED_GPU();
    enum { OC = 100, IC = 1000 };
    const size_t n = 200003;
    const adamw_range ranges[4] = {{0, OC * IC, 1}, {OC * IC, 37, 0}, {OC * IC + 37, 0, 1}, {OC * IC + 40, 99963, 1}};
    float *p = rnd(n), *m = calloc(n, 4), *v = calloc(n, 4), *g = rnd(n), *p0 = malloc(n * 4);
    memcpy(p0, p, n * 4);
    float *d_p = dev_copy(p, n * 4), *d_m = dev_copy(m, n * 4), *d_v = dev_copy(v, n * 4), *d_g = dev_copy(g, n * 4);
    float *eye = calloc((size_t)IC * IC, 4);
    for (int k = 0; k < IC; k++) eye[(size_t)k * IC + k] = 1;
    float *d_eye = dev_copy(eye, (size_t)IC * IC * 4), *d_out = dev_poisoned((size_t)IC * OC);
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    cuda_linear_forward(d_out, d_eye, d_p, NULL, IC, IC, OC);  // makes the copy of range 0
    // ranges 0 and 3 joined: AdamW writes range 3's part; range 0's (AdamW writes the single
    // copy) is made again when the joined copy is next asked for
    const float *jsrc[2] = {d_p, d_p + OC * IC + 40};
    const size_t jn[2] = {OC * IC, 99963};
    CHECK(cuda_weights_bf16_joined(2, jsrc, jn) != NULL);
    for (int step = 1; step <= 3; step++) {
        float bc1 = 1 - powf(0.9f, step), bc2 = 1 - powf(0.95f, step);
        adamw_ranges(p, g, m, v, ranges, 4, 0.7f, 0.999f, 0.9f, 0.95f, 1e-3f / bc1, sqrtf(bc2), 1e-8f);
        cuda_adamw_ranges(d_p, d_g, d_m, d_v, ranges, 4, 0.7f, 0.999f, 0.9f, 0.95f, 1e-3f / bc1, sqrtf(bc2), 1e-8f);
    }
    expect_close("adamw params", d_p, p, n, 1e-6);
    expect_close("adamw exp_avg", d_m, m, n, 1e-6);
    expect_close("adamw exp_avg_sq", d_v, v, n, 1e-6);
    float *got_p = host_of(d_p, n);
    CHECK(memcmp(got_p + OC * IC + 37, p0 + OC * IC + 37, 3 * 4) == 0);  // the gap
    cuda_linear_forward(d_out, d_eye, d_p, NULL, IC, IC, OC);
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    float *w16 = host_of(d_out, (size_t)IC * OC);  // [IC, OC]: w16[k][o] = bf16(p[o][k])
    size_t stale = 0;
    for (int o = 0; o < OC; o++)
        for (int k = 0; k < IC; k++)
            stale += w16[(size_t)k * OC + o] != tp_bf16_to_f32(tp_f32_to_bf16(got_p[(size_t)o * IC + k]));
    CHECK_MSG(stale == 0, "%zu of %d weights of the bf16 copy are not the new weights rounded", stale, OC * IC);
    const size_t nj = jn[0] + jn[1];
    uint16_t *joined = malloc(nj * 2);
    cuda_download(joined, cuda_weights_bf16_joined(2, jsrc, jn), nj * 2);
    stale = 0;
    for (size_t i = 0; i < nj; i++)
        stale += joined[i] != tp_f32_to_bf16(got_p[i < jn[0] ? i : OC * IC + 40 + (i - jn[0])]);
    CHECK_MSG(stale == 0, "%zu of %zu weights of the joined bf16 copy are not the new weights rounded", stale, nj);
    free(joined);
    double ref = sum_squares(g, n), got = cuda_sum_squares(d_g, n);
    CHECK_MSG(fabs(got - ref) <= 1e-12 * ref, "sum_squares %.17g vs %.17g", got, ref);
    scale_inplace(g, n, 0.3f);
    cuda_scale(d_g, n, 0.3f);
    expect_close("scale", d_g, g, n, 0);
    CHECK_CUDA_OK();
    free(p), free(m), free(v), free(g), free(p0), free(eye), free(got_p), free(w16);
    cuda_free(d_p), cuda_free(d_m), cuda_free(d_v), cuda_free(d_g), cuda_free(d_eye), cuda_free(d_out);
}

static void test_out_of_memory_is_null(void) {
    NEED_GPU();
    void *p = cuda_alloc((size_t)1 << 50);  // a petabyte
    CHECK(p == NULL);
    CHECK_CUDA_OK();  // asking is not an error that poisons later work
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0)
        printf("# cuda ops on %s: worst max rel err %.3g (fp32 and bf16 cases)\n", name, worst_seen);
}
#else
static void test_no_cuda(void) { NEED_GPU(); }
#endif

int main(void) {
#ifdef TP_HAVE_CUDA
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_add_rmsnorm);
    RUN(test_add_rmsnorm_misaligned);
    RUN(test_linear);
    RUN(test_linear_rows_independent);
    RUN(test_weight_cache_follows_free);
    RUN(test_dependent_launch_chain);
    RUN(test_rope);
    RUN(test_swiglu_add_rows);
    RUN(test_rmsnorm_linear);
    RUN(test_rmsnorm_linear_swiglu);
    RUN(test_linear_residual);
    RUN(test_fused_fallbacks);
    RUN(test_rope_kv_cache);
    RUN(test_qkv_rope_cache);
    RUN(test_qk_norm_rope_cache);
    RUN(test_product_plans_evicted);
    RUN(test_mlp);
    RUN(test_attn_block);
    RUN(test_head_loss);
    RUN(test_crossentropy);
    RUN(test_crossentropy_nan);
    RUN(test_optimizer_ops);
    RUN(test_out_of_memory_is_null);
#else
    RUN(test_no_cuda);
#endif
    return TEST_SUMMARY();
}
