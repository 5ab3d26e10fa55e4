// CUDA attention against its CPU twin (kernels/cpu/attention.c): the forward pass (out,
// lse) and the backward pass (dq, dk, dv accumulated into), on one sequence, packed rows
// of several sequences, GQA and plain multi-head shapes and every head size up to 128;
// in fp32 (the default) and again in bf16 matmul mode, where head sizes 64 and 128 take
// a tensor-core path, each of the two in turn (WMMA: attention_tc.cu; mma.sync:
// attention_mma.cu), and the others stay on fp32. The bf16-activation forms against the fp32
// forms bit for bit, and the attention block's unrotated form (bf16 dq, dk, dv written
// through RoPE's backward) against the accumulating form, cuda_rope_backward and rounding.
// Skipped without CUDA or without a GPU.
#include "ops.h"
#include "cuda_test.h"
#include "tensor.h"
#include "test.h"
#ifdef TP_HAVE_CUDA
#include "cuda/cuda_ops.h"
#include <cuda_runtime_api.h>
#endif

#include <stdint.h>
#include <time.h>

#ifdef TP_HAVE_CUDA
// Uniform in [-2, 2], never exactly zero (a zero could hide an unread element).
static void fill(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x;
        do x = (float)(test_uniform() * 4 - 2);
        while (x == 0.0f);
        p[i] = x;
    }
}

// max |a - b| / max |b|; NaN anywhere in a (an unwritten, poisoned element) gives NaN,
// which fails every <= comparison.
static double max_rel_err(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (scale > 0 ? scale : 1);
        if (d != d) return d;
        worst = fmax(worst, d);
    }
    return worst;
}

// The same for the increments got - base against ref - base, relative to their own
// largest value: the random starting values of dq, dk, dv cannot hide an error.
static double max_rel_inc_err(const float *got, const float *ref, const float *base, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)ref[i] - base[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs(((double)got[i] - base[i]) - ((double)ref[i] - base[i])) / (scale > 0 ? scale : 1);
        if (d != d) return d;
        worst = fmax(worst, d);
    }
    return worst;
}

static void *dev_alloc(size_t bytes) {
    void *p = cuda_alloc(bytes);
    CHECK_MSG(p != NULL, "cuda_alloc(%zu) failed", bytes);
    return p;
}

static void *dev_from(const void *host, size_t bytes) {
    void *p = dev_alloc(bytes);
    if (p) cuda_upload(p, host, bytes);
    return p;
}

// cuda_take_error after a GPU phase: 0, or the first error's message.
static void check_gpu(const char *phase, const char *name) {
    char err[512] = "";
    int rc = cuda_take_error(err, sizeof err);
    CHECK_MSG(rc == 0, "%s of case %s: %s", phase, name, err);
}

struct attn_case {
    const char *name;
    int NH, KVH, HD;
    int lens[8];  // sequence lengths packed along N, ended by 0
    int no_seg;   // pass seg_start NULL (one sequence) to both sides
};

// The tensor-core kernels bf16 mode can take (cuda_set_attention_kernel).
static const char *const tc_kernels[2] = {"wmma", "mma"};
static double worst_fwd, worst_bwd, worst_fwd_tc[2], worst_bwd_tc[2];

// tc: 0 fp32; 1 + i: bf16 matmul mode with tensor-core kernel tc_kernels[i] (the caller
// sets both): tolerance 1e-2 instead of 1e-5 where the tensor-core path takes the head
// size, plus the increment check at 2e-2.
static void run_case(const struct attn_case *c, int tc) {
    int N = 0, nseq = 0;
    while (c->lens[nseq]) N += c->lens[nseq++];
    const int NH = c->NH, KVH = c->KVH, HD = c->HD;
    const float scale = 1.0f / sqrtf((float)HD);
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD, nl = (size_t)N * NH;
    const size_t bq = nq * sizeof(float), bkv = nkv * sizeof(float), bl = nl * sizeof(float);

    int32_t *seg = malloc(sizeof(int32_t) * (size_t)N);
    for (int s = 0, n = 0; s < nseq; s++)
        for (int t = 0, first = n; t < c->lens[s]; t++) seg[n++] = first;
    float *q = malloc(bq), *k = malloc(bkv), *v = malloc(bkv), *dout = malloc(bq);
    float *out_ref = malloc(bq), *lse_ref = malloc(bl), *out_got = malloc(bq), *lse_got = malloc(bl);
    float *dq0 = malloc(bq), *dk0 = malloc(bkv), *dv0 = malloc(bkv);
    float *dq_ref = malloc(bq), *dk_ref = malloc(bkv), *dv_ref = malloc(bkv);
    float *dq_got = malloc(bq), *dk_got = malloc(bkv), *dv_got = malloc(bkv);
    float *dq_again = malloc(bq), *dk_again = malloc(bkv), *dv_again = malloc(bkv);
    float *out_again = malloc(bq), *lse_again = malloc(bl);
    const int on_tc = tc && (HD == 64 || HD == 128);
    const double tol = on_tc ? 1e-2 : 1e-5, tol_inc = 2e-2;
    char mode[64];
    snprintf(mode, sizeof mode, "%s", !tc ? "fp32" : "bf16 mode, fp32 path");
    if (on_tc) snprintf(mode, sizeof mode, "bf16 tensor cores, %s", tc_kernels[tc - 1]);
    const char *path = on_tc ? tc_kernels[tc - 1] : "fp32";  // the kernels that must have run
    const int32_t *seg_arg = c->no_seg ? NULL : seg;
    fill(q, nq), fill(k, nkv), fill(v, nkv), fill(dout, nq);
    fill(dq0, nq), fill(dk0, nkv), fill(dv0, nkv);

    // ---- forward ----
    attention_forward(out_ref, lse_ref, q, k, v, seg_arg, N, NH, KVH, HD, scale);
    float *d_q = dev_from(q, bq), *d_k = dev_from(k, bkv), *d_v = dev_from(v, bkv);
    int32_t *d_seg = dev_from(seg, sizeof(int32_t) * (size_t)N);
    float *d_out = dev_alloc(bq), *d_lse = dev_alloc(bl), *d_dout = dev_from(dout, bq);
    float *d_dq = dev_alloc(bq), *d_dk = dev_alloc(bkv), *d_dv = dev_alloc(bkv);
    if (!d_q || !d_k || !d_v || !d_seg || !d_out || !d_lse || !d_dout || !d_dq || !d_dk || !d_dv) goto done;
    for (int pass = 0; pass < 2; pass++) {  // twice: the result must not change by a bit
        cudaMemset(d_out, 0xff, bq);  // NaN poison: an element the kernel forgets fails the comparison
        cudaMemset(d_lse, 0xff, bl);
        cuda_attention_forward(d_out, d_lse, d_q, d_k, d_v, c->no_seg ? NULL : d_seg, N, NH, KVH, HD, scale);
        check_gpu("forward", c->name);
        CHECK_MSG(!strcmp(cuda_attention_last_path(), path), "case %s (%s): the forward pass ran %s", c->name, mode,
                  cuda_attention_last_path());
        cuda_download(pass ? out_again : out_got, d_out, bq);
        cuda_download(pass ? lse_again : lse_got, d_lse, bl);
        check_gpu("forward download", c->name);
    }
    double e_out = max_rel_err(out_got, out_ref, nq), e_lse = max_rel_err(lse_got, lse_ref, nl);
    CHECK_MSG(e_out <= tol, "case %s (%s): out max rel err %.3g", c->name, mode, e_out);
    CHECK_MSG(e_lse <= tol, "case %s (%s): lse max rel err %.3g", c->name, mode, e_lse);
    CHECK_MSG(!memcmp(out_got, out_again, bq) && !memcmp(lse_got, lse_again, bl),
              "case %s (%s): the forward pass is not deterministic", c->name, mode);
    if (on_tc) worst_fwd_tc[tc - 1] = fmax(worst_fwd_tc[tc - 1], fmax(e_out, e_lse));
    else worst_fwd = fmax(worst_fwd, fmax(e_out, e_lse));

    // ---- backward, from the CPU's out and lse; the gradients start from dq0, dk0, dv0 ----
    memcpy(dq_ref, dq0, bq), memcpy(dk_ref, dk0, bkv), memcpy(dv_ref, dv0, bkv);
    attention_backward(dq_ref, dk_ref, dv_ref, dout, out_ref, lse_ref, q, k, v, seg_arg, N, NH, KVH, HD, scale);
    cuda_upload(d_out, out_ref, bq);
    cuda_upload(d_lse, lse_ref, bl);
    for (int pass = 0; pass < 2; pass++) {  // twice: the result must not change by a bit
        cuda_upload(d_dq, dq0, bq), cuda_upload(d_dk, dk0, bkv), cuda_upload(d_dv, dv0, bkv);
        cuda_attention_backward(d_dq, d_dk, d_dv, d_dout, d_out, d_lse, d_q, d_k, d_v, c->no_seg ? NULL : d_seg, N,
                                NH, KVH, HD, scale);
        check_gpu("backward", c->name);
        CHECK_MSG(!strcmp(cuda_attention_last_path(), path), "case %s (%s): the backward pass ran %s", c->name,
                  mode, cuda_attention_last_path());
        cuda_download(pass ? dq_again : dq_got, d_dq, bq);
        cuda_download(pass ? dk_again : dk_got, d_dk, bkv);
        cuda_download(pass ? dv_again : dv_got, d_dv, bkv);
        check_gpu("backward download", c->name);
    }
    double e_dq = max_rel_err(dq_got, dq_ref, nq), e_dk = max_rel_err(dk_got, dk_ref, nkv);
    double e_dv = max_rel_err(dv_got, dv_ref, nkv);
    CHECK_MSG(e_dq <= tol, "case %s (%s): dq max rel err %.3g", c->name, mode, e_dq);
    CHECK_MSG(e_dk <= tol, "case %s (%s): dk max rel err %.3g", c->name, mode, e_dk);
    CHECK_MSG(e_dv <= tol, "case %s (%s): dv max rel err %.3g", c->name, mode, e_dv);
    CHECK_MSG(!memcmp(dq_got, dq_again, bq) && !memcmp(dk_got, dk_again, bkv) && !memcmp(dv_got, dv_again, bkv),
              "case %s (%s): the backward pass is not deterministic", c->name, mode);
    if (on_tc) {
        double i_dq = max_rel_inc_err(dq_got, dq_ref, dq0, nq), i_dk = max_rel_inc_err(dk_got, dk_ref, dk0, nkv);
        double i_dv = max_rel_inc_err(dv_got, dv_ref, dv0, nkv);
        CHECK_MSG(i_dq <= tol_inc, "case %s (%s): dq increment max rel err %.3g", c->name, mode, i_dq);
        CHECK_MSG(i_dk <= tol_inc, "case %s (%s): dk increment max rel err %.3g", c->name, mode, i_dk);
        CHECK_MSG(i_dv <= tol_inc, "case %s (%s): dv increment max rel err %.3g", c->name, mode, i_dv);
        worst_bwd_tc[tc - 1] =
            fmax(worst_bwd_tc[tc - 1], fmax(fmax(e_dq, fmax(e_dk, e_dv)), fmax(i_dq, fmax(i_dk, i_dv))));
        if (getenv("TP_ATTN_VERBOSE"))
            printf("# %s [%s]: out %.3g lse %.3g dq %.3g dk %.3g dv %.3g, increments dq %.3g dk %.3g dv %.3g\n",
                   c->name, mode, e_out, e_lse, e_dq, e_dk, e_dv, i_dq, i_dk, i_dv);
    } else {
        worst_bwd = fmax(worst_bwd, fmax(e_dq, fmax(e_dk, e_dv)));
    }

done:
    cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_seg), cuda_free(d_out), cuda_free(d_lse);
    cuda_free(d_dout), cuda_free(d_dq), cuda_free(d_dk), cuda_free(d_dv);
    check_gpu("free", c->name);
    free(seg), free(q), free(k), free(v), free(dout), free(out_ref), free(lse_ref), free(out_got), free(lse_got);
    free(dq0), free(dk0), free(dv0), free(dq_ref), free(dk_ref), free(dv_ref), free(dq_got), free(dk_got);
    free(dv_got), free(dq_again), free(dk_again), free(dv_again), free(out_again), free(lse_again);
}
#endif

static void test_cuda_matches_cpu(void) {
#ifndef TP_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found)");
#else
    if (cuda_device_count() == 0) SKIP("no GPU on this machine");
    static const struct attn_case cases[] = {
        {"one sequence", 4, 2, 64, {300}, 0},
        {"packed rows", 8, 2, 128, {50, 100, 50, 200, 7, 193}, 0},  // 3 rows of T = 200
        {"hd16", 2, 1, 16, {65}, 0},
        {"hd32 no gqa, length-1 sequences", 6, 6, 32, {1, 40, 1, 1, 70, 1, 23}, 0},
        {"long", 2, 1, 64, {1237, 811}, 0},
        {"hd128 gqa 3, packed", 6, 2, 128, {129, 64, 1, 190}, 0},
        {"hd64 gqa 7, packed", 14, 2, 64, {100, 33, 250}, 0},
        {"hd128 no gqa, partial tiles", 4, 4, 128, {31, 97, 2, 70}, 0},
        {"hd64 no gqa, many short", 3, 3, 64, {5, 17, 1, 64, 65, 3, 130}, 0},
        {"hd64 gqa 2, fewer than a tile", 4, 2, 64, {40}, 0},
        {"hd128 gqa 2, no seg_start", 4, 2, 128, {150}, 1},
        // sequences ending one query before a tile's edge (64; 32 queries at HD 128): the
        // tensor-core kernels' whole-tile test must still mask that tile
        {"hd64 gqa 2, ends before tile edges", 4, 2, 64, {127, 191, 66}, 0},
        {"hd128 gqa 2, ends before tile edges", 4, 2, 128, {95, 97}, 0},
    };
    worst_fwd = worst_bwd = 0;
    for (int t = 0; t < 2; t++) worst_fwd_tc[t] = worst_bwd_tc[t] = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_case(&cases[i], 0);
        // bf16 mode for the tensor-core paths; fp32 again right after, whatever happened
        CHECK(cuda_set_matmul_precision("bf16") == 0);
        for (int t = 0; t < 2; t++) {
            CHECK(cuda_set_attention_kernel(tc_kernels[t]) == 0);
            run_case(&cases[i], 1 + t);
        }
        CHECK(cuda_set_matmul_precision("fp32") == 0);
    }
    CHECK(cuda_set_attention_kernel("no such kernel") == -1);
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0)
        printf("# cuda attention on %s: max rel err fwd %.3g bwd %.3g; tensor cores (bf16): wmma fwd %.3g bwd %.3g, "
               "mma fwd %.3g bwd %.3g\n",
               name, worst_fwd, worst_bwd, worst_fwd_tc[0], worst_bwd_tc[0], worst_fwd_tc[1], worst_bwd_tc[1]);
#endif
}

#ifdef TP_HAVE_CUDA
// x [n] rounded to bf16 in place, and its bf16 bits in h.
static void round_to_bf16(float *x, uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = tp_f32_to_bf16(x[i]), x[i] = tp_bf16_to_f32(h[i]);
}

static int bits_equal(const void *a, const void *b, size_t bytes) { return !memcmp(a, b, bytes); }

// cuda_attention_backward_unrotated16 (the attention block's form: bf16 dq, dk, dv written,
// dq and dk through RoPE's backward) against what it stands for, computed here by the
// accumulating form into zeroed fp32 sums (g, device scratch of nq + 2 nkv floats) and
// cuda_rope_backward, rounded on the host: the same values (a zero's sign aside), every
// element written (outputs NaN-poisoned).
static void unrotated_case(const struct attn_case *c, const char *path, int N, const int32_t *seg,
                           const uint16_t *hdo, const uint16_t *ho, const float *d_lse, const uint16_t *hq,
                           const uint16_t *hk, const uint16_t *hv, const int32_t *sa, float *d_g) {
    const int NH = c->NH, KVH = c->KVH, HD = c->HD;
    const float scale = 1.0f / sqrtf((float)HD);
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD, ng = nq + 2 * nkv;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)N);
    float *inv_freq = malloc(sizeof(float) * (size_t)(HD / 2)), *ref = malloc(sizeof(float) * ng);
    uint16_t *got = malloc(sizeof(uint16_t) * ng);
    for (int n = 0; n < N; n++) pos[n] = 3 * (n - seg[n]) + 5;  // not the row index: pos, not n, must be read
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * i / HD);
    int32_t *d_pos = dev_from(pos, sizeof(int32_t) * (size_t)N);
    float *d_inv = dev_from(inv_freq, sizeof(float) * (size_t)(HD / 2));
    uint16_t *d_out = dev_alloc(sizeof(uint16_t) * ng);
    if (!d_pos || !d_inv || !d_out) goto done;
    float *gq = d_g, *gk = gq + nq, *gv = gk + nkv;
    cuda_memzero(d_g, sizeof(float) * ng);
    cuda_attention_backward_bf16(gq, gk, gv, hdo, ho, d_lse, hq, hk, hv, sa, N, NH, KVH, HD, scale);
    cuda_rope_backward(gq, d_pos, d_inv, N, NH, HD), cuda_rope_backward(gk, d_pos, d_inv, N, KVH, HD);
    cuda_download(ref, d_g, sizeof(float) * ng);
    // [dq | dk | dv] as three tensors, then as the attention block's one buffer: each token's
    // row of dq, dk and dv side by side (rows Q + 2 KV elements apart)
    const int Q = NH * HD, KV = KVH * HD, L = Q + 2 * KV;
    for (int joined = 0; joined < 2; joined++) {
        cudaMemset(d_out, 0xff, sizeof(uint16_t) * ng);
        if (joined)
            cuda_attention_backward_unrotated16(d_out, d_out + Q, d_out + Q + KV, L, L, hdo, ho, d_lse, hq, hk, hv,
                                                sa, d_pos, d_inv, N, NH, KVH, HD, scale);
        else
            cuda_attention_backward_unrotated16(d_out, d_out + nq, d_out + nq + nkv, Q, KV, hdo, ho, d_lse, hq, hk,
                                                hv, sa, d_pos, d_inv, N, NH, KVH, HD, scale);
        check_gpu("unrotated bf16 backward", c->name);
        CHECK_MSG(!strcmp(cuda_attention_last_path(), path), "case %s (unrotated): the backward pass ran %s, not %s",
                  c->name, cuda_attention_last_path(), path);
        cuda_download(got, d_out, sizeof(uint16_t) * ng);
        size_t bad = 0, first = ng;
        for (size_t i = 0; i < ng; i++) {  // i: the element of [dq | dk | dv]; at: where it is in d_out
            size_t at = i;
            if (joined) {
                const size_t part = i < nq ? 0 : i < nq + nkv ? 1 : 2, width = part ? (size_t)KV : (size_t)Q;
                const size_t e = i - (part ? nq + (part - 1) * nkv : 0), col = part ? Q + (part - 1) * KV : 0;
                at = e / width * L + col + e % width;
            }
            if (!(tp_bf16_to_f32(got[at]) == tp_bf16_to_f32(tp_f32_to_bf16(ref[i]))))
                bad++, first = first < i ? first : i;
        }
        CHECK_MSG(bad == 0,
                  "case %s (%s%s): %zu of %zu unrotated bf16 gradients differ (first at %zu of [dq | dk | dv])",
                  c->name, path, joined ? ", rows of one buffer" : "", bad, ng, first);
    }
done:
    cuda_free(d_pos), cuda_free(d_inv), cuda_free(d_out);
    check_gpu("free", c->name);
    free(pos), free(inv_freq), free(ref), free(got);
}

// The bf16-activation forms on inputs bf16 holds exactly, against the fp32 forms on the same
// values: the kernels stage identical bf16 tiles, so out must be the fp32 form's out rounded
// to bf16 and lse, dq, dk, dv (from the same dout, out, lse) the same bits. `path`: the
// kernels both must have run.
static void bf16_io_case(const struct attn_case *c, const char *path) {
    int N = 0, nseq = 0;
    while (c->lens[nseq]) N += c->lens[nseq++];
    const int NH = c->NH, KVH = c->KVH, HD = c->HD;
    const float scale = 1.0f / sqrtf((float)HD);
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD, nl = (size_t)N * NH;
    const size_t all = 3 * nq + 2 * nkv;  // q, dout, out, k, v
    int32_t *seg = malloc(sizeof(int32_t) * (size_t)N);
    for (int s = 0, n = 0; s < nseq; s++)
        for (int t = 0, first = n; t < c->lens[s]; t++) seg[n++] = first;
    float *x = malloc(sizeof(float) * all), *y = malloc(sizeof(float) * all);
    uint16_t *h = malloc(sizeof(uint16_t) * all), *out16 = malloc(sizeof(uint16_t) * nq);
    float *lse32 = malloc(sizeof(float) * nl), *lse16 = malloc(sizeof(float) * nl);
    float *g0 = malloc(sizeof(float) * (nq + 2 * nkv)), *g32 = malloc(sizeof(float) * (nq + 2 * nkv));
    float *g16 = malloc(sizeof(float) * (nq + 2 * nkv));
    fill(x, all), fill(g0, nq + 2 * nkv);
    round_to_bf16(x, h, all);
    // [q | dout | out | k | v] in both forms; out is written by the forward pass
    float *d_x = dev_from(x, sizeof(float) * all), *d_g = dev_alloc(sizeof(float) * (nq + 2 * nkv));
    uint16_t *d_h = dev_from(h, sizeof(uint16_t) * all);
    float *d_lse = dev_alloc(sizeof(float) * nl);
    int32_t *d_seg = dev_from(seg, sizeof(int32_t) * (size_t)N);
    if (!d_x || !d_g || !d_h || !d_lse || !d_seg) goto done;
    float *xq = d_x, *xdo = xq + nq, *xo = xdo + nq, *xk = xo + nq, *xv = xk + nkv;
    uint16_t *hq = d_h, *hdo = hq + nq, *ho = hdo + nq, *hk = ho + nq, *hv = hk + nkv;
    const int32_t *sa = c->no_seg ? NULL : d_seg;

    cudaMemset(d_lse, 0xff, sizeof(float) * nl);
    cuda_attention_forward(xo, d_lse, xq, xk, xv, sa, N, NH, KVH, HD, scale);
    cuda_download(y, d_x, sizeof(float) * all), cuda_download(lse32, d_lse, sizeof(float) * nl);
    cudaMemset(ho, 0xff, sizeof(uint16_t) * nq), cudaMemset(d_lse, 0xff, sizeof(float) * nl);
    cuda_attention_forward_bf16(ho, d_lse, hq, hk, hv, sa, N, NH, KVH, HD, scale);
    check_gpu("bf16 forward", c->name);
    CHECK_MSG(!strcmp(cuda_attention_last_path(), path), "case %s (bf16 activations): the forward pass ran %s, not %s",
              c->name, cuda_attention_last_path(), path);
    cuda_download(out16, ho, sizeof(uint16_t) * nq), cuda_download(lse16, d_lse, sizeof(float) * nl);
    size_t bad = 0;
    for (size_t i = 0; i < nq; i++) bad += out16[i] != tp_f32_to_bf16(y[2 * nq + i]);
    CHECK_MSG(bad == 0, "case %s (%s): %zu of %zu bf16 outputs are not the fp32 form's rounded", c->name, path, bad,
              nq);
    CHECK_MSG(bits_equal(lse16, lse32, sizeof(float) * nl) && max_rel_err(lse16, lse32, nl) == 0,
              "case %s (%s): lse differs from the fp32 form's (or is NaN)", c->name, path);

    // backward from the bf16 out (the fp32 form gets it widened) and the same lse
    for (size_t i = 0; i < nq; i++) y[2 * nq + i] = tp_bf16_to_f32(out16[i]);
    cuda_upload(xo, y + 2 * nq, sizeof(float) * nq);
    float *gq = d_g, *gk = gq + nq, *gv = gk + nkv;
    cuda_upload(d_g, g0, sizeof(float) * (nq + 2 * nkv));
    cuda_attention_backward(gq, gk, gv, xdo, xo, d_lse, xq, xk, xv, sa, N, NH, KVH, HD, scale);
    cuda_download(g32, d_g, sizeof(float) * (nq + 2 * nkv));
    cuda_upload(d_g, g0, sizeof(float) * (nq + 2 * nkv));
    cuda_attention_backward_bf16(gq, gk, gv, hdo, ho, d_lse, hq, hk, hv, sa, N, NH, KVH, HD, scale);
    check_gpu("bf16 backward", c->name);
    CHECK_MSG(!strcmp(cuda_attention_last_path(), path), "case %s (bf16 activations): the backward pass ran %s, not %s",
              c->name, cuda_attention_last_path(), path);
    cuda_download(g16, d_g, sizeof(float) * (nq + 2 * nkv));
    CHECK_MSG(bits_equal(g16, g32, sizeof(float) * (nq + 2 * nkv)),
              "case %s (%s): dq, dk, dv differ from the fp32 form's", c->name, path);
    CHECK_MSG(max_rel_err(g16, g32, nq + 2 * nkv) == 0, "case %s (%s): NaN in dq, dk, dv", c->name, path);
    unrotated_case(c, path, N, seg, hdo, ho, d_lse, hq, hk, hv, sa, d_g);
done:
    cuda_free(d_x), cuda_free(d_g), cuda_free(d_h), cuda_free(d_lse), cuda_free(d_seg);
    check_gpu("free", c->name);
    free(seg), free(x), free(y), free(h), free(out16), free(lse32), free(lse16), free(g0), free(g32), free(g16);
}
#endif

// The attention of a model keeping its activations in bf16 (cuda_attention_*_bf16): each
// tensor-core path in bf16 mode, and the fp32 copies for other head sizes and modes.
static void test_cuda_bf16_activations(void) {
#ifndef TP_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found)");
#else
    if (cuda_device_count() == 0) SKIP("no GPU on this machine");
    static const struct attn_case cases[] = {
        {"hd64 gqa 7, packed", 14, 2, 64, {100, 33, 250}, 0},
        {"hd128 gqa 3, packed", 6, 2, 128, {129, 64, 1, 190}, 0},
        {"hd128 no gqa, no seg_start", 2, 2, 128, {97}, 1},
        {"hd64 no gqa, packed", 2, 2, 64, {40, 90}, 0},
        {"hd32 gqa 2 (fp32 copies)", 4, 2, 32, {70, 11}, 0},
    };
    CHECK(cuda_set_matmul_precision("bf16") == 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int t = 0; t < 2; t++) {
            CHECK(cuda_set_attention_kernel(tc_kernels[t]) == 0);
            bf16_io_case(&cases[i], cases[i].HD == 32 ? "fp32" : tc_kernels[t]);
        }
    CHECK(cuda_set_matmul_precision("fp32") == 0);
    bf16_io_case(&cases[0], "fp32");  // fp32 mode: copies through the fp32 kernels at any head size
#endif
}

// N == 0 does nothing (the pointers are never touched); an unsupported head size is
// reported through cuda_take_error rather than computed wrong.
static void test_cuda_edges(void) {
#ifndef TP_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found)");
#else
    if (cuda_device_count() == 0) SKIP("no GPU on this machine");
    char err[512] = "";
    cuda_attention_forward(NULL, NULL, NULL, NULL, NULL, NULL, 0, 4, 2, 64, 0.125f);
    cuda_attention_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 4, 2, 64, 0.125f);
    CHECK_MSG(cuda_take_error(err, sizeof err) == 0, "N = 0: %s", err);
    float *buf = dev_alloc(sizeof(float) * 4 * 48);
    int32_t *seg = dev_alloc(sizeof(int32_t) * 4);
    if (buf && seg) {
        cuda_memzero(seg, sizeof(int32_t) * 4);
        cuda_attention_forward(buf, buf, buf, buf, buf, seg, 4, 1, 1, 48, 0.125f);
        err[0] = 0;
        CHECK(cuda_take_error(err, sizeof err) == -1);
        CHECK_CONTAINS(err, "head_dim");
    }
    cuda_free(buf), cuda_free(seg);
    CHECK_MSG(cuda_take_error(err, sizeof err) == 0, "%s", err);
#endif
}

#ifdef TP_HAVE_CUDA
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Seconds per call of the forward (bwd = 0) or backward pass, best of 3 after a warm-up.
// h: NULL, or bf16 copies of dout, out, q, k, v: the bf16-activation forms on them.
static double time_attention(int bwd, float *const *b, uint16_t *const *h, const int32_t *seg, int N, int NH, int KVH,
                             int HD) {
    const float scale = 1.0f / sqrtf((float)HD);
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now_s();
        if (bwd && h)
            cuda_attention_backward_bf16(b[0], b[1], b[2], h[0], h[1], b[5], h[2], h[3], h[4], seg, N, NH, KVH, HD,
                                         scale);
        else if (bwd)
            cuda_attention_backward(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], seg, N, NH, KVH, HD, scale);
        else if (h)
            cuda_attention_forward_bf16(h[1], b[5], h[2], h[3], h[4], seg, N, NH, KVH, HD, scale);
        else
            cuda_attention_forward(b[4], b[5], b[6], b[7], b[8], seg, N, NH, KVH, HD, scale);
        char err[512] = "";
        CHECK_MSG(cuda_take_error(err, sizeof err) == 0, "%s", err);
        if (rep) best = fmin(best, now_s() - t0);
    }
    return best;
}

// Not a check, a record: the speed of one causal sequence of 8192 tokens and of the same
// tokens packed as 16 sequences of 512 (which must cost far less), and of the attention
// shapes of Qwen2.5-0.5B (4 rows of 2048, NH=14 KVH=2 HD=64) and Qwen2.5-1.5B (2 rows of
// 2048, NH=12 KVH=2 HD=128), each on the fp32 path and in bf16 mode (tensor cores), in
// useful TFLOP/s (2 matrix products forward, 5 backward, over the keys each query sees).
// The tensor-core kernels are timed twice: on fp32 tensors (copied to bf16 each call) and
// on bf16 ones (what a model with bf16 activations runs: "bf16 io").
static void speed_case(int N, int NH, int KVH, int HD, int len) {
    const size_t nq = (size_t)N * NH * HD, nkv = (size_t)N * KVH * HD;
    // b: dq, dk, dv, dout, out, lse, q, k, v; h: bf16 dout, out, q, k, v
    const size_t sizes[9] = {nq, nkv, nkv, nq, nq, (size_t)N * NH, nq, nkv, nkv};
    float *b[9] = {0}, *host = malloc(sizeof(float) * nq);
    uint16_t *h[5] = {0}, *host16 = malloc(sizeof(uint16_t) * nq);
    int32_t *seg = malloc(sizeof(int32_t) * (size_t)N), *d_seg = dev_alloc(sizeof(int32_t) * (size_t)N);
    fill(host, nq);
    round_to_bf16(host, host16, nq);
    int ok = d_seg != NULL;
    for (int i = 0; i < 9; i++) {
        b[i] = dev_alloc(sizeof(float) * sizes[i]);
        if (b[i]) cuda_upload(b[i], host, sizeof(float) * sizes[i]);
        ok = ok && b[i];
    }
    for (int i = 0; i < 5; i++) {
        h[i] = dev_alloc(sizeof(uint16_t) * sizes[i + (i < 2 ? 3 : 4)]);
        if (h[i]) cuda_upload(h[i], host16, sizeof(uint16_t) * sizes[i + (i < 2 ? 3 : 4)]);
        ok = ok && h[i];
    }
    for (int n = 0; n < N; n++) seg[n] = n / len * len;
    if (ok) cuda_upload(d_seg, seg, sizeof(int32_t) * (size_t)N);
    for (int run = 0; ok && run < 5; run++) {  // fp32, then each tensor-core kernel, fp32 then bf16 io
        const int tc = (run + 1) / 2, io16 = run && run % 2 == 0;
        CHECK(cuda_set_matmul_precision(tc ? "bf16" : "fp32") == 0);
        if (tc) CHECK(cuda_set_attention_kernel(tc_kernels[tc - 1]) == 0);
        // The forward pass first: the backward pass needs its lse (finite probabilities).
        uint16_t *const *hh = io16 ? h : NULL;
        double tf = time_attention(0, b, hh, d_seg, N, NH, KVH, HD);
        double tb = time_attention(1, b, hh, d_seg, N, NH, KVH, HD);
        CHECK(cuda_set_matmul_precision("fp32") == 0);
        double pairs = (double)N / len * len * (len + 1) / 2;  // (query, key) pairs
        double flop = pairs * NH * HD * 2;                      // one matrix product
        printf("# cuda attention speed [%s%s], N=%d NH=%d KVH=%d HD=%d, sequences of %d: fwd %.2f ms %.1f TFLOP/s, "
               "bwd %.2f ms %.1f TFLOP/s\n",
               tc ? tc_kernels[tc - 1] : "fp32", io16 ? ", bf16 io" : "", N, NH, KVH, HD, len, tf * 1e3,
               2 * flop / tf * 1e-12, tb * 1e3, 5 * flop / tb * 1e-12);
    }
    for (int i = 0; i < 9; i++) cuda_free(b[i]);
    for (int i = 0; i < 5; i++) cuda_free(h[i]);
    cuda_free(d_seg);
    free(host), free(host16), free(seg);
}
#endif

static void test_cuda_speed(void) {
#ifndef TP_HAVE_CUDA
    SKIP("built without CUDA (nvcc not found)");
#else
    NEED_REAL_GPU();
    speed_case(8192, 8, 2, 128, 8192);
    speed_case(8192, 8, 2, 128, 512);
    speed_case(4 * 2048, 14, 2, 64, 2048);
    speed_case(2 * 2048, 12, 2, 128, 2048);
#endif
}

int main(void) {
    RUN(test_cuda_matches_cpu);
    RUN(test_cuda_bf16_activations);
    RUN(test_cuda_edges);
    RUN(test_cuda_speed);
    return TEST_SUMMARY();
}
