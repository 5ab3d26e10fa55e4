// The CPU decode attention (kernels/cpu/attention_decode.c) against attention written out
// in double: both of its paths (a token's whole cache read in order when there are enough
// tokens to share among the threads; a (token, kv head) at a time otherwise), head sizes
// with and without the AVX-512 kernels, query groups of 1 to 7 heads, caches of 0 to 300
// rows, outputs poisoned before each call.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention_shared.h"
#include "cpu/kv_bf16.h"
#include "cpu/linear_bf16.h"
#include "cpu/rope_table.h"
#include "ops.h"
#include "test.h"

static float frand(void) { return (float)((double)(test_rand() >> 11) / 9007199254740992.0 * 2 - 1); }

// out [n, NH, HD]: token i's heads against rows row0[i] .. row0[i] + len[i] of k, v [rows, KVH, HD].
static void reference(double *out, const float *q, const float *k, const float *v, const int32_t *row0,
                      const int32_t *len, int n, int NH, int KVH, int HD, double scale) {
    int G = NH / KVH, stride = KVH * HD;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < NH; h++) {
            double *o = out + ((size_t)i * NH + h) * HD, mx = -INFINITY, sum = 0;
            const float *qh = q + ((size_t)i * NH + h) * HD;
            double *p = malloc(sizeof(double) * (size_t)(len[i] > 0 ? len[i] : 1));
            for (int j = 0; j < len[i]; j++) {
                const float *kj = k + (size_t)(row0[i] + j) * stride + (size_t)(h / G) * HD;
                double d = 0;
                for (int x = 0; x < HD; x++) d += (double)qh[x] * kj[x];
                p[j] = d * scale, mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j < len[i]; j++) sum += p[j] = exp(p[j] - mx);
            for (int x = 0; x < HD; x++) o[x] = 0;
            for (int j = 0; j < len[i]; j++) {
                const float *vj = v + (size_t)(row0[i] + j) * stride + (size_t)(h / G) * HD;
                for (int x = 0; x < HD; x++) o[x] += p[j] / sum * vj[x];
            }
            free(p);
        }
}

// One shape at the given thread count: worst |err| / max |ref| over the outputs.
static double run_case(int n, int NH, int KVH, int HD, int max_len, int threads) {
    int rows_each = max_len + 3, stride = KVH * HD;
    size_t rows = (size_t)n * rows_each;
    float *k = malloc(sizeof(float) * rows * stride), *v = malloc(sizeof(float) * rows * stride);
    float *q = malloc(sizeof(float) * (size_t)n * NH * HD), *out = malloc(sizeof(float) * (size_t)n * NH * HD);
    double *want = malloc(sizeof(double) * (size_t)n * NH * HD);
    int32_t *row0 = malloc(sizeof(int32_t) * n), *len = malloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < rows * stride; i++) k[i] = frand(), v[i] = frand();
    for (int i = 0; i < n * NH * HD; i++) q[i] = 2 * frand(), out[i] = NAN;
    for (int i = 0; i < n; i++) {
        row0[i] = i * rows_each + (int)(test_rand() % 3);
        len[i] = i == 1 ? 0 : i == 2 ? 1 : (int)(test_rand() % (unsigned)(max_len + 1));  // empty and one-row caches too
    }
    float scale = 1.0f / sqrtf((float)HD);
    omp_set_num_threads(threads);
    attention_decode(out, q, k, v, row0, len, n, NH, KVH, HD, scale);
    reference(want, q, k, v, row0, len, n, NH, KVH, HD, scale);
    double worst = 0, top = 1e-30;
    for (int i = 0; i < n * NH * HD; i++) top = fmax(top, fabs(want[i]));
    for (int i = 0; i < n * NH * HD; i++) worst = isnan(out[i]) ? INFINITY : fmax(worst, fabs(out[i] - want[i]));
    free(k), free(v), free(q), free(out), free(want), free(row0), free(len);
    return worst / top;
}

static void test_matches_reference(void) {
    static const int shapes[][3] = {{9, 3, 64}, {14, 2, 64}, {16, 8, 128}, {12, 2, 128}, {4, 4, 64},
                                    {8, 1, 128}, {6, 2, 16}, {4, 2, 48}, {130, 2, 64}};  // the last: groups of 65
    static const int tokens[] = {1, 3, 4, 8, 13};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++)
            for (int threads = 1; threads <= 8; threads *= 8) {  // 1: whole tokens where n >= 2; 8: by kv head below 16
                int NH = shapes[s][0], KVH = shapes[s][1], HD = shapes[s][2], n = tokens[t];
                double e = run_case(n, NH, KVH, HD, s % 2 ? 300 : 70, threads);
                CHECK_MSG(e <= 1e-5, "NH %d KVH %d HD %d n %d threads %d: max rel err %.3g", NH, KVH, HD, n, threads, e);
            }
    omp_set_num_threads(omp_get_num_procs());
}

// The two paths give the same bits: whole tokens (one thread, n >= 2) and a kv head at a
// time (8 threads, n < 16) sum every head's scores and values in the same order.
static void test_paths_agree(void) {
    enum { n = 6, NH = 14, KVH = 2, HD = 64, ROWS = 90 };
    static float k[n * ROWS * KVH * HD], v[n * ROWS * KVH * HD], q[n * NH * HD], one[n * NH * HD], many[n * NH * HD];
    int32_t row0[n], len[n];
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) k[i] = frand(), v[i] = frand();
    for (int i = 0; i < n * NH * HD; i++) q[i] = 2 * frand();
    for (int i = 0; i < n; i++) row0[i] = i * ROWS, len[i] = 1 + (int)(test_rand() % (ROWS - 1));
    omp_set_num_threads(1);
    attention_decode(one, q, k, v, row0, len, n, NH, KVH, HD, 0.125f);
    omp_set_num_threads(8);
    attention_decode(many, q, k, v, row0, len, n, NH, KVH, HD, 0.125f);
    omp_set_num_threads(omp_get_num_procs());
    CHECK(!memcmp(one, many, sizeof one));
}

// A bf16 cache gives the bits of an fp32 cache holding the same (widened) values, on every
// path: the AVX-512 kernels (HD 64, 128: whole tokens and a kv head at a time; a bf16
// cache's query heads in passes of up to 4 or 2, here of 3, 2, 3 + 4 and 1 + 2 + 2) and
// the plain one (HD 16, 48), every thread count.
static void test_bf16_cache(void) {
    static const int shapes[][3] = {{9, 3, 64},  {16, 8, 128}, {6, 2, 16},  {4, 2, 48},
                                    {130, 2, 64}, {14, 2, 64},  {10, 2, 128}};
    static const int tokens[] = {1, 8};
    enum { ROWS = 120 };
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 2; t++)
            for (int threads = 1; threads <= 8; threads *= 8) {
                int NH = shapes[s][0], KVH = shapes[s][1], HD = shapes[s][2], n = tokens[t];
                size_t cells = (size_t)n * ROWS * KVH * HD, nq = (size_t)n * NH * HD;
                float *k = malloc(sizeof(float) * cells), *v = malloc(sizeof(float) * cells);
                uint16_t *k16 = malloc(sizeof(uint16_t) * cells), *v16 = malloc(sizeof(uint16_t) * cells);
                float *q = malloc(sizeof(float) * nq), *want = malloc(sizeof(float) * nq), *got = malloc(sizeof(float) * nq);
                for (size_t i = 0; i < cells; i++) k[i] = 3 * frand(), v[i] = frand();
                weights_to_bf16(k16, k, cells), weights_to_bf16(v16, v, cells);
                for (size_t i = 0; i < cells; i++) {  // k, v := the widened bf16 values
                    uint32_t a = (uint32_t)k16[i] << 16, b = (uint32_t)v16[i] << 16;
                    memcpy(&k[i], &a, 4), memcpy(&v[i], &b, 4);
                }
                for (size_t i = 0; i < nq; i++) q[i] = 2 * frand(), want[i] = NAN, got[i] = NAN;
                int32_t row0[8], len[8];
                for (int i = 0; i < n; i++) row0[i] = i * ROWS, len[i] = i == 1 ? 0 : 1 + (int)(test_rand() % ROWS);
                omp_set_num_threads(threads);
                attention_decode(want, q, k, v, row0, len, n, NH, KVH, HD, 0.125f);
                attention_decode_bf16(got, q, k16, v16, row0, len, n, NH, KVH, HD, 0.125f);
                bool finite = true;
                for (size_t i = 0; i < nq; i++) finite = finite && isfinite(got[i]);
                CHECK_MSG(finite && !memcmp(want, got, sizeof(float) * nq), "NH %d KVH %d HD %d n %d threads %d", NH, KVH,
                          HD, n, threads);
                free(k), free(v), free(k16), free(v16), free(q), free(want), free(got);
            }
    omp_set_num_threads(omp_get_num_procs());
}

// rope_kv_cache_table, fp32 and bf16, rotates q and k as rope_kv_cache_forward does and
// stores its rows (rounded to bf16 in the bf16 cache); the other rows are not written.
static void test_table_cache_write(void) {
    enum { n = 5, NH = 6, KVH = 2, HD = 32, W = KVH * HD, ROWS = 12 };
    static const int32_t kv_row[n] = {7, 0, 3, 11, 4}, pos[n] = {0, 5, 17, 300, 4099};
    float inv_freq[HD / 2], q[n * NH * HD], k[n * W], v[n * W], q2[n * NH * HD], k2[n * W], cs[n * HD];
    static float kc[ROWS * W], vc[ROWS * W], kc32[ROWS * W], vc32[ROWS * W];
    uint16_t kc16[ROWS * W], vc16[ROWS * W], want[ROWS * W];
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * i / HD);
    for (int i = 0; i < n * NH * HD; i++) q[i] = q2[i] = 2 * frand();
    for (int i = 0; i < n * W; i++) k[i] = k2[i] = 2 * frand(), v[i] = frand();
    for (int i = 0; i < ROWS * W; i++) kc16[i] = vc16[i] = 0x7fc1, kc32[i] = vc32[i] = -7;
    rope_kv_cache_forward(q, k, v, kc, vc, kv_row, pos, inv_freq, n, NH, KVH, HD);
    rope_table(cs, pos, inv_freq, n, HD);
    for (int half = 0; half < 2; half++) {
        float qq[n * NH * HD], kk[n * W];
        memcpy(qq, q2, sizeof qq), memcpy(kk, k2, sizeof kk);
        rope_kv_cache_table(qq, kk, v, half ? (void *)kc16 : kc32, half ? (void *)vc16 : vc32, half, kv_row, cs, n, NH,
                            KVH, HD);
        CHECK_MSG(!memcmp(q, qq, sizeof q) && !memcmp(k, kk, sizeof k), "%s: q and k rotated as rope_forward does",
                  half ? "bf16" : "fp32");
    }
    bool rows_ok = true;
    for (int r = 0; r < ROWS; r++) {
        bool written = false;
        for (int i = 0; i < n; i++) written = written || kv_row[i] == r;
        for (int c = 0; c < W; c++)
            rows_ok = rows_ok && (written ? kc32[r * W + c] == kc[r * W + c] && vc32[r * W + c] == vc[r * W + c]
                                          : kc32[r * W + c] == -7 && vc32[r * W + c] == -7);
    }
    CHECK_MSG(rows_ok, "fp32 cache: the rows of rope_kv_cache_forward, the others untouched");
    for (int i = 0; i < ROWS * W; i++) want[i] = 0x7fc1;
    for (int i = 0; i < n; i++) weights_to_bf16(want + kv_row[i] * W, kc + kv_row[i] * W, W);
    CHECK(!memcmp(kc16, want, sizeof want));
    for (int i = 0; i < n; i++) weights_to_bf16(want + kv_row[i] * W, vc + kv_row[i] * W, W);
    CHECK(!memcmp(vc16, want, sizeof want));
}

// Groups of tokens whose caches begin with copies of one source's rows (sample 0 and its
// copies, plus a second group and loners): attention_decode_shared gives the bits of the
// plain kernel, for fp32 and bf16 caches, HD 64 and 128, shared lengths below, at and
// across a block, 1-3 threads. The copies' shared rows are then overwritten with NaN:
// the output must not change (the shared rows are read from the source), and the plain
// kernel on that cache must (so the check can fail).
static void test_shared_prefix(void) {
    const int HDs[] = {64, 128}, shares[] = {0, 5, 16, 37, 64, 90};
    int n = 10, NH = 6, KVH = 2, cap = 100, checked = 0;
    for (int hi = 0; hi < 2; hi++)
        for (int si = 0; si < 6; si++)
            for (int half = 0; half < 2; half++) {
                int HD = HDs[hi], share = shares[si], stride = KVH * HD;
                size_t elems = (size_t)n * cap * stride;
                float *k = malloc(sizeof(float) * elems), *v = malloc(sizeof(float) * elems);
                uint16_t *k16 = malloc(2 * elems), *v16 = malloc(2 * elems);
                float *q = malloc(sizeof(float) * (size_t)n * NH * HD);
                size_t outs = (size_t)n * NH * HD;
                float *plain = malloc(sizeof(float) * outs), *got = malloc(sizeof(float) * outs);
                int32_t row0[10], len[10], sr[10], sl[10];
                for (size_t i = 0; i < elems; i++) k[i] = frand(), v[i] = frand();
                for (int i = 0; i < n * NH * HD; i++) q[i] = 2 * frand();
                // slots 0..5: slot 0 the source, 1..5 copies of its first `share` rows;
                // slots 6..7: slot 6 a source of 20 rows for 7; 8..9: on their own
                for (int i = 0; i < n; i++) {
                    row0[i] = i * cap, len[i] = share + 1 + (int)(test_rand() % 9), sr[i] = -1, sl[i] = 0;
                    if (i <= 5) sr[i] = 0, sl[i] = i == 0 ? len[i] : share;
                    if (i == 6 || i == 7)
                        len[i] = 20 + (int)(test_rand() % 30), sr[i] = 6 * cap, sl[i] = i == 6 ? len[i] : 20;
                }
                len[0] = share > len[0] ? share : len[0];
                for (int i = 1; i <= 5; i++) {
                    memcpy(k + (size_t)row0[i] * stride, k, sizeof(float) * (size_t)share * stride);
                    memcpy(v + (size_t)row0[i] * stride, v, sizeof(float) * (size_t)share * stride);
                }
                memcpy(k + (size_t)7 * cap * stride, k + (size_t)6 * cap * stride, sizeof(float) * 20 * stride);
                memcpy(v + (size_t)7 * cap * stride, v + (size_t)6 * cap * stride, sizeof(float) * 20 * stride);
                weights_to_bf16(k16, k, elems), weights_to_bf16(v16, v, elems);
                const void *kc = half ? (const void *)k16 : k, *vc = half ? (const void *)v16 : v;
                for (int threads = 1; threads <= 3; threads++) {
                    omp_set_num_threads(threads);
                    if (half) attention_decode_bf16(plain, q, k16, v16, row0, len, n, NH, KVH, HD, 0.125f);
                    else attention_decode(plain, q, k, v, row0, len, n, NH, KVH, HD, 0.125f);
                    for (int i = 0; i < n * NH * HD; i++) got[i] = NAN;
                    attention_decode_shared(got, q, kc, vc, half, row0, len, sr, sl, n, NH, KVH, HD, 0.125f);
                    CHECK_MSG(!memcmp(got, plain, sizeof(float) * outs), "HD %d share %d %s %d threads: bits differ",
                              HD, share, half ? "bf16" : "fp32", threads);
                    checked++;
                }
                // NaN in the copies' shared rows (whole blocks of 16 only are read from the source)
                int blocks = share / 16 * 16;
                for (int i = 1; i <= 5 && blocks > 0; i++)
                    for (size_t e = 0; e < (size_t)blocks * stride; e++) {
                        size_t at = (size_t)row0[i] * stride + e;
                        k[at] = v[at] = NAN, k16[at] = v16[at] = 0x7fc0;
                    }
                omp_set_num_threads(2);
                if (blocks > 0 && attention_decode_shares_rows(HD, n)) {  // else every token reads its own
                    attention_decode_shared(got, q, kc, vc, half, row0, len, sr, sl, n, NH, KVH, HD, 0.125f);
                    CHECK_MSG(!memcmp(got, plain, sizeof(float) * outs), "HD %d share %d: the copies' rows were read",
                              HD, share);
                    if (half) attention_decode_bf16(got, q, k16, v16, row0, len, n, NH, KVH, HD, 0.125f);
                    else attention_decode(got, q, k, v, row0, len, n, NH, KVH, HD, 0.125f);
                    CHECK(isnan(got[(size_t)1 * NH * HD]));
                }
                free(k), free(v), free(k16), free(v16), free(q), free(plain), free(got);
            }
    omp_set_num_threads(omp_get_num_procs());
    CHECK(checked == 2 * 6 * 2 * 3);
}

int main(void) {
    RUN(test_matches_reference);
    RUN(test_paths_agree);
    RUN(test_bf16_cache);
    RUN(test_table_cache_write);
    RUN(test_shared_prefix);
    return TEST_SUMMARY();
}
