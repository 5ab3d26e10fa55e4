// head_screen.c — an int8 screen of the output head for greedy decoding (cpu/head_screen.h).
//
// The codes are laid out for vpdpbusd: panels of 16 head rows, a 64-byte line holding 4
// consecutive inputs of each of the 16 rows, [panels][IC4 / 4][16][4], stored as q + 128
// (the instruction multiplies unsigned bytes by signed ones; the token's codes r are the
// signed side, broadcast 4 at a time, and 128 sum(r) is taken off after). A panel is one
// stream through memory, 16 int32 sums a token, exact. Each sum becomes a screened logit
// and its bound: the upper bound is kept for every row, the lower one as the token's
// running maximum.
//
// A trained model's hidden state has a few dimensions far larger than the rest (SmolLM2's
// largest is ~20x its root mean square), so one int8 code per element rounds the others
// coarsely and the state's term of the bound covers thousands of rows. Then each element
// gets a second code for what the first left, r + r2 / 128 (twice the multiply-adds):
// chosen per call when the state's term would be over twice the weights' for a median row.
//
// At SmolLM2-135M's shape (49,152 x 576), 8 tokens, 2 threads of a Xeon, caches flushed:
// the screen 0.65 ms with one code a state element, 0.91-1.3 with two, against 2.03-2.4 ms
// for linear_forward_w16's full product (medians of 21).
#include "cpu/head_screen.h"

#include "cpu/linear_bf16.h"
#include "cpu/linear_rows.h"
#include "error.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>
#else
#define HAVE_X86 0
#endif

enum { ROWS = 16, GROUP = 8 };  // head rows a panel; tokens a pass over a panel

struct head_screen {
    int V, IC, IC4, panels;
    bool bf16;          // the logits are linear_forward_w16's (W rounded to bf16), else linear_forward_rows's
    uint8_t *codes;     // [panels][IC4 / 4][ROWS][4]
    float *scale;       // [panels·ROWS]: s, the row's max |w| / 127 (0 past V)
    float *code_norm;   // s ||q||, raised by SLACK, rounded up
    float *rest_norm;   // ||e|| + gamma ||w||, raised by SLACK, rounded up
    float code_norm_mid, rest_norm_mid;  // their medians over the rows
    // a call's scratch
    int cap_n, cap_threads;
    int8_t *xq;         // [2][N][IC4]: the tokens' codes r, then the second codes r2
    float *tok;         // [N][TOK_STATS]
    float *hi;          // [N][panels·ROWS]: the upper bounds
    float *lo_max;      // [threads][N][16]: the lower bounds' running maxima
    int32_t *cand;      // [N][HEAD_SCREEN_MAX_CANDIDATES]
    float *exact;       // [N][HEAD_SCREEN_MAX_CANDIDATES]
    long last_candidates;
    bool last_fine;
    int codes_mode;  // 0: choose; 1: one code a state element; 2: two
};

// A token's numbers: the codes' scale; ||d|| with one code and with two; ||x||; sum r;
// sum r2; whether x is finite.
enum { TOK_SCALE, TOK_D1, TOK_D2, TOK_H, TOK_RSUM, TOK_RSUM2, TOK_OK, TOK_STATS };

// Relative slack on the bounds, for the arithmetic that computes them: the per-row and
// per-token numbers are summed in double and kept in float rounded up; the screened
// logits are fp32 (a few roundings of 2^-24 each; this is 2^-20).
static const double SLACK = 1.0 + 0x1p-20;

static float round_up(double x) {
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

#if HAVE_X86
#define VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

static bool have_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#else
static bool have_vnni(void) { return false; }
#endif

static float widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Row v's codes and bounds from its values row [IC]; false when one is not finite.
static bool code_row(head_screen *s, const float *row, int v, double gamma) {
    uint8_t *panel = s->codes + (size_t)(v / ROWS) * s->IC4 * ROWS;
    int lane = v % ROWS;
    double mx = 0;
    for (int k = 0; k < s->IC; k++) {
        if (!isfinite(row[k])) return false;
        mx = fmax(mx, fabs((double)row[k]));
    }
    double sc = mx / 127, q2 = 0, e2 = 0, w2 = 0;
    for (int k = 0; k < s->IC4; k++) {
        double f = k < s->IC ? (double)row[k] : 0;
        long q = sc > 0 ? lrint(f / sc) : 0;
        q = q > 127 ? 127 : q < -127 ? -127 : q;
        double e = f - sc * (double)q;
        q2 += (double)(q * q), e2 += e * e, w2 += f * f;
        panel[(size_t)(k / 4) * ROWS * 4 + lane * 4 + k % 4] = (uint8_t)(q + 128);
    }
    s->scale[v] = (float)sc;  // its rounding is in the screened logit's slack
    s->code_norm[v] = round_up(sc * sqrt(q2) * SLACK);
    s->rest_norm[v] = round_up((sqrt(e2) + gamma * sqrt(w2)) * SLACK);
    return true;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(const float *x, int n) {
    float *c = tp_xmalloc((size_t)n * sizeof *c);
    memcpy(c, x, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, by_value);
    float m = c[n / 2];
    free(c);
    return m;
}

static head_screen *make(const float *w, int V, int IC, bool bf16) {
    if (!have_vnni() || V <= 0 || IC <= 0 || IC > 65536) return NULL;
    head_screen *s = tp_xcalloc(1, sizeof *s);
    s->V = V, s->IC = IC, s->IC4 = (IC + 3) / 4 * 4, s->panels = (V + ROWS - 1) / ROWS, s->bf16 = bf16;
    size_t rows = (size_t)s->panels * ROWS;
    s->codes = tp_xmalloc(rows * s->IC4);
    memset(s->codes, 128, rows * s->IC4);  // rows past V: q = 0
    s->scale = tp_xcalloc(rows, sizeof *s->scale);  // rows past V: s = 0 and no bound
    s->code_norm = tp_xcalloc(rows, sizeof *s->code_norm);
    s->rest_norm = tp_xcalloc(rows, sizeof *s->rest_norm);
    // Recursive fp32 summation with one rounding a step: |error| <= gamma_n sum |x_k w_k|,
    // gamma_n = n u / (1 - n u), u = 2^-24; n = IC + 1 for good measure.
    double nu = (IC + 1.0) * 0x1p-24, gamma = nu / (1 - nu);
    int bad = 0;
#pragma omp parallel reduction(| : bad)
    {
        uint16_t *b16 = tp_xmalloc((size_t)IC * sizeof *b16);
        float *row = tp_xmalloc((size_t)IC * sizeof *row);
#pragma omp for schedule(static)
        for (int v = 0; v < V; v++) {
            const float *wv = w + (size_t)v * IC;
            if (bf16) {
                weights_to_bf16(b16, wv, (size_t)IC);
                for (int k = 0; k < IC; k++) row[k] = widen(b16[k]);
            }
            bad |= !code_row(s, bf16 ? row : wv, v, gamma);
        }
        free(b16), free(row);
    }
    if (bad) {
        head_screen_free(s);
        return NULL;
    }
    s->code_norm_mid = median(s->code_norm, V), s->rest_norm_mid = median(s->rest_norm, V);
    return s;
}

head_screen *head_screen_new(const float *w, int V, int IC) { return make(w, V, IC, true); }
head_screen *head_screen_new_fp32(const float *w, int V, int IC) { return make(w, V, IC, false); }

void head_screen_free(head_screen *s) {
    if (!s) return;
    free(s->codes), free(s->scale), free(s->code_norm), free(s->rest_norm);
    free(s->xq), free(s->tok), free(s->hi), free(s->lo_max), free(s->cand), free(s->exact);
    free(s);
}

size_t head_screen_bytes(const head_screen *s) {
    size_t rows = (size_t)s->panels * ROWS;
    return rows * s->IC4 + 3 * rows * sizeof(float);
}

long head_screen_last_candidates(const head_screen *s) { return s->last_candidates; }

bool head_screen_last_fine(const head_screen *s) { return s->last_fine; }

void head_screen_state_codes(head_screen *s, int codes) { s->codes_mode = codes == 1 || codes == 2 ? codes : 0; }

static void grow_scratch(head_screen *s, int N, int threads) {
    if (N <= s->cap_n && threads <= s->cap_threads) return;
    int n = N > s->cap_n ? N : s->cap_n, t = threads > s->cap_threads ? threads : s->cap_threads;
    size_t rows = (size_t)s->panels * ROWS;
    free(s->xq), free(s->tok), free(s->hi), free(s->lo_max), free(s->cand), free(s->exact);
    s->xq = tp_xmalloc(2 * (size_t)n * s->IC4);
    s->tok = tp_xmalloc((size_t)n * TOK_STATS * sizeof *s->tok);
    s->hi = tp_xmalloc((size_t)n * rows * sizeof *s->hi);
    s->lo_max = tp_xmalloc((size_t)t * n * 16 * sizeof *s->lo_max);
    s->cand = tp_xmalloc((size_t)n * HEAD_SCREEN_MAX_CANDIDATES * sizeof *s->cand);
    s->exact = tp_xmalloc((size_t)n * HEAD_SCREEN_MAX_CANDIDATES * sizeof *s->exact);
    s->cap_n = n, s->cap_threads = t;
}

// The token's codes r = round(x / s_x) into xq [IC4] and r2 = round(128 (x / s_x - r))
// into xq2, and its numbers into st; st[TOK_OK] is 0 when x has a value that is not finite.
static void code_token(const head_screen *s, const float *x, int8_t *xq, int8_t *xq2, float *st) {
    double mx = 0;
    bool finite = true;
    for (int k = 0; k < s->IC; k++) finite = finite && isfinite(x[k]), mx = fmax(mx, fabs((double)x[k]));
    double sc = finite ? mx / 127 : 0, d1 = 0, d2 = 0, h2 = 0;
    long rsum = 0, rsum2 = 0;
    for (int k = 0; k < s->IC4; k++) {
        double f = k < s->IC && finite ? (double)x[k] : 0;
        long r = sc > 0 ? lrint(f / sc) : 0, r2 = 0;
        r = r > 127 ? 127 : r < -127 ? -127 : r;
        if (sc > 0) r2 = lrint((f / sc - (double)r) * 128);
        r2 = r2 > 127 ? 127 : r2 < -127 ? -127 : r2;
        double e1 = f - sc * (double)r, e2 = f - sc * ((double)r + (double)r2 / 128);
        d1 += e1 * e1, d2 += e2 * e2, h2 += f * f, rsum += r, rsum2 += r2;
        xq[k] = (int8_t)r, xq2[k] = (int8_t)r2;
    }
    st[TOK_SCALE] = (float)sc, st[TOK_D1] = round_up(sqrt(d1) * SLACK), st[TOK_D2] = round_up(sqrt(d2) * SLACK);
    st[TOK_H] = round_up(sqrt(h2) * SLACK);
    st[TOK_RSUM] = (float)rsum, st[TOK_RSUM2] = (float)rsum2;  // exact: |sums| <= 127 IC <= 2^23
    st[TOK_OK] = finite;
}

#if HAVE_X86
// Rows v0..v0+15 (panel p) for R tokens from n0 on: the int32 sums acc [R] of the first
// codes (and acc2 of the second, when FINE) into screened logits a and bounds b, the upper
// bounds a + b into hi, the lower a - b into each token's running maxima lo [R][16] (rows
// < V). fp32: each of the few roundings is 2^-24 of |a| or b at most, and b gains 2^-20 of
// both (2^-110 besides, for underflow).
INLINE VNNI void settle_panel(const head_screen *s, const __m512i *acc, const __m512i *acc2, int R, bool FINE,
                              int n0, int p, float *lo) {
    size_t stride = (size_t)s->panels * ROWS, v0 = (size_t)p * ROWS;
    int live_rows = s->V - (int)v0;
    __mmask16 live = (__mmask16)(live_rows >= 16 ? 0xffff : (1u << live_rows) - 1);
    const __m512 scale = _mm512_loadu_ps(s->scale + v0), code_norm = _mm512_loadu_ps(s->code_norm + v0),
                 rest_norm = _mm512_loadu_ps(s->rest_norm + v0);
    const __m512 slack = _mm512_set1_ps((float)SLACK), tiny = _mm512_set1_ps(0x1p-20f),
                 floor = _mm512_set1_ps(0x1p-110f);
    for (int r = 0; r < R; r++) {
        const float *st = s->tok + (size_t)(n0 + r) * TOK_STATS;
        __m512i sum = _mm512_sub_epi32(acc[r], _mm512_set1_epi32(128 * (int32_t)st[TOK_RSUM]));
        __m512 code = _mm512_cvtepi32_ps(sum);
        if (FINE) {
            // sum + sum2 / 128 in double, exactly (38 bits), then rounded once: in fp32 the
            // two terms' own roundings could be most of a small total.
            __m512i sum2 = _mm512_sub_epi32(acc2[r], _mm512_set1_epi32(128 * (int32_t)st[TOK_RSUM2]));
            const __m512d eighth = _mm512_set1_pd(1.0 / 128);
            __m512d lo8 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(sum2)), eighth,
                                          _mm512_cvtepi32_pd(_mm512_castsi512_si256(sum)));
            __m512d hi8 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(sum2, 1)), eighth,
                                          _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(sum, 1)));
            code = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo8)), _mm512_cvtpd_ps(hi8), 1);
        }
        __m512 a = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(st[TOK_SCALE]), scale), code);
        __m512 d = _mm512_set1_ps(FINE ? st[TOK_D2] : st[TOK_D1]);
        __m512 b = _mm512_fmadd_ps(code_norm, d, _mm512_mul_ps(_mm512_set1_ps(st[TOK_H]), rest_norm));
        b = _mm512_fmadd_ps(b, slack, _mm512_fmadd_ps(_mm512_abs_ps(a), tiny, floor));
        _mm512_storeu_ps(s->hi + (size_t)(n0 + r) * stride + v0, _mm512_add_ps(a, b));
        float *lo_r = lo + (size_t)r * 16;
        __m512 lo_was = _mm512_loadu_ps(lo_r);
        _mm512_storeu_ps(lo_r, _mm512_mask_max_ps(lo_was, live, lo_was, _mm512_sub_ps(a, b)));
    }
}

// Software prefetch this far ahead, into L2 (as linear_bf16.c: the hardware prefetchers
// stop at 4 KB pages).
static const size_t PREFETCH_BYTES = 4096;

// acc [R] := the sums over panel (IC4 / 4 lines of 16 rows' codes) of the codes times R
// tokens' codes xq (rows IC4 apart), 4 at a time broadcast. R is constant in every caller:
// the loop unrolls and the R sums stay in registers (at 16 sums, the codes and second codes
// in one loop, GCC stored them all to the stack every line: 1.7 ms a screen, not ~1.1).
INLINE VNNI void panel_sums(__m512i *acc, const uint8_t *panel, const int8_t *xq, int R, int IC4, bool prefetch) {
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_si512();
    for (int l = 0; l < IC4 / 4; l++) {
        const uint8_t *line = panel + (size_t)l * 64;
        // (may point past the codes: a prefetch never faults)
        if (prefetch) _mm_prefetch((const char *)line + PREFETCH_BYTES, _MM_HINT_T1);
        __m512i codes = _mm512_loadu_si512(line);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t four;
            memcpy(&four, xq + (size_t)r * IC4 + 4 * l, 4);
            acc[r] = _mm512_dpbusd_epi32(acc[r], codes, _mm512_set1_epi32(four));
        }
    }
}

// Panel p against R tokens' codes from n0 on, then their second codes when FINE (a second
// pass over the panel, from L1).
INLINE VNNI void screen_panel(const head_screen *s, int R, bool FINE, int N, int n0, int p, float *lo) {
    const uint8_t *panel = s->codes + (size_t)p * s->IC4 * ROWS;
    const int8_t *xq = s->xq + (size_t)n0 * s->IC4;
    __m512i acc[GROUP], acc2[GROUP];
    panel_sums(acc, panel, xq, R, s->IC4, true);
    if (FINE) panel_sums(acc2, panel, xq + (size_t)N * s->IC4, R, s->IC4, false);
    settle_panel(s, acc, acc2, R, FINE, n0, p, lo);
}

VNNI static void screen_panels(const head_screen *s, int N, bool fine, int p0, int p1, float *lo) {
    for (int p = p0; p < p1; p++)
        for (int n0 = 0; n0 < N; n0 += GROUP) {
            float *lo_n = lo + (size_t)n0 * 16;
            int R = N - n0 < GROUP ? N - n0 : GROUP;
#define PANEL(R_) fine ? screen_panel(s, R_, true, N, n0, p, lo_n) : screen_panel(s, R_, false, N, n0, p, lo_n)
            switch (R) {
            case 1: PANEL(1); break;
            case 2: PANEL(2); break;
            case 3: PANEL(3); break;
            case 4: PANEL(4); break;
            case 5: PANEL(5); break;
            case 6: PANEL(6); break;
            case 7: PANEL(7); break;
            default: PANEL(8); break;
            }
#undef PANEL
        }
}

// Token n's rows whose upper bound reaches M (the largest lower bound), in index order,
// into cand; their count, or -1 when there are more than HEAD_SCREEN_MAX_CANDIDATES. A NaN
// bound counts as reaching M.
VNNI static int candidates(const head_screen *s, int n, float M, int32_t *cand) {
    const float *hi = s->hi + (size_t)n * s->panels * ROWS;
    const __m512 mv = _mm512_set1_ps(M);
    int count = 0;
    for (int j = 0; j < s->V; j += 16) {
        __mmask16 live = (__mmask16)(s->V - j >= 16 ? 0xffff : (1u << (s->V - j)) - 1);
        __mmask16 in = _mm512_mask_cmp_ps_mask(live, _mm512_loadu_ps(hi + j), mv, _CMP_NLT_UQ);
        for (; in; in &= (__mmask16)(in - 1)) {
            if (count == HEAD_SCREEN_MAX_CANDIDATES) return -1;
            cand[count++] = j + __builtin_ctz(in);
        }
    }
    return count;
}
#endif

int head_screen_argmax(head_screen *s, const float *w, const float *x, int N, int32_t *top) {
    s->last_candidates = 0;
    if (N <= 0) return 0;
#if HAVE_X86
    int threads = omp_get_max_threads();
    grow_scratch(s, N, threads);
    // Second codes when, for some token, one code's term of a median row's bound would be
    // over twice the weights' (a heuristic for speed: the bounds hold either way). Random
    // states and heads give ~1 (one code: 0.65 ms, ~10 rows a token computed exactly, at
    // SmolLM2's shape), SmolLM2's own ~3.8 (one code kept thousands of rows).
    bool fine = false;
    for (int n = 0; n < N; n++) {
        float *st = s->tok + (size_t)n * TOK_STATS;
        code_token(s, x + (size_t)n * s->IC, s->xq + (size_t)n * s->IC4, s->xq + (size_t)(N + n) * s->IC4, st);
        fine = fine || st[TOK_D1] * s->code_norm_mid > 2 * st[TOK_H] * s->rest_norm_mid;
    }
    if (s->codes_mode) fine = s->codes_mode == 2;
    s->last_fine = fine;
    for (size_t i = 0; i < (size_t)threads * N * 16; i++) s->lo_max[i] = -INFINITY;
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int p0 = (int)((long)s->panels * t / nt), p1 = (int)((long)s->panels * (t + 1) / nt);
        const char *first = (const char *)(s->codes + (size_t)p0 * s->IC4 * ROWS);
        size_t mine = (size_t)(p1 - p0) * s->IC4 * ROWS;
        for (size_t b = 0; b < PREFETCH_BYTES && b < mine; b += 64) _mm_prefetch(first + b, _MM_HINT_T1);
        screen_panels(s, N, fine, p0, p1, s->lo_max + (size_t)t * N * 16);
    }
    int unsettled = 0;
    long total = 0;
#pragma omp parallel for schedule(dynamic) reduction(+ : unsettled, total) if (N > 1)
    for (int n = 0; n < N; n++) {
        float M = -INFINITY;
        for (int t = 0; t < threads; t++)
            for (int i = 0; i < 16; i++) M = fmaxf(M, s->lo_max[((size_t)t * N + n) * 16 + i]);
        int32_t *cand = s->cand + (size_t)n * HEAD_SCREEN_MAX_CANDIDATES;
        float *exact = s->exact + (size_t)n * HEAD_SCREEN_MAX_CANDIDATES;
        int count = s->tok[(size_t)n * TOK_STATS + TOK_OK] != 0 ? candidates(s, n, M, cand) : -1;
        top[n] = -1;
        if (count > 0) {
            if (s->bf16) linear_w16_outputs(exact, x + (size_t)n * s->IC, w, cand, count, s->IC);
            else linear_rows_outputs(exact, x + (size_t)n * s->IC, w, cand, count, s->IC);
            int best = 0;
            bool finite = true;
            for (int i = 0; i < count; i++) {
                finite = finite && isfinite(exact[i]);
                if (exact[i] > exact[best]) best = i;
            }
            if (finite) top[n] = cand[best];
            total += count;
        }
        unsettled += top[n] < 0;
    }
    s->last_candidates = total;
    return unsettled;
#else
    (void)w, (void)x;
    for (int n = 0; n < N; n++) top[n] = -1;
    return N;
#endif
}
