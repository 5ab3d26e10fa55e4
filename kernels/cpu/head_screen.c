// head_screen.c — an int8 screen of the output head for greedy decoding (cpu/head_screen.h).
//
// The codes are laid out for vpdpbusd: panels of 16 head rows, a 64-byte line holding 4
// consecutive inputs of each of the 16 rows, [panels][IC4 / 4][16][4], stored as q + 128
// (the instruction multiplies unsigned bytes by signed ones; the token's codes r are the
// signed side, broadcast 4 at a time, and 128 sum(r) is taken off after). A panel is one
// stream through memory, 16 int32 sums a token, exact. Each sum becomes a screened logit
// and its bound; the lower bound goes into the token's running maximum, and the row is
// kept (index and upper bound) only when its upper bound reaches that maximum as it stood:
// a few rows a token, where storing every bound wrote 1.5 MB a batch-8 step.
//
// At SmolLM2-135M's shape (49,152 x 576), 8 tokens, 2 threads of a Xeon, caches flushed:
// the screen 0.65 ms against 2.03 ms for linear_forward_w16's full product (medians of 21).
#include "cpu/head_screen.h"

#include "cpu/linear_bf16.h"
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
enum { KEEP = 1024 };           // rows a thread keeps for a token (above the running bound)

struct head_screen {
    int V, IC, IC4, panels;
    uint8_t *codes;     // [panels][IC4 / 4][ROWS][4]
    float *scale;      // [panels·ROWS]: s, the row's max |w| / 127 (0 past V)
    float *code_norm;  // s ||q||, raised by SLACK, rounded up
    float *rest_norm;  // ||e|| + gamma ||w||, raised by SLACK, rounded up
    // a call's scratch
    int cap_n, cap_threads;
    int8_t *xq;         // [N][IC4]: the tokens' codes r
    float *tok;         // [N][TOK_STATS]
    // [threads][N] of each: the lower bounds' running maxima (by lane, and their max as of
    // a few panels ago), and the rows whose upper bound reached that (index, bound; count,
    // or -1 past KEEP)
    float *lo_max, *lo_run;  // [..][16], [..]
    int32_t *kept;           // [..][KEEP]
    float *kept_hi;          // [..][KEEP]
    int *kept_n;             // [..]
    int32_t *cand;           // [N][HEAD_SCREEN_MAX_CANDIDATES]
    float *exact;            // [N][HEAD_SCREEN_MAX_CANDIDATES]
    long last_candidates;
};

enum { TOK_SCALE, TOK_D, TOK_H, TOK_RSUM, TOK_OK, TOK_STATS };

// Relative slack on the bounds, for the arithmetic that computes them: the per-row and
// per-token numbers are summed in double and kept in float rounded up; the screened
// logits are fp32 (a few roundings of 2^-24 each; this is 2^-20).
static const double SLACK = 1.0 + 0x1p-20;

static float round_up(double x) {
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

#if HAVE_X86
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

static bool have_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
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

// Row v's codes and bounds from its bf16 values b16 [IC]; false when one is not finite.
static bool code_row(head_screen *s, const uint16_t *b16, int v, double gamma) {
    uint8_t *panel = s->codes + (size_t)(v / ROWS) * s->IC4 * ROWS;
    int lane = v % ROWS;
    double mx = 0;
    for (int k = 0; k < s->IC; k++) {
        float f = widen(b16[k]);
        if (!isfinite(f)) return false;
        mx = fmax(mx, fabs((double)f));
    }
    double sc = mx / 127, q2 = 0, e2 = 0, w2 = 0;
    for (int k = 0; k < s->IC4; k++) {
        double f = k < s->IC ? (double)widen(b16[k]) : 0;
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

head_screen *head_screen_new(const float *w, int V, int IC) {
    if (!have_vnni() || V <= 0 || IC <= 0 || IC > 65536) return NULL;
    head_screen *s = tp_xcalloc(1, sizeof *s);
    s->V = V, s->IC = IC, s->IC4 = (IC + 3) / 4 * 4, s->panels = (V + ROWS - 1) / ROWS;
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
#pragma omp for schedule(static)
        for (int v = 0; v < V; v++) {
            weights_to_bf16(b16, w + (size_t)v * IC, (size_t)IC);
            bad |= !code_row(s, b16, v, gamma);
        }
        free(b16);
    }
    if (bad) {
        head_screen_free(s);
        return NULL;
    }
    return s;
}

void head_screen_free(head_screen *s) {
    if (!s) return;
    free(s->codes), free(s->scale), free(s->code_norm), free(s->rest_norm);
    free(s->xq), free(s->tok), free(s->lo_max), free(s->lo_run), free(s->kept), free(s->kept_hi), free(s->kept_n);
    free(s->cand), free(s->exact);
    free(s);
}

size_t head_screen_bytes(const head_screen *s) {
    size_t rows = (size_t)s->panels * ROWS;
    return rows * s->IC4 + 3 * rows * sizeof(float);
}

long head_screen_last_candidates(const head_screen *s) { return s->last_candidates; }

static void grow_scratch(head_screen *s, int N, int threads) {
    if (N <= s->cap_n && threads <= s->cap_threads) return;
    int n = N > s->cap_n ? N : s->cap_n, t = threads > s->cap_threads ? threads : s->cap_threads;
    free(s->xq), free(s->tok), free(s->lo_max), free(s->lo_run), free(s->kept), free(s->kept_hi), free(s->kept_n);
    free(s->cand), free(s->exact);
    s->xq = tp_xmalloc((size_t)n * s->IC4);
    s->tok = tp_xmalloc((size_t)n * TOK_STATS * sizeof *s->tok);
    size_t lists = (size_t)t * n;
    s->lo_max = tp_xmalloc(lists * 16 * sizeof *s->lo_max);
    s->lo_run = tp_xmalloc(lists * sizeof *s->lo_run);
    s->kept = tp_xmalloc(lists * KEEP * sizeof *s->kept);
    s->kept_hi = tp_xmalloc(lists * KEEP * sizeof *s->kept_hi);
    s->kept_n = tp_xmalloc(lists * sizeof *s->kept_n);
    s->cand = tp_xmalloc((size_t)n * HEAD_SCREEN_MAX_CANDIDATES * sizeof *s->cand);
    s->exact = tp_xmalloc((size_t)n * HEAD_SCREEN_MAX_CANDIDATES * sizeof *s->exact);
    s->cap_n = n, s->cap_threads = t;
}

// The token's codes r = round(x / s_x) into xq [IC4] and its numbers into st; st[TOK_OK]
// is 0 when x has a value that is not finite.
static void code_token(const head_screen *s, const float *x, int8_t *xq, float *st) {
    double mx = 0;
    bool finite = true;
    for (int k = 0; k < s->IC; k++) finite = finite && isfinite(x[k]), mx = fmax(mx, fabs((double)x[k]));
    double sc = finite ? mx / 127 : 0, d2 = 0, h2 = 0;
    long rsum = 0;
    for (int k = 0; k < s->IC4; k++) {
        double f = k < s->IC && finite ? (double)x[k] : 0;
        long r = sc > 0 ? lrint(f / sc) : 0;
        r = r > 127 ? 127 : r < -127 ? -127 : r;
        double d = f - sc * (double)r;
        d2 += d * d, h2 += f * f, rsum += r;
        xq[k] = (int8_t)r;
    }
    st[TOK_SCALE] = (float)sc, st[TOK_D] = round_up(sqrt(d2) * SLACK), st[TOK_H] = round_up(sqrt(h2) * SLACK);
    st[TOK_RSUM] = (float)rsum;  // exact: |rsum| <= 127 IC <= 2^23
    st[TOK_OK] = finite;
}

#if HAVE_X86
// One thread's running state for its tokens from n0 on (arrays [N] offset by n0).
typedef struct running {
    float *lo_max, *lo_run;
    int32_t *kept;
    float *kept_hi;
    int *kept_n;
} running;

// Rows v0..v0+15 (panel p) for R tokens from n0 on: int32 sums acc [R] of codes into
// screened logits a and bounds b; the lower bounds a - b into each token's running maxima,
// and the rows whose upper bound a + b reaches the token's running bound into its kept
// list. fp32: each of the few roundings is 2^-24 of |a| or b at most, and b gains 2^-20 of
// both (2^-110 besides, for underflow). A NaN bound is kept.
INLINE VNNI void settle_panel(const head_screen *s, const __m512i *acc, int R, int n0, int p, running *run) {
    size_t v0 = (size_t)p * ROWS;
    int live_rows = s->V - (int)v0;
    __mmask16 live = (__mmask16)(live_rows >= 16 ? 0xffff : (1u << live_rows) - 1);
    const __m512 scale = _mm512_loadu_ps(s->scale + v0), code_norm = _mm512_loadu_ps(s->code_norm + v0),
                 rest_norm = _mm512_loadu_ps(s->rest_norm + v0);
    const __m512 slack = _mm512_set1_ps((float)SLACK), tiny = _mm512_set1_ps(0x1p-20f),
                 floor = _mm512_set1_ps(0x1p-110f);
    const __m512i index = _mm512_add_epi32(_mm512_set1_epi32((int)v0),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (int r = 0; r < R; r++) {
        const float *st = s->tok + (size_t)(n0 + r) * TOK_STATS;
        __m512i sum = _mm512_sub_epi32(acc[r], _mm512_set1_epi32(128 * (int32_t)st[TOK_RSUM]));
        __m512 a = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(st[TOK_SCALE]), scale), _mm512_cvtepi32_ps(sum));
        __m512 b = _mm512_fmadd_ps(code_norm, _mm512_set1_ps(st[TOK_D]), _mm512_mul_ps(_mm512_set1_ps(st[TOK_H]), rest_norm));
        b = _mm512_fmadd_ps(b, slack, _mm512_fmadd_ps(_mm512_abs_ps(a), tiny, floor));
        float *lo = run->lo_max + (size_t)r * 16;
        _mm512_storeu_ps(lo, _mm512_mask_max_ps(_mm512_loadu_ps(lo), live, _mm512_loadu_ps(lo), _mm512_sub_ps(a, b)));
        __m512 hi = _mm512_add_ps(a, b);
        __mmask16 keep = _mm512_mask_cmp_ps_mask(live, hi, _mm512_set1_ps(run->lo_run[r]), _CMP_NLT_UQ);
        int *n = &run->kept_n[r];
        if (keep && *n >= 0) {
            int more = __builtin_popcount(keep);
            if (*n + more > KEEP) {
                *n = -1;
                continue;
            }
            _mm512_mask_compressstoreu_epi32(run->kept + (size_t)r * KEEP + *n, keep, index);
            _mm512_mask_compressstoreu_ps(run->kept_hi + (size_t)r * KEEP + *n, keep, hi);
            *n += more;
        }
    }
}

// Software prefetch this far ahead, into L2 (as linear_bf16.c: the hardware prefetchers
// stop at 4 KB pages).
static const size_t PREFETCH_BYTES = 4096;

// Panel p against R tokens' codes from n0 on (R constant in every caller: the loops unroll
// and the R sums stay in registers).
INLINE VNNI void screen_panel(const head_screen *s, int R, int n0, int p, running *run) {
    const uint8_t *panel = s->codes + (size_t)p * s->IC4 * ROWS;
    const int8_t *xq = s->xq + (size_t)n0 * s->IC4;
    __m512i acc[GROUP];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_si512();
    for (int l = 0; l < s->IC4 / 4; l++) {
        const uint8_t *line = panel + (size_t)l * 64;
        _mm_prefetch((const char *)line + PREFETCH_BYTES, _MM_HINT_T1);  // may point past the codes: never faults
        __m512i codes = _mm512_loadu_si512(line);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t four;
            memcpy(&four, xq + (size_t)r * s->IC4 + 4 * l, 4);
            acc[r] = _mm512_dpbusd_epi32(acc[r], codes, _mm512_set1_epi32(four));
        }
    }
    settle_panel(s, acc, R, n0, p, run);
}

// One thread's panels p0..p1-1 against N tokens; its running state from `at` on ([N]
// arrays). Each token's running bound catches up with its lanes' maxima every panel.
VNNI static void screen_panels(const head_screen *s, int N, int p0, int p1, size_t at) {
    for (int n = 0; n < N; n++) {
        s->lo_run[at + n] = -INFINITY, s->kept_n[at + n] = 0;
        _mm512_storeu_ps(s->lo_max + (at + n) * 16, _mm512_set1_ps(-INFINITY));
    }
    for (int p = p0; p < p1; p++)
        for (int n0 = 0; n0 < N; n0 += GROUP) {
            size_t t = at + n0;
            running run = {s->lo_max + t * 16, s->lo_run + t, s->kept + t * KEEP, s->kept_hi + t * KEEP, s->kept_n + t};
            int R = N - n0 < GROUP ? N - n0 : GROUP;
            switch (R) {
            case 1: screen_panel(s, 1, n0, p, &run); break;
            case 2: screen_panel(s, 2, n0, p, &run); break;
            case 3: screen_panel(s, 3, n0, p, &run); break;
            case 4: screen_panel(s, 4, n0, p, &run); break;
            case 5: screen_panel(s, 5, n0, p, &run); break;
            case 6: screen_panel(s, 6, n0, p, &run); break;
            case 7: screen_panel(s, 7, n0, p, &run); break;
            default: screen_panel(s, 8, n0, p, &run); break;
            }
            for (int r = 0; r < R; r++) run.lo_run[r] = _mm512_reduce_max_ps(_mm512_loadu_ps(run.lo_max + r * 16));
        }
}

// Token n's rows whose upper bound reaches M (the largest lower bound), in index order
// (threads' kept lists in thread order), into cand; their count, or -1 when a thread kept
// more than KEEP or there are more than HEAD_SCREEN_MAX_CANDIDATES.
static int candidates(const head_screen *s, int n, int N, int threads, float M, int32_t *cand) {
    int count = 0;
    for (int t = 0; t < threads; t++) {
        size_t list = (size_t)t * N + n;
        int kept = s->kept_n[list];
        if (kept < 0) return -1;
        for (int i = 0; i < kept; i++)
            if (!(s->kept_hi[list * KEEP + i] < M)) {
                if (count == HEAD_SCREEN_MAX_CANDIDATES) return -1;
                cand[count++] = s->kept[list * KEEP + i];
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
    for (int n = 0; n < N; n++)
        code_token(s, x + (size_t)n * s->IC, s->xq + (size_t)n * s->IC4, s->tok + (size_t)n * TOK_STATS);
    int used = threads;  // the threads the region got (at most `threads`): their lists are the ones written
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0) used = nt;
        int p0 = (int)((long)s->panels * t / nt), p1 = (int)((long)s->panels * (t + 1) / nt);
        const char *first = (const char *)(s->codes + (size_t)p0 * s->IC4 * ROWS);
        size_t mine = (size_t)(p1 - p0) * s->IC4 * ROWS;
        for (size_t b = 0; b < PREFETCH_BYTES && b < mine; b += 64) _mm_prefetch(first + b, _MM_HINT_T1);
        screen_panels(s, N, p0, p1, (size_t)t * N);
    }
    int unsettled = 0;
    long total = 0;
#pragma omp parallel for schedule(dynamic) reduction(+ : unsettled, total) if (N > 1)
    for (int n = 0; n < N; n++) {
        float M = -INFINITY;
        for (int t = 0; t < used; t++) M = fmaxf(M, s->lo_run[(size_t)t * N + n]);
        int32_t *cand = s->cand + (size_t)n * HEAD_SCREEN_MAX_CANDIDATES;
        float *exact = s->exact + (size_t)n * HEAD_SCREEN_MAX_CANDIDATES;
        int count = s->tok[(size_t)n * TOK_STATS + TOK_OK] != 0 ? candidates(s, n, N, used, M, cand) : -1;
        top[n] = -1;
        if (count > 0) {
            linear_w16_outputs(exact, x + (size_t)n * s->IC, w, cand, count, s->IC);
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
