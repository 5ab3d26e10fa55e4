// cuda_sample_rows against its CPU twin sample_rows (kernels/ops.h): the same token on
// every row, for flat rows (uniform logits: every token a candidate), peaked rows (a few
// hundred candidates), rows with a large offset (every key in one top byte), constant and
// masked (-inf) rows, greedy ties across threads and warps; random parameters per row.
// Exact equality is required: the cuda twin's fixed-point masses can flip a draw or a
// top-p threshold only when u x mass or top_p x mass lands within ~1e-12 (relative) of a
// boundary (sample.cu's header), about 1e-12 per row, so a mismatch here is a bug.
// Skipped without a GPU.
#include "cuda_test.h"
#include "ops.h"

#include <stdint.h>
#include <time.h>

#ifdef TP_HAVE_CUDA
static int rows_seen, rows_bad;

static double normal(void) {
    double a = test_uniform(), b = test_uniform();
    return sqrt(-2 * log(1 - a)) * cos(6.283185307179586 * b);
}

static void random_params(sample_params *p, int n) {
    for (int i = 0; i < n; i++) {
        p[i].greedy = test_rand() % 6 == 0;
        p[i].inv_temperature = (float)(1 / (0.6 + 0.6 * test_uniform()));
        p[i].top_k = (int[]){0, 1, 20, 50}[test_rand() % 4];
        p[i].top_p = (float[]){1, 0.9f, 0.95f}[test_rand() % 3];
        p[i].min_p = test_rand() % 2 ? 0.05f : 0;
        p[i].u = test_uniform();
    }
}

// Samples x [n, V] on both sides; every row must agree.
static void compare(const char *what, const float *x, const sample_params *p, int n, int V) {
    int32_t *got = malloc(sizeof(int32_t) * n), *want = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) got[i] = want[i] = -1;  // a row never written fails
    float *d_x = dev_copy(x, sizeof(float) * (size_t)n * V);
    cuda_sample_rows(got, d_x, p, n, V);
    CHECK_CUDA_OK();
    sample_rows(want, x, p, n, V);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (got[i] == want[i]) continue;
        if (bad++ < 5)
            fprintf(stderr, "  %s row %d: cuda %d, cpu %d (greedy %d it %.4f top_k %d top_p %.2f min_p %.2f u %.6f)\n",
                    what, i, got[i], want[i], p[i].greedy, p[i].inv_temperature, p[i].top_k, p[i].top_p,
                    p[i].min_p, p[i].u);
    }
    CHECK_MSG(bad == 0, "%s: %d of %d rows differ", what, bad, n);
    rows_seen += n, rows_bad += bad;
    cuda_free(d_x);
    free(got), free(want);
}

static float *logits(int n, int V, int kind) {
    float *x = malloc(sizeof(float) * (size_t)n * V);
    for (size_t i = 0; i < (size_t)n * V; i++)
        x[i] = kind == 0 ? (float)(4 * test_uniform() - 2)  // flat: all candidates
             : kind == 1 ? (float)(8 * normal())            // peaked
                         : (float)(40 + 0.5 * normal());    // offset: one top key byte
    return x;
}

static void test_sample_random(void) {
    NEED_GPU();
    const int Vs[2] = {151936, 1000}, ns[3] = {1, 37, 256};
    const char *kinds[3] = {"flat", "peaked", "offset"};
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < 3; k++)
            for (int s = 0; s < 3; s++) {
                int n = ns[s], V = Vs[v];
                if (k == 2 && n == 256 && V > 1000) continue;  // the offset rows: 37 are plenty
                float *x = logits(n, V, k);
                sample_params *p = malloc(sizeof *p * n);
                random_params(p, n);
                char what[64];
                snprintf(what, sizeof what, "%s V %d n %d", kinds[k], V, n);
                compare(what, x, p, n, V);
                free(x), free(p);
            }
    // An odd V: most rows start off a 16-byte boundary (the kernel's 4-byte load path).
    for (int k = 0; k < 2; k++) {
        float *x = logits(37, 50001, k);
        sample_params p[37];
        random_params(p, 37);
        compare(k ? "peaked V 50001 n 37" : "flat V 50001 n 37", x, p, 37, 50001);
        free(x);
    }
    // The largest batch and every rule on at once.
    int n = 512, V = 4096;
    float *x = logits(n, V, 0);
    sample_params *p = malloc(sizeof *p * n);
    random_params(p, n);
    for (int i = 0; i < n; i++) p[i].greedy = 0, p[i].top_k = 50, p[i].top_p = 0.9f, p[i].min_p = 0.05f;
    compare("flat V 4096 n 512, all rules", x, p, n, V);
    free(x), free(p);
}

// Ties (greedy and sampled), constant rows, masked rows, u at the ends.
static void test_sample_edges(void) {
    NEED_GPU();
    enum { V = 151936, N = 12 };
    float *x = logits(N, V, 0);
    sample_params p[N];
    random_params(p, N);
    float *r;
    r = x + 0 * (size_t)V;  // greedy ties in different warps: the smallest index wins
    r[150000] = r[77777] = r[1025] = 9;
    p[0].greedy = 1;
    r = x + 1 * (size_t)V;  // ties within one thread's stride
    r[5 + 1024] = r[5 + 4096] = r[5] = 9;
    p[1].greedy = 1;
    for (int i = 2; i < 6; i++) {  // constant rows: every token tied with the best
        for (int j = 0; j < V; j++) x[(size_t)i * V + j] = 0.25f;
        p[i].greedy = i == 2;
        p[i].top_k = i == 3 ? 50 : 0;
        p[i].top_p = i == 4 ? 0.9f : 1;
        p[i].min_p = 0.05f;
    }
    r = x + 6 * (size_t)V;  // masked: only every 97th token is allowed
    for (int j = 0; j < V; j++)
        if (j % 97) r[j] = -INFINITY;
    p[6].greedy = 0, p[6].top_p = 0.95f, p[6].top_k = 20;
    r = x + 7 * (size_t)V;  // a clear winner and its tie at top_k 1
    r[123] = r[140000] = 30;
    p[7].greedy = 0, p[7].top_k = 1, p[7].top_p = 1, p[7].u = 0.75;
    p[8].greedy = 0, p[8].u = 0;  // the ends of u
    p[9].greedy = 0, p[9].u = 1 - 1e-16;
    p[10].greedy = 0, p[10].top_p = 0, p[10].top_k = 0;  // top_p 0: the best value only
    p[11].greedy = 0, p[11].top_p = 0.95f, p[11].min_p = 0.9f, p[11].inv_temperature = 3;
    compare("edge rows", x, p, N, V);
    int32_t t[1] = {-7};
    cuda_sample_rows(t, NULL, p, 0, V);  // n = 0: nothing to do, nothing touched
    CHECK(t[0] == -7);
    CHECK_CUDA_OK();
    free(x);
}

// Rough time per call, for the record (tests/bench/bench_cuda_sample.c measures properly).
static void test_sample_time(void) {
    NEED_REAL_GPU();
    enum { N = 256, V = 151936 };
    float *x = logits(N, V, 0), *d_x = dev_copy(x, sizeof(float) * (size_t)N * V);
    sample_params p[N];
    for (int i = 0; i < N; i++)
        p[i] = (sample_params){.inv_temperature = 1 / 0.6f, .top_k = 0, .top_p = 0.95f, .min_p = 0, .u = 0.5};
    int32_t t[N];
    cuda_sample_rows(t, d_x, p, N, V);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 5; i++) cuda_sample_rows(t, d_x, p, N, V);
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK_CUDA_OK();
    double us = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 5 / 1e3;
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0)
        printf("# cuda sample on %s: %d rows compared, %d differ; flat top_p n %d V %d: %.1f us per call\n", name,
               rows_seen, rows_bad, N, V, us);
    cuda_free(d_x);
    free(x);
}
#else
static void test_no_cuda(void) { NEED_GPU(); }
#endif

int main(void) {
#ifdef TP_HAVE_CUDA
    RUN(test_sample_random);
    RUN(test_sample_edges);
    RUN(test_sample_time);
#else
    RUN(test_no_cuda);
#endif
    return TEST_SUMMARY();
}
