// The bf16-weight linear forward (kernels/cpu/linear_bf16.h): rounding to bf16 against a
// reference written here (ties, NaN, inf, subnormals, overflow); linear_forward_w16 and its
// plain-C path against linear_forward on the widened weights at the model's shapes and odd
// ones, with and without bias, into NaN-poisoned outputs, with NaN placed after every input
// buffer; bits independent of the thread count and of the other rows of x.
#include "cpu/linear_bf16.h"
#include "ops.h"
#include "test.h"

#include <omp.h>
#include <stdint.h>

// ---- helpers ----

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float widen(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// The bf16 nearest to f by distance in double, ties to the even one; past the largest
// bf16 the next step up is 2^128, which rounds to inf. NaN: a NaN.
static uint16_t ref_bf16(float f) {
    uint32_t u = f32_bits(f);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);  // toward zero, away from zero
    if ((u & 0xffff) == 0) return lo;
    double a = fabs((double)f), dlo = a - fabs((double)widen(lo));
    double hi_mag = (hi & 0x7fff) == 0x7f80 ? ldexp(1, 128) : fabs((double)widen(hi));
    double dhi = hi_mag - a;
    if (dlo != dhi) return dlo < dhi ? lo : hi;
    return (lo & 1) ? hi : lo;
}

static float *falloc(size_t n) { return malloc(sizeof(float) * (n ? n : 1)); }

static void fill(float *p, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * test_uniform());
}

static void poison(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

// max |got - want| / max |want|; infinite when got has a NaN or inf where want has not.
static double rel_err(const float *got, const float *want, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && isfinite(want[i])) return INFINITY;
        scale = fmax(scale, fabs(want[i]));
        worst = fmax(worst, fabs((double)got[i] - want[i]));
    }
    return scale > 0 ? worst / scale : worst;
}

// ---- rounding ----

static void check_rounding(const float *src, size_t n, const char *what) {
    uint16_t *got = malloc(sizeof(uint16_t) * n);
    weights_to_bf16(got, src, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t want = ref_bf16(src[i]);
        bool ok = isnan(src[i]) ? isnan(widen(got[i])) && (got[i] >> 15) == (want >> 15) : got[i] == want;
        if (!ok && bad++ < 5)
            fprintf(stderr, "  %s: 0x%08x -> 0x%04x, want 0x%04x\n", what, f32_bits(src[i]), got[i], want);
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu wrong", what, bad, n);
    free(got);
}

static void test_round_special(void) {
    static const uint32_t v[] = {
        0x00000000, 0x80000000,                          // ±0
        0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001,  // 1; ties to even (down, up); just above a tie
        0x3f807fff, 0xbf808000, 0xbf818000,              // just below a tie; negative ties
        0x7f800000, 0xff800000,                          // ±inf
        0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001,  // quiet NaNs; NaNs with payload only in the low half
        0x7fffffff, 0x7f80ffff,
        0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x7f7f7fff,  // largest float -> inf; the largest bf16's tie -> inf
        0x7f7e8000,                                      // a tie below it, to even (down)
        0x00000001, 0x80000001, 0x00008000, 0x00018000,  // subnormals: tiny -> 0; ties to even
        0x00008001, 0x007fffff, 0x00800000, 0x807fffff,  // rounding up into the smallest normal
    };
    enum { n = sizeof v / sizeof v[0] };
    float f[n];
    for (int i = 0; i < n; i++) f[i] = bits_f32(v[i]);
    check_rounding(f, n, "special values");
    uint16_t h[n];
    weights_to_bf16(h, f, n);
    CHECK(h[1] == 0x8000 && h[2] == 0x3f80 && h[3] == 0x3f80 && h[4] == 0x3f82 && h[5] == 0x3f81);
    CHECK(h[9] == 0x7f80 && h[10] == 0xff80 && h[17] == 0x7f80 && h[18] == 0xff80 && h[19] == 0x7f80);
    CHECK(isnan(widen(h[13])) && isnan(widen(h[14])) && (h[14] & 0x8000));
    CHECK(h[22] == 0 && h[23] == 0x8000 && h[24] == 0 && h[25] == 0x0002 && h[27] == 0x0080);
    // Every length from 0 to 40 at every alignment: the vector loops' tails.
    float buf[48];
    for (int i = 0; i < 48; i++) buf[i] = bits_f32(0x3f808000u + ((uint32_t)i << 16) + (i % 3 ? 1u : 0u));
    for (int off = 0; off < 8; off++)
        for (int len = 0; len <= 40; len++) check_rounding(buf + off, (size_t)len, "short runs");
}

// Every float whose low half is a tie or next to one, for all 65536 high halves (every
// sign, exponent, NaN, inf and subnormal), and a stride through all 2^32 bit patterns.
static void test_round_sweep(void) {
    size_t n = 65536 * 4;
    float *f = falloc(n);
    static const uint32_t lows[4] = {0x7fff, 0x8000, 0x8001, 0x0000};
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (int j = 0; j < 4; j++) f[hi * 4 + j] = bits_f32(hi << 16 | lows[j]);
    check_rounding(f, n, "ties");
    free(f);
    const uint32_t stride = 4099;
    n = 0xffffffffu / stride + 1;
    f = falloc(n);
    for (size_t i = 0; i < n; i++) f[i] = bits_f32((uint32_t)(i * stride));
    check_rounding(f, n, "stride");
    free(f);
}

// ---- packing ----

// Every weight at its documented place (panel o / 32, line k, lane 2c or 2(c - 16) + 1),
// rounded as weights_to_bf16 rounds; zeros past OC; nothing written past the end.
static void test_pack_layout(void) {
    static const int shapes[][2] = {{5, 1}, {7, 31}, {3, 32}, {9, 33}, {1, 70}, {0, 5}};
    for (int s = 0; s < 6; s++) {
        int IC = shapes[s][0], OC = shapes[s][1];
        size_t nw = (size_t)IC * OC, np = w16_packed_elems(IC, OC);
        CHECK(np == (size_t)(OC + 31) / 32 * 32 * IC);
        float *w = falloc(nw);
        fill(w, nw, -3, 3);
        uint16_t *p = malloc(sizeof(uint16_t) * (np + 1));
        p[np] = 0x1234;
        w16_pack(p, w, IC, OC);
        CHECK(p[np] == 0x1234);
        for (size_t panel = 0; panel * 32 < (size_t)OC; panel++)
            for (int k = 0; k < IC; k++)
                for (int c = 0; c < 32; c++) {
                    int o = (int)panel * 32 + c, lane = c < 16 ? 2 * c : 2 * (c - 16) + 1;
                    uint16_t got = p[(panel * IC + k) * 32 + lane];
                    uint16_t want = o < OC ? ref_bf16(w[(size_t)o * IC + k]) : 0;
                    CHECK_MSG(got == want, "IC=%d OC=%d: output %d input %d is %#x, want %#x", IC, OC, o, k, got, want);
                }
        free(w), free(p);
    }
}

// ---- the product ----

typedef void linear_w16_fn(float *out, const float *x, const uint16_t *w, const float *bias, int N, int IC, int OC);

// Inputs for one (IC, OC): bf16 weights packed for linear_forward_w16 with NaN after the
// last one, the same widened to fp32 (row-major, for linear_forward), a bias, and x for up
// to NMAX rows with NaN after its last element.
enum { NMAX = 64, PAD = 64 };
struct weights {
    int IC, OC;
    uint16_t *w16;
    float *w32, *bias, *x;
};

// m->w16 and m->w32 from src [OC, IC] (which becomes the widened copy, m->w32).
static void set_weights(struct weights *m, float *src) {
    size_t nw = (size_t)m->IC * m->OC, np = w16_packed_elems(m->IC, m->OC);
    free(m->w16);
    m->w16 = malloc(sizeof(uint16_t) * (np + PAD));
    w16_pack(m->w16, src, m->IC, m->OC);
    for (int i = 0; i < PAD; i++) m->w16[np + i] = 0x7fc0;  // NaN: a read past the end shows
    uint16_t *h = malloc(sizeof(uint16_t) * (nw ? nw : 1));
    weights_to_bf16(h, src, nw);
    for (size_t i = 0; i < nw; i++) src[i] = widen(h[i]);
    free(h);
    m->w32 = src;
}

static struct weights make_weights(int IC, int OC) {
    struct weights m = {IC, OC, NULL, NULL, NULL, NULL};
    size_t nw = (size_t)IC * OC, nx = (size_t)NMAX * IC;
    float *tmp = falloc(nw);
    fill(tmp, nw, -0.5, 0.5);
    set_weights(&m, tmp);
    m.bias = falloc((size_t)OC + PAD);
    fill(m.bias, (size_t)OC, -1, 1);
    poison(m.bias + OC, PAD);
    m.x = falloc(nx + PAD);
    fill(m.x, nx, -1, 1);
    poison(m.x + nx, PAD);
    return m;
}

static void free_weights(struct weights *m) { free(m->w16), free(m->w32), free(m->bias), free(m->x); }

// fn's out [N, OC] against linear_forward's on the widened weights; x is the last N rows
// of the NMAX, so NaN follows its last element. Returns the relative error.
static double compare(linear_w16_fn *fn, const struct weights *m, int N, bool bias) {
    size_t no = (size_t)N * m->OC;
    const float *x = m->x + (size_t)(NMAX - N) * m->IC, *b = bias ? m->bias : NULL;
    float *got = falloc(no), *want = falloc(no);
    poison(got, no), poison(want, no);
    if (m->IC > 0) linear_forward(want, x, m->w32, b, N, m->IC, m->OC);
    else  // tp_sgemm takes no empty rows
        for (size_t i = 0; i < no; i++) want[i] = b ? b[i % m->OC] : 0;
    fn(got, x, m->w16, b, N, m->IC, m->OC);
    double err = rel_err(got, want, no);
    free(got), free(want);
    return err;
}

// Every (N, IC, OC) of {1, 8, 64, 3} x {576, 1536, 17, 100} x {576, 192, 1536, 49152, 33},
// with and without bias; past 2^24 weights (the 49152-row heads) each N once. The plain-C
// path, slower, each N once (bias on odd positions), and past 2^20 weights at N = 1 only.
static void test_w16_grid(void) {
    static const int Ns[] = {1, 8, 64, 3}, ICs[] = {576, 1536, 17, 100}, OCs[] = {576, 192, 1536, 49152, 33};
    for (int i = 0; i < 4; i++)
        for (int o = 0; o < 5; o++) {
            struct weights m = make_weights(ICs[i], OCs[o]);
            size_t nw = (size_t)ICs[i] * OCs[o];
            for (int n = 0; n < 4; n++)
                for (int b = 0; b < 2; b++) {
                    if (nw > 1u << 24 && b != (n & 1)) continue;
                    double err = compare(linear_forward_w16, &m, Ns[n], b);
                    CHECK_MSG(err <= 1e-5, "N=%d IC=%d OC=%d bias=%d: relative error %.3g", Ns[n], ICs[i], OCs[o],
                              b, err);
                    if (b != (n & 1) || (nw > 1u << 20 && Ns[n] > 1)) continue;
                    err = compare(linear_forward_w16_portable, &m, Ns[n], b);
                    CHECK_MSG(err <= 1e-5, "portable N=%d IC=%d OC=%d bias=%d: relative error %.3g", Ns[n], ICs[i],
                              OCs[o], b, err);
                }
            free_weights(&m);
        }
}

// Every row count 1..NMAX (each tail of the row groups) and every IC and OC tail.
static void test_w16_small_shapes(void) {
    for (int IC = 0; IC <= 40; IC += IC < 4 ? 1 : 7)
        for (int OC = 1; OC <= 9; OC++) {
            struct weights m = make_weights(IC, OC);
            for (int N = 1; N <= NMAX; N += N < 13 ? 1 : 17) {
                double err = compare(linear_forward_w16, &m, N, N & 1);
                CHECK_MSG(err <= 1e-5, "N=%d IC=%d OC=%d: relative error %.3g", N, IC, OC, err);
                err = compare(linear_forward_w16_portable, &m, N, N & 1);
                CHECK_MSG(err <= 1e-5, "portable N=%d IC=%d OC=%d: relative error %.3g", N, IC, OC, err);
            }
            free_weights(&m);
        }
}

// Last panels with 17..31 live columns (the upper half's mask cut short), alone and in the
// 4- and 2-panel passes one and two rows take.
static void test_w16_partial_panels(void) {
    static const int OCs[] = {50, 95, 120, 4127}, Ns[] = {1, 2, 3, 13};
    for (int o = 0; o < 4; o++)
        for (int IC = 17; IC <= 64; IC += 47) {
            struct weights m = make_weights(IC, OCs[o]);
            for (int n = 0; n < 4; n++) {
                double err = compare(linear_forward_w16, &m, Ns[n], n & 1);
                CHECK_MSG(err <= 1e-5, "N=%d IC=%d OC=%d: relative error %.3g", Ns[n], IC, OCs[o], err);
                err = compare(linear_forward_w16_portable, &m, Ns[n], n & 1);
                CHECK_MSG(err <= 1e-5, "portable N=%d IC=%d OC=%d: relative error %.3g", Ns[n], IC, OCs[o], err);
            }
            free_weights(&m);
        }
}

// The shares of T threads (called one after another here) cover the columns in
// contiguous runs of whole panels and write, between them, linear_forward_w16's bits,
// then + residual on each one's own columns: an add after the product, bit for bit.
static void test_w16_share(void) {
    static const int shapes[][2] = {{576, 1536}, {17, 33}, {100, 95}, {40, 5}};
    static const int Ts[] = {1, 2, 3, 5, 40}, Ns[] = {1, 8, 13};
    for (int s = 0; s < 4; s++) {
        int IC = shapes[s][0], OC = shapes[s][1];
        struct weights m = make_weights(IC, OC);
        for (int n = 0; n < 3; n++) {
            int N = Ns[n];
            size_t no = (size_t)N * OC;
            const float *x = m.x + (size_t)(NMAX - N) * IC, *b = n & 1 ? m.bias : NULL;
            float *want = falloc(no), *got = falloc(no), *res = falloc(no);
            fill(res, no, -2, 2);
            linear_forward_w16(want, x, m.w16, b, N, IC, OC);
            for (int k = 0; k < 5; k++)
                for (int with_res = 0; with_res < 2; with_res++) {
                    int T = Ts[k], next = 0;
                    bool runs = true;
                    poison(got, no);
                    for (int t = 0; t < T; t++) {
                        int c0, c1;
                        w16_share_columns(OC, t, T, &c0, &c1);
                        runs = runs && c0 == next && c1 >= c0 && (c1 == OC || c1 % 32 == 0);
                        next = c1;
                        linear_forward_w16_share(got, x, m.w16, b, with_res ? res : NULL, N, IC, OC, t, T);
                    }
                    CHECK_MSG(runs && next == OC, "OC=%d T=%d: the shares' columns are not contiguous runs", OC, T);
                    bool same = true;
                    for (size_t i = 0; i < no; i++) {
                        float w = with_res ? want[i] + res[i] : want[i];
                        same = same && !memcmp(&got[i], &w, sizeof w);
                    }
                    CHECK_MSG(same, "N=%d IC=%d OC=%d T=%d residual=%d: other bits than linear_forward_w16", N, IC,
                              OC, T, with_res);
                }
            free(want), free(got), free(res);
        }
        free_weights(&m);
    }
}

// IC = 0: the bias (or zeros); N = 0 writes nothing.
static void test_w16_degenerate(void) {
    float bias[3] = {1, -2, 3}, out[6], x[1] = {NAN};
    uint16_t w[1] = {0x7fc0};
    poison(out, 6);
    linear_forward_w16(out, x, w, bias, 2, 0, 3);
    CHECK(out[0] == 1 && out[1] == -2 && out[2] == 3 && out[3] == 1 && out[5] == 3);
    linear_forward_w16(out, x, w, NULL, 2, 0, 3);
    CHECK(out[0] == 0 && out[4] == 0);
    poison(out, 6);
    linear_forward_w16(out, x, w, bias, 0, 4, 3);
    CHECK(isnan(out[0]));
}

// A NaN or inf weight spoils its own output column only.
static void test_w16_nonfinite_weight(void) {
    struct weights m = make_weights(100, 10);
    m.w32[3 * 100 + 97] = NAN;       // in row 3, at the end
    m.w32[6 * 100 + 5] = INFINITY;  // in row 6
    set_weights(&m, m.w32);
    float out[4 * 10];
    linear_forward_w16(out, m.x, m.w16, NULL, 4, 100, 10);
    for (int n = 0; n < 4; n++)
        for (int o = 0; o < 10; o++) {
            float v = out[n * 10 + o];
            CHECK_MSG(o == 3 ? isnan(v) : o == 6 ? isinf(v) || isnan(v) : isfinite(v), "row %d column %d: %g", n, o, v);
        }
    free_weights(&m);
}

// ---- bits: thread count, batch ----

// 1, 2 and 3 threads give the same bits (shapes past the parallel threshold with row,
// column and IC tails).
static void check_threads(linear_w16_fn *fn, const char *name) {
    static const int shapes[][3] = {{8, 1000, 1001}, {64, 576, 576}, {3, 1536, 333}, {1, 17, 4097}};
    int saved = omp_get_max_threads();
    for (int s = 0; s < 4; s++) {
        int N = shapes[s][0], IC = shapes[s][1], OC = shapes[s][2];
        struct weights m = make_weights(IC, OC);
        size_t no = (size_t)N * OC;
        float *out[3];
        for (int t = 0; t < 3; t++) {
            out[t] = falloc(no);
            poison(out[t], no);
            omp_set_num_threads(t + 1);
            fn(out[t], m.x, m.w16, m.bias, N, IC, OC);
        }
        omp_set_num_threads(saved);
        CHECK_MSG(!memcmp(out[0], out[1], sizeof(float) * no), "%s N=%d IC=%d OC=%d: 1 vs 2 threads", name, N, IC, OC);
        CHECK_MSG(!memcmp(out[0], out[2], sizeof(float) * no), "%s N=%d IC=%d OC=%d: 1 vs 3 threads", name, N, IC, OC);
        for (int t = 0; t < 3; t++) free(out[t]);
        free_weights(&m);
    }
}

static void test_w16_threads(void) { check_threads(linear_forward_w16, "w16"); }
static void test_portable_threads(void) { check_threads(linear_forward_w16_portable, "portable"); }

// A row's output does not depend on the other rows in the batch: 64 rows at once equal
// each row alone, and every other batch size's rows.
static void check_batch(linear_w16_fn *fn, const char *name) {
    const int IC = 1000, OC = 203;
    struct weights m = make_weights(IC, OC);
    float *all = falloc((size_t)NMAX * OC), *part = falloc((size_t)NMAX * OC);
    fn(all, m.x, m.w16, m.bias, NMAX, IC, OC);
    for (int N = 1; N < NMAX; N++) {
        int n0 = NMAX - N;  // rows n0.. of x, so each row sits at a different place in its group
        fn(part, m.x + (size_t)n0 * IC, m.w16, m.bias, N, IC, OC);
        CHECK_MSG(!memcmp(part, all + (size_t)n0 * OC, sizeof(float) * N * OC), "%s: rows %d.. alone differ", name, n0);
    }
    free(all), free(part);
    free_weights(&m);
}

static void test_w16_batch_invariant(void) { check_batch(linear_forward_w16, "w16"); }
static void test_portable_batch_invariant(void) { check_batch(linear_forward_w16_portable, "portable"); }

int main(void) {
    RUN(test_round_special);
    RUN(test_round_sweep);
    RUN(test_pack_layout);
    RUN(test_w16_grid);
    RUN(test_w16_small_shapes);
    RUN(test_w16_partial_panels);
    RUN(test_w16_share);
    RUN(test_w16_degenerate);
    RUN(test_w16_nonfinite_weight);
    RUN(test_w16_threads);
    RUN(test_portable_threads);
    RUN(test_w16_batch_invariant);
    RUN(test_portable_batch_invariant);
    return TEST_SUMMARY();
}
