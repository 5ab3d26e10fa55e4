// linear_rows.c — nn.Linear forward for a few rows of x with fp32 weights in their own
// [OC, IC] layout (cpu/linear_rows.h): the decode step's products.
//
// A decode step multiplies every weight by a handful of rows, so it is bound by reading
// the weights; the BLAS (oneDNN 2.6 here) read them at half the machine's bandwidth at 8
// rows and a quarter for the 49,152-row head. Here tiles of R = 4 weight rows are read
// once and stay in L1 while groups of up to CMAX = 6 rows of x pass over them: 24
// accumulators of 16 lanes, 4 weight vectors and an x vector in the 32 zmm registers.
// Lane l of an accumulator sums the products at k = l mod 16 in order, and the lanes are
// summed by one shuffle tree (reduce4), so no output's bits depend on N, on the group or
// tile it falls in, or on the thread count.
#include "cpu/linear_rows.h"

#include "cpu/cpu_ops.h"

#include <stdbool.h>
#include <stdint.h>
#include <omp.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>
#else
#define HAVE_X86 0
#endif

#if HAVE_X86

enum { R = 4, CMAX = 6 };

// Below this many weights one thread does it all: the fork costs more than it saves.
static const long PARALLEL_MIN = 1L << 15;

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define INLINE static inline __attribute__((always_inline))

// Software prefetch runs at least this far ahead of the tile being read, in whole tiles:
// the hardware prefetchers stop at 4 KB pages, and a tile's 4 rows are 4 streams.
static const size_t PREFETCH_BYTES = 4096;

// [sum v0, sum v1, sum v2, sum v3], every sum by the same tree (lanes j + 8, then + 4, + 2,
// + 1 apart), so an output's bits do not depend on which accumulators it was reduced with.
AVX512 INLINE __m128 reduce4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    // [v0 halves summed (8) | v1 halves summed (8)], the same for v2, v3
    __m512 a = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xee));
    __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xee));
    // quarter i: vi's 8 partial sums folded to 4
    __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd));
    __m512 d = _mm512_add_ps(c, _mm512_permute_ps(c, 0x4e));  // [c0+c2, c1+c3, ..] per quarter
    __m512 e = _mm512_add_ps(d, _mm512_permute_ps(d, 0xb1));  // element 0 of quarter i: sum vi
    const __m512i firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, e));
}

// One group of C rows of x [C, IC] against the tile w[0..3] [IC]: out [C, OC] columns 0..3
// (those in `live`) := the products (+ bias [4]). C is a constant in every caller, so the
// loops unroll and the accumulators stay in registers. pf: prefetch each row pf elements
// ahead (0: none).
AVX512 INLINE void tile(float *out, const float *x, const float *const w[R], const float *bias, int C, int IC, int OC,
                        __mmask8 live, size_t pf) {
    __m512 acc[R][CMAX];
#pragma GCC unroll 6
    for (int c = 0; c < C; c++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r][c] = _mm512_setzero_ps();
    for (int k = 0; k < IC; k += 16) {
        __mmask16 m = IC - k >= 16 ? 0xffff : (__mmask16)((1u << (IC - k)) - 1);
        __m512 wv[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (pf) {
                uintptr_t p = (uintptr_t)(w[r] + k) + 4 * (uintptr_t)pf;  // an integer: may point past the weights
                _mm_prefetch((const char *)p, _MM_HINT_T1);
            }
            wv[r] = _mm512_maskz_loadu_ps(m, w[r] + k);
        }
#pragma GCC unroll 6
        for (int c = 0; c < C; c++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)c * IC + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv, wv[r], acc[r][c]);
        }
    }
    __m128 b = bias ? _mm_maskz_loadu_ps(live, bias) : _mm_setzero_ps();
#pragma GCC unroll 6
    for (int c = 0; c < C; c++) {
        __m128 s = reduce4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]);
        if (bias) s = _mm_add_ps(s, b);
        _mm_mask_storeu_ps(out + (size_t)c * OC, live, s);
    }
}

// Every row of x against one tile, CMAX rows at a time; the first group prefetches ahead.
AVX512 static void tile_rows(float *out, const float *x, const float *const w[R], const float *bias, int N, int IC,
                             int OC, __mmask8 live, size_t pf) {
    int n = 0;
#define G(C) tile(out + (size_t)n * OC, x + (size_t)n * IC, w, bias, C, IC, OC, live, pf)
    for (; n + CMAX <= N; n += CMAX, pf = 0) G(CMAX);
    switch (N - n) {
    case 1: G(1); break;
    case 2: G(2); break;
    case 3: G(3); break;
    case 4: G(4); break;
    case 5: G(5); break;
    }
#undef G
}

// Tiles t0..t1-1 of R weight rows (a contiguous run: one stream); the last tile's missing
// rows repeat its last row (computed, not stored).
static void tiles_run(float *out, const float *x, const float *w, const float *bias, int N, int IC, int OC, int t0,
                      int t1) {
    size_t tile_elems = (size_t)R * (size_t)IC;
    size_t pf = tile_elems ? (PREFETCH_BYTES / 4 + tile_elems - 1) / tile_elems * tile_elems : 0;
    for (int t = t0; t < t1; t++) {
        int o = t * R, live = OC - o < R ? OC - o : R;
        const float *rows[R];
        for (int r = 0; r < R; r++) rows[r] = w + (size_t)(o + (r < live ? r : live - 1)) * IC;
        if (t == t0) {  // this run's first lines: later tiles prefetch the ones ahead of them
            const char *p = (const char *)rows[0], *end = (const char *)(w + (size_t)OC * IC);
            for (size_t i = 0; i < 4 * pf && i < (size_t)(end - p); i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
        }
        tile_rows(out + o, x, rows, bias ? bias + o : NULL, N, IC, OC, (__mmask8)((1u << live) - 1), pf);
    }
}

// Tiles t0..t1-1 for thread t of T: a contiguous run each.
static void share_tiles(int OC, int t, int T, int *t0, int *t1) {
    int tiles = (OC + R - 1) / R;
    *t0 = (int)((long)tiles * t / T), *t1 = (int)((long)tiles * (t + 1) / T);
}

static void forward_tiles(float *out, const float *x, const float *w, const float *bias, int N, int IC, int OC) {
#pragma omp parallel if ((long)OC * IC >= PARALLEL_MIN)
    {
        int t0, t1;
        share_tiles(OC, omp_get_thread_num(), omp_get_num_threads(), &t0, &t1);
        tiles_run(out, x, w, bias, N, IC, OC, t0, t1);
    }
}

// Each row alone as a tile of one (its bits: the same in any tile), all their lines
// requested first.
AVX512 static void outputs_tiles(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC) {
    prefetch_rows_of(w, rows, n, IC);
    for (int i = 0; i < n; i++) {
        const float *row = w + (size_t)rows[i] * IC, *tile_rows[R] = {row, row, row, row};
        tile(out + i, x, tile_rows, NULL, 1, IC, 1, 1, 0);
    }
}

static bool have_avx512(void) {
    static int avx512 = -1;
    if (avx512 < 0) {
        __builtin_cpu_init();
        avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    }
    return avx512;
}

bool linear_rows_available(void) { return have_avx512(); }

bool linear_forward_rows(float *out, const float *x, const float *w, const float *bias, int N, int IC, int OC) {
    if (!have_avx512()) return false;
    if (N > 0 && OC > 0) forward_tiles(out, x, w, bias, N, IC, OC);
    return true;
}

void rows_share_columns(int OC, int t, int T, int *c0, int *c1) {
    int t0, t1;
    share_tiles(OC, t, T, &t0, &t1);
    *c0 = t0 * R < OC ? t0 * R : OC, *c1 = t1 * R < OC ? t1 * R : OC;
}

bool linear_forward_rows_share(float *out, const float *x, const float *w, const float *bias, const float *residual,
                               int N, int IC, int OC, int t, int T) {
    if (!have_avx512()) return false;
    if (N <= 0 || OC <= 0) return true;
    int t0, t1, c0, c1;
    share_tiles(OC, t, T, &t0, &t1);
    tiles_run(out, x, w, bias, N, IC, OC, t0, t1);
    rows_share_columns(OC, t, T, &c0, &c1);
    if (residual) add_columns(out, residual, N, OC, c0, c1);
    return true;
}

bool linear_rows_outputs(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC) {
    if (!have_avx512()) return false;
    if (n > 0 && IC > 0) outputs_tiles(out, x, w, rows, n, IC);
    return true;
}

#else

bool linear_forward_rows(float *out, const float *x, const float *w, const float *bias, int N, int IC, int OC) {
    (void)out, (void)x, (void)w, (void)bias, (void)N, (void)IC, (void)OC;
    return false;
}

bool linear_rows_outputs(float *out, const float *x, const float *w, const int32_t *rows, int n, int IC) {
    (void)out, (void)x, (void)w, (void)rows, (void)n, (void)IC;
    return false;
}

bool linear_rows_available(void) { return false; }

void rows_share_columns(int OC, int t, int T, int *c0, int *c1) {
    *c0 = (int)((long)OC * t / T), *c1 = (int)((long)OC * (t + 1) / T);
}

bool linear_forward_rows_share(float *out, const float *x, const float *w, const float *bias, const float *residual,
                               int N, int IC, int OC, int t, int T) {
    (void)out, (void)x, (void)w, (void)bias, (void)residual, (void)N, (void)IC, (void)OC, (void)t, (void)T;
    return false;
}

#endif
