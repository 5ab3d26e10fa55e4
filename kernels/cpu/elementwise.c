// elementwise.c — add_inplace, and the vectorised exp that softmax, cross-entropy and
// SwiGLU share.
#include "cpu_ops.h"
#include "ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

void add_inplace(float *x, const float *y, long n) {
#pragma omp parallel for simd schedule(static) if (n > 1 << 18)
    for (long i = 0; i < n; i++) x[i] += y[i];
}

// expf to within 2 ulp (1.7 measured over [-86, 88.7]) in plain arithmetic the compiler
// vectorises: glibc's expf is a scalar call without -ffast-math, and it was the bottleneck
// of softmax and cross-entropy. No fused multiply-adds and the same operations in every
// lane, so scalar, SSE, AVX2 and AVX-512 code give the same bits.
// exp(x) = 2^n · e^r with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split
// in two so n · ln2_hi is exact), e^r by its Taylor series to r^7 (truncation < 5e-9).
// Past ln(FLT_MAX) it is +inf, NaN stays NaN, and results below 2^-125 are flushed to 0
// (they vanish next to a softmax's largest term; exp(-inf) = 0 is what masking needs).
// Those cases are bit masks, not ?: selects: GCC vectorises a select on a float comparison
// for SSE or AVX2 only when floating point may not trap.
static inline float exp_approx(float x) {
    const float lo = -86.5f, hi = 88.7228394f;  // ln(FLT_MAX)
    const float shifter = 12582912.0f;          // 1.5 · 2^23: adding it rounds to an integer
    // No clamping: out of [lo, hi] the arithmetic below makes garbage that the masks at
    // the end replace (a clamp is a branch, and GCC then refuses to vectorise).
    float t = x * 1.44269504088896341f + shifter;
    float n = t - shifter;
    uint32_t ti, si;  // unsigned: no overflow to worry about when x is NaN
    memcpy(&ti, &t, sizeof ti);
    memcpy(&si, &shifter, sizeof si);
    // 2^(n-1) from its exponent bits (n - 1 >= -126 stays normal), times 2 at the end:
    // 2^n itself would overflow for n = 128.
    uint32_t bits = (ti - si + 126) << 23;
    float half_scale;
    memcpy(&half_scale, &bits, sizeof half_scale);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float y = p * half_scale * 2.0f;
    uint32_t yb, flush = -(uint32_t)(x < lo), inf = -(uint32_t)(x > hi);
    memcpy(&yb, &y, sizeof yb);
    yb = ((yb & ~inf) | (inf & 0x7f800000u)) & ~flush;
    memcpy(&y, &yb, sizeof y);
    return y;
}

VECTOR_CLONES void exp_shift_inplace(float *x, float shift, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) x[i] = exp_approx(x[i] - shift);
}

// A lane keeps its value when x is NaN (the comparison is false), and every lane starts
// from -inf: `reduction(max : mx)` leaves the start to the compiler (clang takes -FLT_MAX,
// so a row of -inf had a largest value that is none of its elements).
#pragma omp declare reduction(max_skip_nan : float : omp_out = omp_in > omp_out ? omp_in : omp_out) \
    initializer(omp_priv = -INFINITY)

VECTOR_CLONES float max_not_nan(const float *x, long n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max_skip_nan : mx)
    for (long j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

VECTOR_CLONES double sum_in_double(const float *x, long n) {
    double part[8] = {0};
    long j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) part[l] += x[j + l];
    for (; j < n; j++) part[0] += x[j];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

void add_columns(float *out, const float *residual, int N, int OC, int c0, int c1) {
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * OC;
        const float *r = residual + (size_t)n * OC;
        for (int c = c0; c < c1; c++) o[c] += r[c];
    }
}

void prefetch_rows_of(const float *w, const int32_t *rows, int n, int IC) {
    for (int i = 0; i < n; i++)
        for (size_t b = 0; b < (size_t)IC * sizeof *w; b += 64)
            __builtin_prefetch((const char *)(w + (size_t)rows[i] * IC) + b, 0, 3);
}
