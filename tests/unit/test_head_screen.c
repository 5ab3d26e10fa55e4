// The head's argmax screen (kernels/cpu/head_screen.h) against the argmax of the full
// product, bf16 (linear_forward_w16) and fp32 (linear_forward_rows): random heads and
// tokens at odd shapes and batch sizes, equal maxima at several rows (the first wins), rows
// closer together than the int8 codes resolve (the screen's ranking alone would pick
// wrong), cases built so that each bound term decides, values near the ends of float's
// range, and the rows it must leave (x zero, NaN or inf; too many candidates).
// linear_w16_outputs and linear_rows_outputs give their products' bits.
#include "cpu/head_screen.h"
#include "cpu/linear_bf16.h"
#include "cpu/linear_rows.h"
#include "test.h"

#include <omp.h>
#include <stdint.h>

static bool have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

// Roughly normal (a sum of 4 uniforms), scaled.
static float normalish(double scale) {
    double u = 0;
    for (int i = 0; i < 4; i++) u += test_uniform() - 0.5;
    return (float)(u * 1.7 * scale);
}

static float *random_matrix(int rows, int cols, double scale) {
    float *m = malloc(sizeof(float) * (size_t)rows * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++) m[i] = normalish(scale);
    return m;
}

// The argmax of linear_forward_w16's (fp32: linear_forward_rows's) outputs for each row of
// x: the first of equal maxima.
static void full_argmax_of(int32_t *top, const float *w, const float *x, int N, int V, int IC, bool fp32) {
    uint16_t *wp = malloc(sizeof(uint16_t) * w16_packed_elems(IC, V));
    float *out = malloc(sizeof(float) * (size_t)N * V);
    w16_pack(wp, w, IC, V);
    if (fp32) CHECK(linear_forward_rows(out, x, w, NULL, N, IC, V));
    else linear_forward_w16(out, x, wp, NULL, N, IC, V);
    for (int n = 0; n < N; n++) {
        const float *o = out + (size_t)n * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (o[v] > o[best]) best = v;
        top[n] = best;
    }
    free(wp), free(out);
}

static void full_argmax(int32_t *top, const float *w, const float *x, int N, int V, int IC) {
    full_argmax_of(top, w, x, N, V, IC, false);
}

// The screen's answers for x [N, IC] against the full product's, bf16 (or fp32) screen,
// with the states' codes chosen and with 1 and 2 codes an element: every settled row equal,
// and `unsettled_ok` rows at most left.
static void check_kind(const float *w, const float *x, int N, int V, int IC, int unsettled_ok, const char *what,
                       bool fp32) {
    head_screen *s = fp32 ? head_screen_new_fp32(w, V, IC) : head_screen_new(w, V, IC);
    CHECK_MSG(s, "%s: no screen", what);
    if (!s) return;
    const char *kind = fp32 ? "fp32" : "bf16";
    int32_t *top = malloc(sizeof(int32_t) * (size_t)N), *want = malloc(sizeof(int32_t) * (size_t)N);
    full_argmax_of(want, w, x, N, V, IC, fp32);
    for (int codes = 0; codes <= 2; codes++) {
        head_screen_state_codes(s, codes);
        for (int n = 0; n < N; n++) top[n] = -7;
        int left = head_screen_argmax(s, w, x, N, top), minus = 0;
        for (int n = 0; n < N; n++) {
            minus += top[n] == -1;
            CHECK_MSG(top[n] == -1 || top[n] == want[n], "%s, %s, codes %d: row %d of %d: screen %d, full product %d",
                      what, kind, codes, n, N, top[n], want[n]);
        }
        CHECK_MSG(left == minus && left <= unsettled_ok, "%s, %s, codes %d: %d rows left (%d marked), %d allowed",
                  what, kind, codes, left, minus, unsettled_ok);
    }
    free(top), free(want);
    head_screen_free(s);
}

static void check_against_full(const float *w, const float *x, int N, int V, int IC, int unsettled_ok,
                               const char *what) {
    check_kind(w, x, N, V, IC, unsettled_ok, what, false);
    check_kind(w, x, N, V, IC, unsettled_ok, what, true);
}

static head_screen *probe(void) {
    float w[4] = {1, 2, 3, 4};
    return head_screen_new(w, 1, 4);
}

#define NEED_SCREEN()                                                            \
    do {                                                                         \
        head_screen *p_ = probe();                                               \
        if (!p_) SKIP("no AVX-512 VNNI on this CPU: the screen is never made"); \
        head_screen_free(p_);                                                    \
    } while (0)

// linear_w16_outputs equals linear_forward_w16 bit for bit, and linear_rows_outputs
// linear_forward_rows, rows in any order (permuted, and 7 apart modulo OC: repeats).
static void test_outputs_are_the_product(void) {
    if (!have_avx512()) SKIP("no AVX-512: linear_forward_w16 takes its plain-C path");
    const int shapes[][2] = {{1, 1}, {7, 3}, {70, 33}, {576, 100}, {1000, 17}};
    for (int fp32 = 0; fp32 < 2; fp32++)
        for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
            int IC = shapes[c][0], OC = shapes[c][1];
            float *w = random_matrix(OC, IC, 0.05), *x = random_matrix(1, IC, 1.0);
            uint16_t *wp = malloc(sizeof(uint16_t) * w16_packed_elems(IC, OC));
            float *full = malloc(sizeof(float) * (size_t)OC), *some = malloc(sizeof(float) * (size_t)OC);
            int32_t *rows = malloc(sizeof(int32_t) * (size_t)OC);
            for (int i = 0; i < OC; i++) rows[i] = fp32 ? (i * 7) % OC : OC - 1 - i, some[i] = NAN;
            if (fp32) {
                CHECK(linear_forward_rows(full, x, w, NULL, 1, IC, OC));
                CHECK(linear_rows_outputs(some, x, w, rows, OC, IC));
            } else {
                w16_pack(wp, w, IC, OC);
                linear_forward_w16(full, x, wp, NULL, 1, IC, OC);
                CHECK(linear_w16_outputs(some, x, w, rows, OC, IC));
            }
            int differ = 0;
            for (int i = 0; i < OC; i++) differ += memcmp(&some[i], &full[rows[i]], sizeof(float)) != 0;
            CHECK_MSG(!differ, "%s IC %d OC %d: %d of %d outputs differ from the product's bits",
                      fp32 ? "fp32" : "bf16", IC, OC, differ, OC);
            free(w), free(x), free(wp), free(full), free(some), free(rows);
        }
}

// Random heads (V not a multiple of 16, IC not of 4) and 1..19 tokens (groups of 8 and
// partial ones): every row settled, the same index as the full product; the screen keeps
// a few rows a token, not the vocabulary.
static void test_random_heads(void) {
    NEED_SCREEN();
    const int shapes[][2] = {{1000, 70}, {4099, 576}, {33, 5}, {16, 4}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int V = shapes[c][0], IC = shapes[c][1];
        float *w = random_matrix(V, IC, 0.02);
        for (int N = 1; N <= 19; N += 6) {
            float *x = random_matrix(N, IC, 1.0);
            char what[64];
            snprintf(what, sizeof what, "V %d IC %d N %d", V, IC, N);
            check_against_full(w, x, N, V, IC, 0, what);
            if (V >= 1000) {
                head_screen *s = head_screen_new(w, V, IC);
                int32_t top[19];
                head_screen_argmax(s, w, x, N, top);
                long kept = head_screen_last_candidates(s);
                CHECK_MSG(kept >= N && kept <= (long)N * V / 20, "%s: %ld rows computed exactly", what, kept);
                head_screen_free(s);
            }
            free(x);
        }
        free(w);
    }
}

// Every logit negative, V not a multiple of 16: the rows past V (zeros in the last panel)
// never count as logits of 0.
static void test_negative_logits(void) {
    NEED_SCREEN();
    const int V = 1003, IC = 48;
    float *w = random_matrix(V, IC, 0.002), *x = random_matrix(2, IC, 1.0);
    for (int v = 0; v < V; v++)
        for (int k = 0; k < IC; k++) w[(size_t)v * IC + k] -= 0.05f * x[k] * (1.0f + (float)v / V);
    check_against_full(w, x, 1, V, IC, 0, "every logit negative");
    free(w), free(x);
}

// The largest logit at several rows (copies of one row): the first of them wins, whether
// the first copy comes before or after the original.
static void test_equal_maxima(void) {
    NEED_SCREEN();
    const int V = 700, IC = 96;
    float *w = random_matrix(V, IC, 0.02), *x = random_matrix(1, IC, 1.0);
    for (int k = 0; k < IC; k++) w[(size_t)300 * IC + k] = x[k] * 0.05f;  // row 300 points along x: the largest
    const int copies[] = {301, 650, 699, 12};
    for (int i = 0; i < 4; i++) {
        memcpy(w + (size_t)copies[i] * IC, w + (size_t)300 * IC, sizeof(float) * IC);
        check_against_full(w, x, 1, V, IC, 0, "copies of the best row");
    }
    head_screen *s = head_screen_new(w, V, IC);
    int32_t top = -1;
    CHECK(s && head_screen_argmax(s, w, x, 1, &top) == 0 && top == 12);
    head_screen_free(s);
    free(w), free(x);
}

// 200 rows a little apart (less than an int8 step of the row, so the codes rank them
// wrongly or not at all) around the best direction: the exact products decide.
static void test_rows_closer_than_codes(void) {
    NEED_SCREEN();
    const int V = 1200, IC = 128;
    float *x = random_matrix(3, IC, 1.0), *w = random_matrix(V, IC, 0.02);
    for (int n = 0; n < 3; n++) {
        for (int v = 0; v < 200; v++) {
            int row = 100 + v * 5;
            for (int k = 0; k < IC; k++)
                w[(size_t)row * IC + k] =
                    x[(size_t)n * IC + k] * 0.03f * (1.0f + (float)(test_uniform() - 0.5) * 4e-3f);
        }
        check_against_full(w, x + (size_t)n * IC, 1, V, IC, 0, "rows closer than the codes");
    }
    free(x), free(w);
}

// Two rows whose codes rank them one way and whose exact products the other, by less than
// one bound term each, all else exact: (a) the weights' rounding decides (the state's codes
// exact), (b) the state's rounding decides (the rows' codes exact). Row 1 is the larger;
// a screen whose bound missed the deciding term would keep only row 0. Scales are powers
// of 2 and codes small, so every weight is a bf16 and every code as written here.
static void test_bounds_decide(void) {
    NEED_SCREEN();
    enum { IC = 16 };
    const float s = 0x1p-10f, sx = 0x1p-7f;  // the rows' scale (max |w| = 127 s) and the state's (max |x| = 127 sx)
    float w[2 * IC], x[IC];
    int qb[IC], r[IC];
    for (int k = 0; k < IC; k++) qb[k] = (int)(test_rand() % 7) - 3, r[k] = (int)(test_rand() % 201) - 100;
    qb[0] = 127, r[IC - 1] = 127;  // each side's largest element, untouched below
    // (a) x = sx r exactly; row 1 = row 0 + s t: t = -17/32 at the last input (its code
    // drops by one: the screen ranks row 1 lower by s sx 127), +-15/32 along x elsewhere
    // (codes unchanged; the exact product gains s sx 15/32 sum |r|).
    for (int k = 0; k < IC; k++) {
        x[k] = sx * (float)r[k];
        float t = k == IC - 1 ? -17.0f / 32 : k == 0 ? 0 : (r[k] >= 0 ? 15.0f : -15.0f) / 32;
        w[k] = s * (float)qb[k], w[IC + k] = s * ((float)qb[k] + t);
    }
    double gain = 0;
    for (int k = 1; k < IC - 1; k++) gain += 15.0 / 32 * abs(r[k]);
    CHECK(gain > 17.0 / 32 * 127);
    check_against_full(w, x, 1, 2, IC, 0, "the weights' rounding decides");
    int32_t top = -1;
    head_screen *hs = head_screen_new(w, 2, IC);
    for (int codes = 1; codes <= 2; codes++) {
        head_screen_state_codes(hs, codes);
        top = -1;
        CHECK(hs && head_screen_argmax(hs, w, x, 1, &top) == 0 && top == 1 && head_screen_last_candidates(hs) == 2);
    }
    head_screen_free(hs);
    // (b) rows exact (row 1's codes +1 at inputs 1, 2 and -1 at 3, 4); x = sx (r + d), d =
    // +0.49 at 1, 2 and -0.49 at 3, 4 with r1 + r2 - r3 - r4 = -1: the screen ranks row 1
    // lower by s sx, the exact product higher by s sx 0.96.
    r[1] = 10, r[2] = 20, r[3] = 15, r[4] = 16;
    for (int k = 0; k < IC; k++) {
        float d = k == 1 || k == 2 ? 0.49f : k == 3 || k == 4 ? -0.49f : 0;
        x[k] = sx * ((float)r[k] + d);
        w[k] = s * (float)qb[k], w[IC + k] = s * (float)(qb[k] + (k == 1 || k == 2) - (k == 3 || k == 4));
    }
    check_against_full(w, x, 1, 2, IC, 0, "the state's rounding decides");
    hs = head_screen_new(w, 2, IC);
    head_screen_state_codes(hs, 1);
    CHECK(hs && head_screen_argmax(hs, w, x, 1, &top) == 0 && top == 1 && head_screen_last_candidates(hs) == 2);
    // (c) the same with two codes an element, at 1/128 the scale: x = sx (r + (r2 + d) /
    // 128), the codes r + r2 / 128 summing to -1/128 over inputs 1..4 with row 1's signs
    // and d = +-0.49 as in (b); row 1's codes differ by 10 there, x[0] is 0 and the rest of
    // x small, so the gap (10 s sx / 128) stands clear of the fp32 sum's own term.
    const double c[5] = {0, 10, 20, 15, 15 + 1.0 / 128}, d[5] = {0, 0.49, 0.49, -0.49, -0.49};
    for (int k = 0; k < IC; k++) {
        double xk = k == 0 ? 0 : k == IC - 1 ? 127 : k <= 4 ? c[k] + d[k] / 128 : (double)(r[k] / 5);
        x[k] = (float)(sx * xk);
        w[IC + k] = s * (float)(qb[k] + 10 * ((k == 1 || k == 2) - (k == 3 || k == 4)));
    }
    check_against_full(w, x, 1, 2, IC, 0, "the state's second codes' rounding decides");
    head_screen_state_codes(hs, 2);
    CHECK(head_screen_argmax(hs, w, x, 1, &top) == 0 && top == 1 && head_screen_last_candidates(hs) == 2);
    head_screen_free(hs);
}

// Three rows whose order the second codes decide, x exactly r + r2 / 128 in units of its
// scale (so with two codes the screened logits are the exact ones): row 0 = s (127 e0 +
// e1), row 1 = s (127 e0 + 2 e2 - e3), row 2 = 4 s 127 e0, against x1 = 6 - 51/128, x2 = 5
// + 51/128, x3 = 5 - 51/128, x0 = 0, ten inputs of 60/128 and one of 127: exact logits
// 5.60, 6.20 and 0 (s sx). The first codes alone rank row 0 (6) over row 1 (5); the second
// codes' sum (549) offset by 128 would lift row 2, whose scale is 4x.
static void test_second_codes_decide(void) {
    NEED_SCREEN();
    enum { IC = 16 };
    const float s = 0x1p-10f, sx = 0x1p-7f;
    float w[3 * IC] = {0}, x[IC] = {0};
    w[0] = w[IC] = 127 * s, w[2 * IC] = 4 * 127 * s;
    w[1] = s, w[IC + 2] = 2 * s, w[IC + 3] = -s;
    x[1] = sx * (6 - 51.0f / 128), x[2] = sx * (5 + 51.0f / 128), x[3] = sx * (5 - 51.0f / 128), x[15] = sx * 127;
    for (int k = 4; k < 14; k++) x[k] = sx * 60.0f / 128;
    check_against_full(w, x, 1, 3, IC, 0, "the second codes decide");
    head_screen *hs = head_screen_new(w, 3, IC);
    int32_t top = -1;
    head_screen_state_codes(hs, 2);
    CHECK(hs && head_screen_argmax(hs, w, x, 1, &top) == 0 && top == 1 && head_screen_last_candidates(hs) == 1);
    head_screen_free(hs);
}

// A state with a few dimensions 20x the rest (as trained models' hidden states have): the
// screen takes two codes an element, and they keep far fewer rows than one code does.
static void test_outlying_state(void) {
    NEED_SCREEN();
    const int V = 4000, IC = 256, N = 4;
    float *w = random_matrix(V, IC, 0.02), *x = random_matrix(N, IC, 1.0);
    for (int n = 0; n < N; n++) x[(size_t)n * IC + 3] = 40, x[(size_t)n * IC + 100] = -30;
    check_against_full(w, x, N, V, IC, 0, "outlying state dimensions");
    head_screen *s = head_screen_new(w, V, IC);
    int32_t top[4];
    CHECK(head_screen_argmax(s, w, x, N, top) == 0 && head_screen_last_fine(s));
    long two = head_screen_last_candidates(s);
    head_screen_state_codes(s, 1);
    CHECK(head_screen_argmax(s, w, x, N, top) == 0 && !head_screen_last_fine(s));
    long one = head_screen_last_candidates(s);
    CHECK_MSG(two < one && two <= 20 * N, "rows computed exactly: %ld with two codes, %ld with one", two, one);
    head_screen_free(s);
    free(w), free(x);
}

// Large and small magnitudes: settled rows are right wherever the bounds hold; heads of
// tiny weights against tiny states (logits near float's smallest normals) may be left.
static void test_magnitudes(void) {
    NEED_SCREEN();
    const int V = 600, IC = 64;
    const double scales[][2] = {{1e-3, 1e4}, {1e3, 1e-3}, {1e-30, 1.0}, {1e-20, 1e-19}, {1e15, 1e15}};
    for (size_t c = 0; c < sizeof scales / sizeof *scales; c++) {
        float *w = random_matrix(V, IC, scales[c][0]), *x = random_matrix(4, IC, scales[c][1]);
        char what[64];
        snprintf(what, sizeof what, "weights ~%g, states ~%g", scales[c][0], scales[c][1]);
        check_against_full(w, x, 4, V, IC, c == 3 ? 4 : 0, what);
        free(w), free(x);
    }
}

// Rows it must leave: a zero state (every logit 0: all rows tie), NaN or inf in a state;
// the rows beside them are still settled.
static void test_left_rows(void) {
    NEED_SCREEN();
    const int V = 900, IC = 40;
    float *w = random_matrix(V, IC, 0.02), *x = random_matrix(4, IC, 1.0);
    memset(x + IC, 0, sizeof(float) * IC);
    x[2 * IC + 7] = NAN, x[3 * IC + 39] = -INFINITY;
    head_screen *s = head_screen_new(w, V, IC);
    int32_t top[4], want[4];
    CHECK(s && head_screen_argmax(s, w, x, 4, top) == 3);
    full_argmax(want, w, x, 1, V, IC);
    CHECK(top[0] == want[0] && top[1] == -1 && top[2] == -1 && top[3] == -1);
    head_screen_free(s);
    free(w), free(x);
}

// No screen for heads it cannot bound: a weight that is inf (or becomes inf in bf16).
static void test_no_screen(void) {
    NEED_SCREEN();
    float *w = random_matrix(50, 8, 0.02);
    w[77] = INFINITY;
    CHECK(head_screen_new(w, 50, 8) == NULL);
    w[77] = 3.4e38f;  // rounds to bf16 inf
    CHECK(head_screen_new(w, 50, 8) == NULL);
    w[77] = NAN;
    CHECK(head_screen_new(w, 50, 8) == NULL);
    w[77] = 0.5f;
    head_screen *s = head_screen_new(w, 50, 8);
    CHECK(s != NULL && head_screen_bytes(s) >= 64 * 8);
    head_screen_free(s);
    free(w);
}

// The answers do not depend on the thread count.
static void test_threads(void) {
    NEED_SCREEN();
    const int V = 3000, IC = 200, N = 9;
    float *w = random_matrix(V, IC, 0.02), *x = random_matrix(N, IC, 1.0);
    head_screen *s = head_screen_new(w, V, IC);
    int32_t one[9], many[9];
    int was = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK(head_screen_argmax(s, w, x, N, one) == 0);
    omp_set_num_threads(3);
    CHECK(head_screen_argmax(s, w, x, N, many) == 0);
    omp_set_num_threads(was);
    CHECK(!memcmp(one, many, sizeof one));
    head_screen_free(s);
    free(w), free(x);
}

int main(void) {
    RUN(test_outputs_are_the_product);
    RUN(test_random_heads);
    RUN(test_negative_logits);
    RUN(test_equal_maxima);
    RUN(test_rows_closer_than_codes);
    RUN(test_bounds_decide);
    RUN(test_second_codes_decide);
    RUN(test_outlying_state);
    RUN(test_magnitudes);
    RUN(test_left_rows);
    RUN(test_no_screen);
    RUN(test_threads);
    return TEST_SUMMARY();
}
