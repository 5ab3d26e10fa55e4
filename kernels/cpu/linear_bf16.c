// linear_bf16.c — linear forward with bf16 weights (cpu/linear_bf16.h).
//
// The AVX-512 kernel works on tiles of R = 4 weight rows: a tile (12 KB at IC = 1536) is
// read from memory once and stays in L1 while every group of up to CMAX = 6 rows of x
// passes over it, so memory traffic is the weights once whatever N. A tile and a group
// make R·CMAX = 24 accumulators of 16 lanes, which with 4 widened weight vectors and an x
// vector fill the 32 zmm registers. Each output's lanes are summed in an order set by IC
// alone, and reduced by a shuffle tree that is the same for every output, so the tile
// and group an output falls in (N, the thread count) do not change its bits.
//
// Measured on 2 cores of a Xeon (tests/bench/bench_linear_bf16.c): one row reads the
// weights at 25-29 GB/s, the machine's bandwidth, 2x fp32 oneDNN; 8 rows are 1.6-4.5x;
// at 64 rows both are bound by FMAs and oneDNN's fp32 GEMM is 3-20% ahead.
// avx512_bf16's vdpbf16ps (x rounded to bf16 too, 32 products an instruction) was tried
// in place of the FMAs: no faster at one row, 20-35% slower at 8 and 64, so not kept.
#include "cpu/linear_bf16.h"

#include "cpu/cpu_ops.h"
#include "error.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>
#else
#define HAVE_X86 0
#endif

enum { R = 4, CMAX = 6 };

// Below this many weights one thread does it all: the fork costs more than it saves.
static const long PARALLEL_MIN = 1L << 15;

// ---- rounding ----

// Branch-free so it vectorises: the NaN case is a select, not a branch.
VECTOR_CLONES void weights_to_bf16(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // carries into the exponent: inf on overflow
        uint32_t quiet = (u >> 16) | 0x40u;  // a NaN whose payload is only in the low half must not become inf
        dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
    }
}

// ---- the portable path ----


VECTOR_CLONES static void widen(float *dst, const uint16_t *src, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

void linear_forward_w16_portable(float *out, const float *x, const uint16_t *w, const float *bias, int N, int IC,
                                 int OC) {
    if (N <= 0 || OC <= 0) return;
#pragma omp parallel if ((long)OC * IC >= PARALLEL_MIN)
    {
        float *row = malloc(sizeof(float) * (size_t)(IC > 0 ? IC : 1));  // one widened weight row
        if (!row) tp_die("linear_forward_w16: out of memory (%d floats)", IC);
#pragma omp for schedule(static)
        for (int o = 0; o < OC; o++) {
            widen(row, w + (size_t)o * IC, IC);
            for (int n = 0; n < N; n++) {
                float s = dot16(x + (size_t)n * IC, row, IC);
                out[(size_t)n * OC + o] = bias ? s + bias[o] : s;
            }
        }
        free(row);
    }
}

#if HAVE_X86

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define INLINE static inline __attribute__((always_inline))

// Software prefetch runs at least this far ahead of the tile being read, in whole tiles:
// the hardware prefetchers stop at 4 KB pages, and a tile's 4 rows are 4 streams of 1-3 KB.
// Without it one row reached 17 GB/s, with it 27 (the fp32 library gets 22-29).
static const size_t PREFETCH_BYTES = 4096;

// [sum v0, sum v1, sum v2, sum v3], every sum by the same tree: lanes j + 8, then + 4,
// + 2, + 1 apart (the order of GCC's _mm512_reduce_add_ps), so an output's bits do not
// depend on which accumulators it was reduced with.
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

// out [C, OC] columns 0..3 (those in `live`) := x [C, IC] · w[0..3] [IC]^T (+ bias [4]);
// acc [r][c] holds 16 lane sums of row r of W times row c of x.
AVX512 INLINE void store_tile(float *out, __m512 acc[R][CMAX], const float *bias, int C, int OC, __mmask8 live) {
    __m128 b = bias ? _mm_maskz_loadu_ps(live, bias) : _mm_setzero_ps();
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        __m128 s = reduce4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]);
        if (bias) s = _mm_add_ps(s, b);
        _mm_mask_storeu_ps(out + (size_t)c * OC, live, s);
    }
}

// Prefetch a line of each row of the tile, e elements ahead: the same row of a tile that
// follows (rows of a tile are adjacent). Into L2 only: into L1 it evicted the tile and
// x before the second group of rows had read them (8 rows: 5-15% slower).
AVX512 INLINE void prefetch_ahead(const uint16_t *const w[R], size_t e) {
    for (int r = 0; r < R; r++) {
        uintptr_t p = (uintptr_t)w[r] + 2 * (uintptr_t)e;  // an integer: may point past the weights
        _mm_prefetch((const char *)p, _MM_HINT_T1);
    }
}

// Widening bf16 to fp32 is a shift, 2 instructions per 16 weights with vpmovzxwd, on the
// ports the FMAs need; so 32 weights are widened in place instead: the even ones
// shifted up, the odd ones masked, 1 instruction per 16. x is stored deinterleaved to
// match: xp [N, ld], each 32 elements as the 16 even then the 16 odd (zeros from IC to ld).
AVX512 INLINE __m512 even16(const uint16_t *p, __mmask32 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_maskz_loadu_epi16(m, p), 16));
}
AVX512 INLINE __m512 odd16(const uint16_t *p, __mmask32 m) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_maskz_loadu_epi16(m, p), _mm512_set1_epi32((int)0xffff0000u)));
}

// xp [ld] := one row x [IC] deinterleaved by 32s, zero-padded.
AVX512 static void deinterleave_row(float *xp, const float *x, int IC, int ld) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int k = 0; k < ld; k += 32) {
        int left = IC - k;
        __mmask16 m0 = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
        __m512 a = _mm512_maskz_loadu_ps(m0, x + k), b = _mm512_maskz_loadu_ps(m1, x + k + 16);
        _mm512_storeu_ps(xp + k, _mm512_permutex2var_ps(a, even, b));
        _mm512_storeu_ps(xp + k + 16, _mm512_permutex2var_ps(a, odd, b));
    }
}

// A pointer the compiler cannot see through: the odd weights are loaded again (from L1)
// rather than kept from the even ones' load, which would hold 4 more registers.
#define LAUNDER(p) __asm__("" : "+r"(p))

// acc [r][c] += the 32 products of w[r] [k..k+32) (those in m) and x row c, in two
// halves: the even weights against the first 16 of xp's block, the odd against the rest.
AVX512 INLINE void step_w16(__m512 acc[R][CMAX], const float *xp, int ld, const uint16_t *const w[R], int C, int k,
                            __mmask32 m) {
    __m512 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) wv[r] = even16(w[r] + k, m);
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        __m512 xv = _mm512_loadu_ps(xp + (size_t)c * ld + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv, wv[r], acc[r][c]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const uint16_t *p = w[r] + k;
        LAUNDER(p);
        wv[r] = odd16(p, m);
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        __m512 xv = _mm512_loadu_ps(xp + (size_t)c * ld + k + 16);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv, wv[r], acc[r][c]);
    }
}

// One group of C rows of x against a tile. C is a constant in every caller, so the loops
// unroll and acc stays in registers. pf: prefetch each row pf elements ahead (0: none).
AVX512 INLINE void tile_w16(float *out, const float *xp, int ld, const uint16_t *const w[R], const float *bias, int C,
                            int IC, int OC, __mmask8 live, size_t pf) {
    __m512 acc[R][CMAX];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[r][c] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= IC; k += 32) {
        if (pf) prefetch_ahead(w, pf + (size_t)k);
        step_w16(acc, xp, ld, w, C, k, ~(__mmask32)0);
    }
    if (k < IC) step_w16(acc, xp, ld, w, C, k, (__mmask32)((1u << (IC - k)) - 1));
    store_tile(out, acc, bias, C, OC, live);
}

// The first `bytes` from w on (not past end): tiles prefetch the ones ahead of them, so a
// thread's first tiles would otherwise wait on memory.
static void prime(const uint16_t *w, const uint16_t *end, size_t bytes) {
    const char *p = (const char *)w, *e = (const char *)end;
    for (size_t i = 0; i < bytes && i < (size_t)(e - p); i += 64) _mm_prefetch(p + i, _MM_HINT_T1);
}

#define TILE_CASES(F, ...)             \
    switch (N - n) {                   \
    case 1: F(__VA_ARGS__, 1); break;  \
    case 2: F(__VA_ARGS__, 2); break;  \
    case 3: F(__VA_ARGS__, 3); break;  \
    case 4: F(__VA_ARGS__, 4); break;  \
    case 5: F(__VA_ARGS__, 5); break;  \
    }

// out [N, OC] columns o..o+3 for every row of x, CMAX rows at a time; the first group
// prefetches ahead.
AVX512 static void rows_w16(float *out, const float *xp, int ld, const uint16_t *const w[R], const float *bias, int N,
                            int IC, int OC, __mmask8 live, size_t pf) {
    int n = 0;
#define G(pf_, C) tile_w16(out + (size_t)n * OC, xp + (size_t)n * ld, ld, w, bias, C, IC, OC, live, pf_)
    for (; n + CMAX <= N; n += CMAX, pf = 0) G(pf, CMAX);
    TILE_CASES(G, pf)
#undef G
}

// Tiles of R weight rows split across the threads; the last tile's missing rows repeat
// its last row (computed, not stored), so every tile runs the same code.
static void forward_tiles(float *out, const float *x, const uint16_t *w, const float *bias, int N, int IC, int OC) {
    int tiles = (OC + R - 1) / R, ld = (IC + 31) / 32 * 32;
    size_t tile = (size_t)R * (size_t)IC;  // elements
    size_t pf = tile ? (PREFETCH_BYTES / 2 + tile - 1) / tile * tile : 0;
#pragma omp parallel if ((long)OC * IC >= PARALLEL_MIN)
    {
        // Each thread deinterleaves all of x for itself: with one shared copy, half of it
        // crossed between the cores' caches, which cost more than the copy (64 rows: 30%).
        float *xp = aligned_alloc(64, sizeof(float) * (size_t)N * (size_t)(ld ? ld : 32));
        if (!xp) tp_die("linear_forward_w16: out of memory (%d x %d floats)", N, ld);
        for (int n = 0; n < N; n++) deinterleave_row(xp + (size_t)n * ld, x + (size_t)n * IC, IC, ld);
        bool primed = false;
#pragma omp for schedule(static)
        for (int t = 0; t < tiles; t++) {
            int o = t * R, live = OC - o < R ? OC - o : R;
            const uint16_t *rows[R];
            for (int r = 0; r < R; r++) rows[r] = w + (size_t)(o + (r < live ? r : live - 1)) * IC;
            if (!primed) prime(rows[0], w + (size_t)OC * IC, 2 * pf), primed = true;
            rows_w16(out + o, xp, ld, rows, bias ? bias + o : NULL, N, IC, OC, (__mmask8)((1u << live) - 1), pf);
        }
        free(xp);
    }
}

static bool have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

#endif  // HAVE_X86

void linear_forward_w16(float *out, const float *x, const uint16_t *w, const float *bias, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
#if HAVE_X86
    if (have_avx512()) {
        forward_tiles(out, x, w, bias, N, IC, OC);
        return;
    }
#endif
    linear_forward_w16_portable(out, x, w, bias, N, IC, OC);
}
