// linear_bf16.c — linear forward with bf16 weights (cpu/linear_bf16.h).
//
// The weights are packed in panels of 32 output columns, [ceil(OC/32)][IC][32]: a panel is
// one contiguous stream of IC 64-byte lines, the 32 weights of input k in line k. The
// AVX-512 kernel widens a line to two vectors (the even bf16 shifted up: columns 0..15 of
// the panel; the odd masked: 16..31, which is why a line stores column l at 2l and 16 + l
// at 2l + 1) and multiplies them by x[n][k] broadcast, for up to NMAX = 12 rows of x at
// once: 24 accumulators of 16 output columns. Each output is one fp32 sum over k in order
// (fused multiply-adds), whatever N, the row group it falls in or the thread count.
//
// This replaced tiles of 4 weight rows dotted with x (16 lanes a row, then a shuffle
// tree): the tiles read 4 interleaved streams the hardware prefetchers did not follow, and
// at 8 rows a third of their instructions went to widening weights and summing lanes. On
// 2 cores of a Xeon (tests/bench/bench_linear_bf16.c, weights in memory), a SmolLM2-135M
// decode step's products: 8 rows 18.97 -> 15.01 ms, 64 rows 108.4 -> 92.9 ms, one row
// 12.1 -> 12.0 ms (bound by reading the weights, 23-25 GB/s; oneDNN's fp32 GEMM 26 ms).
#include "cpu/linear_bf16.h"

#include "cpu/cpu_ops.h"
#include "error.h"

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

enum { PANEL = 32, NMAX = 12 };

// Below this many weights one thread does it all: the fork costs more than it saves.
static const long PARALLEL_MIN = 1L << 15;

// ---- rounding and packing ----

static inline uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // carries into the exponent: inf on overflow
    uint32_t quiet = (u >> 16) | 0x40u;  // a NaN whose payload is only in the low half must not become inf
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

// Branch-free so it vectorises: the NaN case is a select, not a branch.
VECTOR_CLONES void weights_to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = round_bf16(src[i]);
}

size_t w16_packed_elems(int IC, int OC) { return (size_t)(OC + PANEL - 1) / PANEL * PANEL * (size_t)(IC > 0 ? IC : 0); }

// Where column c (0..31) of a panel sits in its line.
static inline int lane_of(int c) { return c < PANEL / 2 ? 2 * c : 2 * (c - PANEL / 2) + 1; }

void w16_pack(uint16_t *dst, const float *w, int IC, int OC) {
    int panels = (OC + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) if ((long)OC * IC >= PARALLEL_MIN)
    for (int p = 0; p < panels; p++)
        for (int c = 0; c < PANEL; c++) {
            int o = p * PANEL + c, lane = lane_of(c);
            uint16_t *d = dst + (size_t)p * IC * PANEL + lane;
            for (int k = 0; k < IC; k++) d[(size_t)k * PANEL] = o < OC ? round_bf16(w[(size_t)o * IC + k]) : 0;
        }
}

// Panels p0..p1-1 of W for thread t of T: a contiguous run.
static void share_panels(int OC, int t, int T, int *p0, int *p1) {
    int panels = (OC + PANEL - 1) / PANEL;
    *p0 = (int)((long)panels * t / T), *p1 = (int)((long)panels * (t + 1) / T);
}

// ---- the portable path ----

// out [N, OC] columns p·32.. of one panel: each row's 32 sums in registers or L1 while
// the panel (IC lines) is read once per row.
VECTOR_CLONES static void panel_portable(float *out, const float *x, const uint16_t *wp, const float *bias, int N,
                                         int IC, int OC, int p) {
    float acc[PANEL];
    for (int n = 0; n < N; n++) {
        memset(acc, 0, sizeof acc);
        const float *xn = x + (size_t)n * IC;
        for (int k = 0; k < IC; k++) {
            const uint16_t *line = wp + (size_t)k * PANEL;
            for (int j = 0; j < PANEL; j++) {
                uint32_t u = (uint32_t)line[j] << 16;
                float w;
                memcpy(&w, &u, 4);
                acc[j] += xn[k] * w;
            }
        }
        for (int c = 0; c < PANEL && p * PANEL + c < OC; c++) {
            int o = p * PANEL + c;
            float sum = acc[lane_of(c)];
            out[(size_t)n * OC + o] = bias ? sum + bias[o] : sum;
        }
    }
}

void linear_forward_w16_portable(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC,
                                 int OC) {
    if (N <= 0 || OC <= 0) return;
    int panels = (OC + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static) if ((long)OC * IC >= PARALLEL_MIN)
    for (int p = 0; p < panels; p++)
        panel_portable(out, x, wp + (size_t)p * IC * PANEL, bias, N, IC, OC, p);
}

#if HAVE_X86

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define INLINE static inline __attribute__((always_inline))

// Software prefetch runs this far ahead of the line being read, into L2: without it the
// products at 8 rows took 2x as long (the hardware prefetchers stop at 4 KB pages).
static const size_t PREFETCH_BYTES = 4096;

// out [R, OC] columns of P adjacent panels from o0 on (those below OC) := x [R, IC] ·
// the panels wp [P][IC][32] (+ bias). R and P are constants in every caller, so the loops
// unroll and the 2RP accumulators stay in registers; P > 1 gives one or two rows more
// independent sums to hide the multiply-adds' latency behind (each output's sum is the
// same whatever P).
INLINE AVX512 void panel_rows(float *out, const float *x, const uint16_t *wp, const float *bias, int R, int P,
                              int IC, int OC, int o0) {
    __m512 lo[NMAX], hi[NMAX];  // row n of panel j: columns 0..15 in [j * R + n] of lo, 16..31 of hi
#pragma GCC unroll 12
    for (int i = 0; i < R * P; i++) lo[i] = _mm512_setzero_ps(), hi[i] = _mm512_setzero_ps();
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    const size_t panel = (size_t)IC * PANEL;
    for (int k = 0; k < IC; k++) {
#pragma GCC unroll 4
        for (int j = 0; j < P; j++) {
            const uint16_t *line = wp + j * panel + (size_t)k * PANEL;
            _mm_prefetch((const char *)line + PREFETCH_BYTES, _MM_HINT_T1);  // may point past the weights: never faults
            __m512i raw = _mm512_loadu_si512(line);
            __m512 w_lo = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
            __m512 w_hi = _mm512_castsi512_ps(_mm512_and_si512(raw, odd));
#pragma GCC unroll 12
            for (int n = 0; n < R; n++) {
                __m512 xv = _mm512_set1_ps(x[(size_t)n * IC + k]);
                lo[j * R + n] = _mm512_fmadd_ps(xv, w_lo, lo[j * R + n]);
                hi[j * R + n] = _mm512_fmadd_ps(xv, w_hi, hi[j * R + n]);
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < P; j++) {
        int c0 = o0 + j * PANEL, live = OC - c0;
        __mmask16 m_lo = live >= 16 ? 0xffff : live > 0 ? (__mmask16)((1u << live) - 1) : 0;
        __mmask16 m_hi = live >= 32 ? 0xffff : live > 16 ? (__mmask16)((1u << (live - 16)) - 1) : 0;
        __m512 b_lo = bias ? _mm512_maskz_loadu_ps(m_lo, bias + c0) : _mm512_setzero_ps();
        __m512 b_hi = bias ? _mm512_maskz_loadu_ps(m_hi, bias + c0 + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
        for (int n = 0; n < R; n++) {
            __m512 a = lo[j * R + n], b = hi[j * R + n];
            if (bias) a = _mm512_add_ps(a, b_lo), b = _mm512_add_ps(b, b_hi);
            _mm512_mask_storeu_ps(out + (size_t)n * OC + c0, m_lo, a);
            _mm512_mask_storeu_ps(out + (size_t)n * OC + c0 + 16, m_hi, b);
        }
    }
}

// Every row of x against panels p0..p1-1, NMAX rows at a time (a panel stays in L1 or L2
// between groups); one or two rows go over 4 or 2 panels at once.
AVX512 static void panels_avx512(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC,
                                 int OC, int p0, int p1) {
    const size_t panel = (size_t)IC * PANEL;
#define ROWS(R, P) panel_rows(out + (size_t)n * OC, x + (size_t)n * IC, wp + (size_t)p * panel, bias, R, P, IC, OC, \
                              p * PANEL)
    int p = p0, n = 0;
    if (N <= 2) {
        for (; p + 4 / N <= p1; p += 4 / N) {
            if (N == 1) ROWS(1, 4);
            else ROWS(2, 2);
        }
        for (; p < p1; p++) {
            if (N == 1) ROWS(1, 1);
            else ROWS(2, 1);
        }
        return;
    }
    for (; p < p1; p++) {
        for (n = 0; n + NMAX <= N; n += NMAX) ROWS(NMAX, 1);
        switch (N - n) {
        case 1: ROWS(1, 1); break;
        case 2: ROWS(2, 1); break;
        case 3: ROWS(3, 1); break;
        case 4: ROWS(4, 1); break;
        case 5: ROWS(5, 1); break;
        case 6: ROWS(6, 1); break;
        case 7: ROWS(7, 1); break;
        case 8: ROWS(8, 1); break;
        case 9: ROWS(9, 1); break;
        case 10: ROWS(10, 1); break;
        case 11: ROWS(11, 1); break;
        }
    }
#undef ROWS
}

// Thread t's panels, one contiguous run of them (one stream through memory), whose first
// lines are fetched before the first panel needs them.
static void share_avx512(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC, int OC,
                         int p0, int p1) {
    const char *first = (const char *)(wp + (size_t)p0 * IC * PANEL);
    size_t mine = (size_t)(p1 - p0) * IC * PANEL * sizeof *wp;
    for (size_t b = 0; b < PREFETCH_BYTES && b < mine; b += 64) _mm_prefetch(first + b, _MM_HINT_T1);
    if (p0 < p1) panels_avx512(out, x, wp, bias, N, IC, OC, p0, p1);
}

static void forward_panels(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC, int OC) {
#pragma omp parallel if ((long)OC * IC >= PARALLEL_MIN)
    {
        int p0, p1;
        share_panels(OC, omp_get_thread_num(), omp_get_num_threads(), &p0, &p1);
        share_avx512(out, x, wp, bias, N, IC, OC, p0, p1);
    }
}


static bool have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

#endif  // HAVE_X86

#if HAVE_X86
// linear_w16_outputs with AVX-512: 16 rows in the lanes of one accumulator, their bf16
// weights transposed to [IC][16] first, so each lane runs its own chain k = 0, 1, ..
__attribute__((target("avx512f"))) static void outputs_avx512(float *out, const float *x, const float *w,
                                                              const int32_t *rows, int n, int IC) {
    uint16_t *row16 = tp_xmalloc((size_t)IC * sizeof *row16);
    float *t = tp_xmalloc((size_t)IC * 16 * sizeof *t);
    for (int i0 = 0; i0 < n; i0 += 16) {
        int m = n - i0 < 16 ? n - i0 : 16;
        prefetch_rows_of(w, rows + i0, m, IC);
        for (int j = 0; j < 16; j++) {
            if (j < m) weights_to_bf16(row16, w + (size_t)rows[i0 + j] * IC, (size_t)IC);
            for (int k = 0; k < IC; k++) {
                uint32_t u = j < m ? (uint32_t)row16[k] << 16 : 0;
                memcpy(&t[(size_t)k * 16 + j], &u, 4);
            }
        }
        __m512 acc = _mm512_setzero_ps();
        for (int k = 0; k < IC; k++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(x[k]), _mm512_loadu_ps(t + (size_t)k * 16), acc);
        _mm512_mask_storeu_ps(out + i0, (__mmask16)((1u << m) - 1), acc);
    }
    free(row16), free(t);
}
#endif

bool linear_w16_outputs(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC) {
#if HAVE_X86
    if (have_avx512()) {
        if (n > 0 && IC > 0) outputs_avx512(out, x, w, rows, n, IC);
        return true;
    }
#endif
    (void)out, (void)x, (void)w, (void)rows, (void)n, (void)IC;
    return false;
}


void w16_share_columns(int OC, int t, int T, int *c0, int *c1) {
    int p0, p1;
    share_panels(OC, t, T, &p0, &p1);
    *c0 = p0 * PANEL < OC ? p0 * PANEL : OC, *c1 = p1 * PANEL < OC ? p1 * PANEL : OC;
}

void linear_forward_w16_share(float *out, const float *x, const uint16_t *wp, const float *bias,
                              const float *residual, int N, int IC, int OC, int t, int T) {
    if (N <= 0 || OC <= 0) return;
    int p0, p1, c0, c1;
    share_panels(OC, t, T, &p0, &p1);
    bool done = false;
#if HAVE_X86
    if (have_avx512()) share_avx512(out, x, wp, bias, N, IC, OC, p0, p1), done = true;
#endif
    for (int p = p0; p < p1 && !done; p++) panel_portable(out, x, wp + (size_t)p * IC * PANEL, bias, N, IC, OC, p);
    w16_share_columns(OC, t, T, &c0, &c1);
    if (residual) add_columns(out, residual, N, OC, c0, c1);
}

void linear_forward_w16(float *out, const float *x, const uint16_t *wp, const float *bias, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
#if HAVE_X86
    if (have_avx512()) {
        forward_panels(out, x, wp, bias, N, IC, OC);
        return;
    }
#endif
    linear_forward_w16_portable(out, x, wp, bias, N, IC, OC);
}
