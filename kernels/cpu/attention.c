// attention.c — causal attention over packed rows with native GQA, flash-style: the
// forward pass keeps only the log-sum-exp of each query's scores, and the backward pass
// recomputes the probabilities tile by tile from q, k and lse. Nothing is [T, T].
//
// Work is cut into tiles of BQ queries × BK keys of one head; all products are small
// matrix products on per-thread scratch (tile_mm). Threads take independent units that
// write disjoint outputs, and each output is summed in a fixed order, so results are
// bit-identical for any number of threads (and, see VECTOR_CLONES, any instruction set).
#include "cpu_ops.h"
#include "ops.h"
#include "error.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum { BQ = 64, BK = 64, LANES = 16 };  // BK: a multiple of LANES

// C [M, N] = (acc ? C : 0) + A [M, K] · B [K, N]. A is read as A[m·am + k·ak], so a
// transposed operand is the same buffer with its strides swapped; B and C are row-major
// with row strides ldb, ldc. Every C element is summed in k order whatever path computes
// it: 4 × 16 register tiles, then single rows, then single columns.
VECTOR_CLONES static void tile_mm(float *restrict C, long ldc, const float *restrict A, long am, long ak,
                                  const float *restrict B, long ldb, int M, int N, int K, bool acc) {
    int n16 = N / 16 * 16;
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        for (int n = 0; n < n16; n += 16) {
            float c[4][16];
            for (int i = 0; i < 4; i++)
#pragma omp simd
                for (int j = 0; j < 16; j++) c[i][j] = 0;
            if (acc)
                for (int i = 0; i < 4; i++)
#pragma omp simd
                    for (int j = 0; j < 16; j++) c[i][j] = C[(m + i) * ldc + n + j];
            const float *a = A + m * am;
            for (int k = 0; k < K; k++) {
                const float *b = B + k * ldb + n;
                float a0 = a[k * ak], a1 = a[am + k * ak], a2 = a[2 * am + k * ak], a3 = a[3 * am + k * ak];
#pragma omp simd
                for (int j = 0; j < 16; j++) {
                    c[0][j] += a0 * b[j];
                    c[1][j] += a1 * b[j];
                    c[2][j] += a2 * b[j];
                    c[3][j] += a3 * b[j];
                }
            }
            for (int i = 0; i < 4; i++)
#pragma omp simd
                for (int j = 0; j < 16; j++) C[(m + i) * ldc + n + j] = c[i][j];
        }
    }
    for (; m < M; m++) {
        for (int n = 0; n < n16; n += 16) {
            float c[16];
#pragma omp simd
            for (int j = 0; j < 16; j++) c[j] = 0;
            if (acc)
#pragma omp simd
                for (int j = 0; j < 16; j++) c[j] = C[m * ldc + n + j];
            for (int k = 0; k < K; k++) {
                const float *b = B + k * ldb + n;
                float a0 = A[m * am + k * ak];
#pragma omp simd
                for (int j = 0; j < 16; j++) c[j] += a0 * b[j];
            }
#pragma omp simd
            for (int j = 0; j < 16; j++) C[m * ldc + n + j] = c[j];
        }
    }
    for (int n = n16; n < N; n++) {
        for (m = 0; m < M; m++) {
            float c = acc ? C[m * ldc + n] : 0.0f;
            for (int k = 0; k < K; k++) c += A[m * am + k * ak] * B[k * ldb + n];
            C[m * ldc + n] = c;
        }
    }
}

// Sum of a BK-wide row with LANES partial sums combined pairwise: the same bits at any
// vector width.
static inline float row_sum(const float *p) {
    float acc[LANES];
#pragma omp simd
    for (int l = 0; l < LANES; l++) acc[l] = p[l];
    for (int j = LANES; j < BK; j += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) acc[l] += p[j + l];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

// kt [HD, BK] = the transpose of nk rows of k (row stride ks), zero past nk.
static void transpose_keys(float *restrict kt, const float *restrict k, long ks, int nk, int HD) {
    for (int d = 0; d < HD; d++) {
        float *row = kt + (size_t)d * BK;
        for (int j = 0; j < nk; j++) row[j] = k[j * ks + d];
        for (int j = nk; j < BK; j++) row[j] = 0;
    }
}

// Segments are the maximal runs of equal seg_start (NULL: one run). For valid input the
// run of token n starts at seg_start[n]; working from runs never uses seg_start as an
// index, so malformed input cannot read out of bounds, and both passes agree on it.
// start[0..R] with start[R] = N; returns R.
static int list_runs(int *start, const int32_t *seg_start, int N) {
    int R = 0;
    for (int n = 0; n < N; n++)
        if (n == 0 || (seg_start && seg_start[n] != seg_start[n - 1])) start[R++] = n;
    start[R] = N;
    return R;
}

// The causal mask within a tile is a prefix: query i0 + r sees the first
// valid_keys(i0 + r - j0, nk) keys of the tile starting at j0.
static inline int valid_keys(int diag, int nk) {
    int n = diag + 1 < nk ? diag + 1 : nk;
    return n > 0 ? n : 0;
}

// p [BK] := p · scale - shift on the first `valid` keys, -inf (probability 0) past them.
static inline void mask_scale(float *p, int valid, float scale, float shift) {
#pragma omp simd
    for (int j = 0; j < BK; j++) p[j] = p[j] * scale - shift;
    for (int j = valid; j < BK; j++) p[j] = -INFINITY;
}

// ---- forward ----

// Online softmax over one S tile [rows, BK] of keys j0.., for queries i0..: row r sees
// keys up to i0 + r (and fewer than nk). S becomes the probabilities relative to the
// running max m; l, the running sum, and the output rows o (stride os) are rescaled by
// corr [rows] (scratch) when the max grows.
VECTOR_CLONES static void softmax_tile(float *restrict s, float *restrict m, float *restrict l, float *restrict corr,
                                       float *restrict o, long os, int rows, int diag, int nk, int HD, float scale) {
    for (int r = 0; r < rows; r++) {
        float *p = s + (size_t)r * BK;
        mask_scale(p, valid_keys(diag + r, nk), scale, 0);
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < BK; j++) mx = p[j] > mx ? p[j] : mx;
        float mnew = mx > m[r] ? mx : m[r];  // finite: the first tile holds the query's own key
        corr[r] = m[r] - mnew;               // -inf on the first tile (m = -inf): exp gives 0
        m[r] = mnew;
        exp_shift_inplace(p, mnew, BK);
    }
    exp_shift_inplace(corr, 0, rows);
    for (int r = 0; r < rows; r++) {
        l[r] = l[r] * corr[r] + row_sum(s + (size_t)r * BK);
        if (corr[r] != 1.0f) {
            float *orow = o + r * os;
#pragma omp simd
            for (int d = 0; d < HD; d++) orow[d] *= corr[r];
        }
    }
}

struct tile {
    int a, i0, i1;  // run start, queries [i0, i1)
};

struct dims {
    int NH, KVH, HD, G;
    long qs, ks;  // row strides of q/out/dq/dout and of k/v/dk/dv
    float scale;
};

// One query head h over one tile of queries; keys run.a .. i for query i.
static void forward_tile(float *out, float *lse, const float *q, const float *k, const float *v, struct tile t,
                         int h, const struct dims *dm, float *kt, float *s, float *m, float *l, float *corr) {
    int HD = dm->HD, rows = t.i1 - t.i0, g = h / dm->G;
    const float *qh = q + t.i0 * dm->qs + (long)h * HD;
    float *oh = out + t.i0 * dm->qs + (long)h * HD;
    const float *kg = k + (long)g * HD, *vg = v + (long)g * HD;
    for (int r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0;
        memset(oh + r * dm->qs, 0, sizeof(float) * (size_t)HD);
    }
    for (int j0 = t.a; j0 < t.i1; j0 += BK) {
        int nk = t.i1 - j0 < BK ? t.i1 - j0 : BK;
        transpose_keys(kt, kg + j0 * dm->ks, dm->ks, nk, HD);
        tile_mm(s, BK, qh, dm->qs, 1, kt, BK, rows, BK, HD, false);
        softmax_tile(s, m, l, corr, oh, dm->qs, rows, t.i0 - j0, nk, HD, dm->scale);
        tile_mm(oh, dm->qs, s, BK, 1, vg + j0 * dm->ks, dm->ks, rows, HD, nk, true);
    }
    for (int r = 0; r < rows; r++) {
        float inv = 1.0f / l[r], *orow = oh + r * dm->qs;
        for (int d = 0; d < HD; d++) orow[d] *= inv;
        lse[(long)(t.i0 + r) * dm->NH + h] = (float)((double)m[r] + log((double)l[r]));
    }
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *seg_start, int N, int NH, int KVH, int HD, float scale) {
    assert(N >= 0 && KVH > 0 && NH % KVH == 0 && HD > 0);  // shapes come from a checked config
    if (N == 0) return;
    struct dims dm = {NH, KVH, HD, NH / KVH, (long)NH * HD, (long)KVH * HD, scale};
    int *start = tp_xmalloc(sizeof(int) * ((size_t)N + 1));
    int R = list_runs(start, seg_start, N);
    struct tile *tiles = tp_xmalloc(sizeof(struct tile) * (size_t)N);  // a tile holds >= 1 query
    int ntiles = 0;
    for (int r = 0; r < R; r++)
        for (int i0 = start[r]; i0 < start[r + 1]; i0 += BQ)
            tiles[ntiles++] = (struct tile){start[r], i0, start[r + 1] - i0 < BQ ? start[r + 1] : i0 + BQ};
    long units = (long)ntiles * NH;
#pragma omp parallel if ((long)N * NH * HD > 1 << 15)
    {
        float *kt = tp_xmalloc(sizeof(float) * ((size_t)HD * BK + BQ * BK + 3 * BQ));
        float *s = kt + (size_t)HD * BK, *m = s + BQ * BK, *l = m + BQ, *corr = l + BQ;
#pragma omp for schedule(dynamic)
        for (long u = 0; u < units; u++)
            forward_tile(out, lse, q, k, v, tiles[u / NH], (int)(u % NH), &dm, kt, s, m, l, corr);
        free(kt);
    }
    free(tiles);
    free(start);
}

// ---- backward ----

// From S = q·k and dP = dout·v of one tile: s := P = exp(S·scale - lse) (0 where masked)
// and dp := dS·scale = P (dP - D) · scale, with D = rowsum(dout ∘ out).
// lse and D of row r are at [r · stride].
VECTOR_CLONES static void grad_tile(float *restrict s, float *restrict dp, const float *lse, const float *D,
                                    long stride, int rows, int diag, int nk, float scale) {
    for (int r = 0; r < rows; r++) mask_scale(s + (size_t)r * BK, valid_keys(diag + r, nk), scale, lse[r * stride]);
    exp_shift_inplace(s, 0, (long)rows * BK);
    for (int r = 0; r < rows; r++) {
        const float *p = s + (size_t)r * BK;
        float *g = dp + (size_t)r * BK, dr = D[r * stride];
#pragma omp simd
        for (int j = 0; j < BK; j++) g[j] = p[j] * (g[j] - dr) * scale;
    }
}

// One run [a, b) and one kv head g: this unit owns dk, dv of the run's keys in head g and
// dq of its queries in g's query heads, so no other thread touches them. For each key
// tile, every query tile at or after it, in order: dq sums over key tiles in order, dk and
// dv over (query head, query tile) in order.
static void backward_run(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                         const float *q, const float *k, const float *v, int a, int b, int g, const struct dims *dm,
                         float *kt, float *vt, float *s, float *dp) {
    int HD = dm->HD, NH = dm->NH;
    long qs = dm->qs, ks = dm->ks;
    for (int j0 = a; j0 < b; j0 += BK) {
        int nk = b - j0 < BK ? b - j0 : BK;
        const float *kj = k + j0 * ks + (long)g * HD, *vj = v + j0 * ks + (long)g * HD;
        float *dkj = dk + j0 * ks + (long)g * HD, *dvj = dv + j0 * ks + (long)g * HD;
        transpose_keys(kt, kj, ks, nk, HD);
        transpose_keys(vt, vj, ks, nk, HD);
        for (int h = g * dm->G; h < (g + 1) * dm->G; h++) {
            for (int i0 = j0; i0 < b; i0 += BQ) {
                int rows = b - i0 < BQ ? b - i0 : BQ;
                long off = i0 * qs + (long)h * HD;
                tile_mm(s, BK, q + off, qs, 1, kt, BK, rows, BK, HD, false);
                tile_mm(dp, BK, dout + off, qs, 1, vt, BK, rows, BK, HD, false);
                grad_tile(s, dp, lse + (long)i0 * NH + h, D + (long)i0 * NH + h, NH, rows, i0 - j0, nk, dm->scale);
                tile_mm(dvj, ks, s, 1, BK, dout + off, qs, nk, HD, rows, true);  // dV += P^T · dout
                tile_mm(dkj, ks, dp, 1, BK, q + off, qs, nk, HD, rows, true);    // dK += dS^T · q
                tile_mm(dq + off, qs, dp, BK, 1, kj, ks, rows, HD, nk, true);    // dQ += dS · k
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *seg_start, int N, int NH,
                        int KVH, int HD, float scale) {
    assert(N >= 0 && KVH > 0 && NH % KVH == 0 && HD > 0);
    if (N == 0) return;
    struct dims dm = {NH, KVH, HD, NH / KVH, (long)NH * HD, (long)KVH * HD, scale};
    bool par = (long)N * NH * HD > 1 << 15;
    // D [N, NH] = rowsum(dout ∘ out), in double: dS = P (dP - D) subtracts nearly equal values.
    float *D = tp_xmalloc(sizeof(float) * (size_t)N * NH);
#pragma omp parallel for schedule(static) if (par)
    for (long i = 0; i < (long)N * NH; i++) {
        const float *a = dout + i * HD, *o = out + i * HD;
        double sum = 0;
        for (int d = 0; d < HD; d++) sum += (double)a[d] * o[d];
        D[i] = (float)sum;
    }
    int *start = tp_xmalloc(sizeof(int) * ((size_t)N + 1));
    int R = list_runs(start, seg_start, N);
    long units = (long)R * KVH;
#pragma omp parallel if (par)
    {
        float *kt = tp_xmalloc(sizeof(float) * (2 * (size_t)HD * BK + 2 * BQ * BK));
        float *vt = kt + (size_t)HD * BK, *s = vt + (size_t)HD * BK, *dp = s + BQ * BK;
#pragma omp for schedule(dynamic)
        for (long u = 0; u < units; u++) {
            int r = (int)(u / KVH), g = (int)(u % KVH);
            backward_run(dq, dk, dv, dout, lse, D, q, k, v, start[r], start[r + 1], g, &dm, kt, vt, s, dp);
        }
        free(kt);
    }
    free(start);
    free(D);
}
