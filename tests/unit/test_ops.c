// The model core's CPU ops (kernels/ops.h, except linear): every forward against a
// direct double-precision reference written here, every backward against central finite
// differences taken in double through that reference (attention at larger sizes against
// an analytic double backward, itself checked by finite differences), the += semantics
// of the backward ops, packed rows, GQA, and bit-identical results for any thread count.
#include "cpu/cpu_ops.h"
#include "cpu/rope_table.h"
#include "ops.h"
#include "tensor.h"
#include "test.h"

#include <string.h>

#include <omp.h>
#include <stdint.h>

void exp_shift_inplace(float *x, float shift, long n);  // kernels/cpu/elementwise.c

// ---- helpers ----

static float *falloc(size_t n) { return malloc(sizeof(float) * (n ? n : 1)); }
static double *dalloc(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

static void fill(float *p, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * test_uniform());
}

static double *to_double(const float *p, size_t n) {
    double *d = dalloc(n);
    for (size_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}

// max |got - want| / max |want|: errors relative to the tensor's scale, so elements that
// cancel to near zero do not dominate.
static double rel_err(const float *got, const double *want, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - want[i]));
    return scale > 0 ? worst / scale : worst;
}

// Central differences of a scalar function of x (double) in every coordinate: grad [n].
typedef double (*loss_fn)(const double *x, void *ctx);
static void finite_diff(double *grad, double *x, size_t n, loss_fn f, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * fmax(1, fabs(x0));
        x[i] = x0 + h;
        double up = f(x, ctx);
        x[i] = x0 - h;
        double down = f(x, ctx);
        x[i] = x0;
        grad[i] = (up - down) / (2 * h);
    }
}

// ---- exp_shift_inplace, which softmax, cross-entropy and SwiGLU rest on ----

static float exp1(float x) {
    exp_shift_inplace(&x, 0, 1);
    return x;
}

static void test_exp(void) {
    enum { n = 200001 };
    float *x = falloc(n);
    for (int i = 0; i < n; i++) x[i] = (float)(-86.0 + 174.72 * i / (n - 1));
    double *want = to_double(x, n), worst = 0;
    for (int i = 0; i < n; i++) want[i] = exp((double)(x[i] - 0.5f));  // the op's argument is a float
    exp_shift_inplace(x, 0.5f, n);  // vector code
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs(x[i] - want[i]) / want[i]);
    CHECK_MSG(worst < 2.5e-7, "max relative error %.3g", worst);  // 2 ulp
    CHECK(exp1(0) == 1.0f);  // the scalar tail: the same arithmetic
    CHECK(exp1(-INFINITY) == 0 && exp1(-87) == 0 && exp1(-1e30f) == 0);
    CHECK(isinf(exp1(INFINITY)) && isinf(exp1(88.8f)) && isinf(exp1(1e30f)) && isfinite(exp1(88.72f)));
    CHECK(isnan(exp1(NAN)));
    free(x), free(want);
}

// ---- embedding ----

static void test_embedding(void) {
    const int N = 50, C = 70, V = 13;  // C: one full channel block and a partial one
    int32_t ids[50];
    for (int n = 0; n < N; n++) ids[n] = (int32_t)(test_rand() % V);
    ids[0] = 0, ids[1] = V - 1, ids[2] = ids[3] = ids[4] = 5;  // edges and repeats
    float *table = falloc((size_t)V * C), *out = falloc((size_t)N * C), *dout = falloc((size_t)N * C);
    float *dt = falloc((size_t)V * C), *dt0 = falloc((size_t)V * C);
    fill(table, (size_t)V * C, -1, 1);
    fill(dout, (size_t)N * C, -1, 1);
    embedding_forward(out, ids, table, N, C);
    for (int n = 0; n < N; n++) CHECK(!memcmp(out + n * C, table + ids[n] * C, sizeof(float) * C));

    // The gradient of sum(dout ∘ out) by the table, in double; start from non-zero to see +=.
    double *want = dalloc((size_t)V * C);
    fill(dt, (size_t)V * C, -1, 1);
    memcpy(dt0, dt, sizeof(float) * V * C);
    for (int i = 0; i < V * C; i++) want[i] = dt0[i];
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) want[ids[n] * C + c] += dout[n * C + c];
    embedding_backward(dt, dout, ids, N, C);
    CHECK_MSG(rel_err(dt, want, (size_t)V * C) < 1e-6, "%.3g", rel_err(dt, want, (size_t)V * C));
    embedding_backward(dt, dout, ids, N, C);  // twice: twice the gradient
    for (int i = 0; i < V * C; i++) want[i] = dt0[i] + 2 * (want[i] - dt0[i]);
    CHECK(rel_err(dt, want, (size_t)V * C) < 1e-6);
    free(table), free(out), free(dout), free(dt), free(dt0), free(want);
}

// ---- RMSNorm backward (the forward has its own test) ----

struct rms_ctx {
    int N, C, wrt_w;  // differentiate by x (0) or by the weight (1)
    const double *x, *w, *dout;
    double eps;
};

static double rms_loss(const double *p, void *vc) {
    struct rms_ctx *c = vc;
    const double *x = c->wrt_w ? c->x : p, *w = c->wrt_w ? p : c->w;
    double L = 0;
    for (int n = 0; n < c->N; n++) {
        double ss = 0;
        for (int j = 0; j < c->C; j++) ss += x[n * c->C + j] * x[n * c->C + j];
        double r = 1 / sqrt(ss / c->C + c->eps);
        for (int j = 0; j < c->C; j++) L += c->dout[n * c->C + j] * x[n * c->C + j] * r * w[j];
    }
    return L;
}

static void rmsnorm_case(int N, int C) {
    size_t nx = (size_t)N * C;
    float *x = falloc(nx), *w = falloc(C), *out = falloc(nx), *rstd = falloc(N), *dout = falloc(nx);
    float *dx = falloc(nx), *dw = falloc(C), *dx0 = falloc(nx), *dw0 = falloc(C);
    fill(x, nx, -2, 2), fill(w, C, 0.5, 1.5), fill(dout, nx, -1, 1);
    fill(dx0, nx, -1, 1), fill(dw0, C, -1, 1);
    memcpy(dx, dx0, sizeof(float) * nx), memcpy(dw, dw0, sizeof(float) * C);
    rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
    rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);

    double *xd = to_double(x, nx), *wd = to_double(w, C), *dd = to_double(dout, nx);
    double *gx = dalloc(nx), *gw = dalloc(C);
    struct rms_ctx ctx = {N, C, 0, xd, wd, dd, 1e-6};
    finite_diff(gx, xd, nx, rms_loss, &ctx);
    ctx.wrt_w = 1;
    finite_diff(gw, wd, C, rms_loss, &ctx);
    for (size_t i = 0; i < nx; i++) gx[i] += dx0[i];  // the op adds to what was there
    for (int i = 0; i < C; i++) gw[i] += dw0[i];
    CHECK_MSG(rel_err(dx, gx, nx) < 2e-5, "N=%d C=%d dx: %.3g", N, C, rel_err(dx, gx, nx));
    CHECK_MSG(rel_err(dw, gw, C) < 2e-5, "N=%d C=%d dweight: %.3g", N, C, rel_err(dw, gw, C));

    // Twice from zero: twice the parameter gradient; NULL dx skips it.
    memset(dw, 0, sizeof(float) * C);
    rmsnorm_backward(NULL, dw, dout, x, w, rstd, N, C);
    memcpy(dw0, dw, sizeof(float) * C);
    rmsnorm_backward(NULL, dw, dout, x, w, rstd, N, C);
    for (int i = 0; i < C; i++) gw[i] = 2.0 * dw0[i];
    CHECK(rel_err(dw, gw, C) < 1e-6);
    free(x), free(w), free(out), free(rstd), free(dout), free(dx), free(dw), free(dx0), free(dw0);
    free(xd), free(wd), free(dd), free(gx), free(gw);
}

// add_rmsnorm_forward is add_inplace then rmsnorm_forward, bit for bit, also when the sum
// is written over one of its inputs.
static void test_add_rmsnorm(void) {
    const int shapes[][2] = {{7, 130}, {300, 576}, {1, 1}};
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t nc = (size_t)N * C;
        float *a = falloc(nc), *b = falloc(nc), *w = falloc(C), *ref_sum = falloc(nc), *ref_out = falloc(nc);
        float *ref_rstd = falloc(N), *sum = falloc(nc), *out = falloc(nc), *rstd = falloc(N);
        fill(a, nc, -2, 2), fill(b, nc, -2, 2), fill(w, C, 0.5, 1.5);
        memcpy(ref_sum, a, nc * sizeof(float));
        add_inplace(ref_sum, b, (long)nc);
        rmsnorm_forward(ref_out, ref_rstd, ref_sum, w, N, C, 1e-6f);
        add_rmsnorm_forward(sum, out, rstd, a, b, w, N, C, 1e-6f);
        CHECK_MSG(!memcmp(sum, ref_sum, nc * 4) && !memcmp(out, ref_out, nc * 4) && !memcmp(rstd, ref_rstd, N * 4),
                  "N=%d C=%d: fused differs from add + rmsnorm", N, C);
        add_rmsnorm_forward(a, out, NULL, a, b, w, N, C, 1e-6f);  // sum over a
        CHECK_MSG(!memcmp(a, ref_sum, nc * 4) && !memcmp(out, ref_out, nc * 4), "N=%d C=%d: in place", N, C);
        free(a), free(b), free(w), free(ref_sum), free(ref_out), free(ref_rstd), free(sum), free(out), free(rstd);
    }
}

static void test_rmsnorm_backward(void) {
    rmsnorm_case(5, 37);
    rmsnorm_case(3, 130);
    rmsnorm_case(2, 1);
}

// ---- RoPE ----

// The reference rotation in double, with the angle as transformers makes it: the fp32
// product of position and frequency.
static void ref_rope(double *y, const double *x, const int32_t *pos, const float *inv_freq, int N, int H, int HD,
                     double sign) {
    int half = HD / 2;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < half; i++) {
                double a = (float)((float)pos[n] * inv_freq[i]), c = cos(a), s = sign * sin(a);
                const double *xr = x + ((size_t)n * H + h) * HD;
                double *yr = y + ((size_t)n * H + h) * HD;
                yr[i] = xr[i] * c - xr[i + half] * s;
                yr[i + half] = xr[i + half] * c + xr[i] * s;
            }
}

struct rope_ctx {
    int N, H, HD;
    const int32_t *pos;
    const float *inv_freq;
    const double *dout;
};

static double rope_loss(const double *x, void *vc) {
    struct rope_ctx *c = vc;
    size_t n = (size_t)c->N * c->H * c->HD;
    double *y = dalloc(n), L = 0;
    ref_rope(y, x, c->pos, c->inv_freq, c->N, c->H, c->HD, 1);
    for (size_t i = 0; i < n; i++) L += c->dout[i] * y[i];
    free(y);
    return L;
}

static void rope_case(int N, int H, int HD) {
    size_t nx = (size_t)N * H * HD;
    int32_t *pos = malloc(sizeof(int32_t) * N);
    float *inv = falloc(HD / 2), *x = falloc(nx), *g = falloc(nx);
    for (int n = 0; n < N; n++) pos[n] = n % 3 == 2 ? 4000 + n : n;  // large positions too
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(500000.0, -2.0 * i / HD);
    fill(x, nx, -2, 2), fill(g, nx, -1, 1);
    double *xd = to_double(x, nx), *gd = to_double(g, nx), *want = dalloc(nx);
    ref_rope(want, xd, pos, inv, N, H, HD, 1);
    rope_forward(x, pos, inv, N, H, HD);
    CHECK_MSG(rel_err(x, want, nx) < 1e-6, "N=%d H=%d HD=%d: %.3g", N, H, HD, rel_err(x, want, nx));

    struct rope_ctx ctx = {N, H, HD, pos, inv, gd};
    finite_diff(want, xd, nx, rope_loss, &ctx);
    rope_backward(g, pos, inv, N, H, HD);
    CHECK_MSG(rel_err(g, want, nx) < 1e-6, "backward N=%d H=%d HD=%d: %.3g", N, H, HD, rel_err(g, want, nx));
    // Forward then backward is the identity.
    for (size_t i = 0; i < nx; i++) x[i] = (float)xd[i];
    rope_forward(x, pos, inv, N, H, HD);
    rope_backward(x, pos, inv, N, H, HD);
    CHECK(rel_err(x, xd, nx) < 1e-6);
    free(pos), free(inv), free(x), free(g), free(xd), free(gd), free(want);
}

static void test_rope(void) {
    rope_case(7, 3, 10);
    rope_case(5, 2, 2);
    rope_case(3, 2, 160);  // more frequencies than one block of cos/sin
}

// From a table of the positions' cos and sin (the generator's decode): rope_forward's bits,
// on one thread and (300 tokens) several.
static void test_rope_table(void) {
    static const int shapes[][3] = {{7, 3, 10}, {5, 2, 2}, {3, 2, 160}, {8, 9, 64}, {300, 9, 64}, {70, 2, 128}};
    for (int s = 0; s < 6; s++) {
        int N = shapes[s][0], H = shapes[s][1], HD = shapes[s][2];
        size_t nx = (size_t)N * H * HD;
        int32_t *pos = malloc(sizeof(int32_t) * N);
        float *inv = falloc(HD / 2), *x = falloc(nx), *y = falloc(nx), *cs = falloc((size_t)N * HD);
        for (int n = 0; n < N; n++) pos[n] = n % 3 == 2 ? 4000 + 7 * n : n;
        for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(500000.0, -2.0 * i / HD);
        fill(x, nx, -2, 2);
        memcpy(y, x, sizeof(float) * nx);
        rope_forward(x, pos, inv, N, H, HD);
        rope_table(cs, pos, inv, N, HD);
        rope_apply(y, cs, N, H, HD);
        CHECK_MSG(!memcmp(x, y, sizeof(float) * nx), "N=%d H=%d HD=%d", N, H, HD);
        free(pos), free(inv), free(x), free(y), free(cs);
    }
}

// ---- SwiGLU ----

static double ref_silu_up(double g, double u) { return g / (1 + exp(-g)) * u; }

static void test_swiglu(void) {
    enum { N = 1003 };
    float gate[N], up[N], out[N], dout[N], dg[N], du[N];
    double want[N], wg[N], wu[N];
    fill(gate, N, -12, 12), fill(up, N, -2, 2), fill(dout, N, -1, 1);
    gate[0] = 100, gate[1] = -100, gate[2] = 89, gate[3] = -89, gate[4] = 0;  // exp overflows both ways
    for (int i = 0; i < N; i++) want[i] = ref_silu_up(gate[i], up[i]);
    swiglu_forward(out, gate, up, N);
    CHECK_MSG(rel_err(out, want, N) < 1e-6, "%.3g", rel_err(out, want, N));
    for (int i = 0; i < N; i++) {  // each output depends on its own gate and up only
        double g = gate[i], u = up[i], h = 1e-5 * fmax(1, fabs(g));
        wg[i] = dout[i] * (ref_silu_up(g + h, u) - ref_silu_up(g - h, u)) / (2 * h);
        wu[i] = dout[i] * (ref_silu_up(g, u + 1e-5) - ref_silu_up(g, u - 1e-5)) / 2e-5;
    }
    memset(dg, 0xff, sizeof dg), memset(du, 0xff, sizeof du);  // NaN: overwritten, not +=
    swiglu_backward(dg, du, dout, gate, up, N);
    CHECK_MSG(rel_err(dg, wg, N) < 1e-5, "dgate %.3g", rel_err(dg, wg, N));
    CHECK_MSG(rel_err(du, wu, N) < 1e-5, "dup %.3g", rel_err(du, wu, N));
    for (int i = 0; i < 4; i++) CHECK(isfinite(out[i]) && isfinite(dg[i]) && isfinite(du[i]));
}

static void test_add_inplace(void) {
    float x[37], y[37], x0[37];
    fill(x, 37, -1, 1), fill(y, 37, -1, 1);
    memcpy(x0, x, sizeof x);
    add_inplace(x, y, 37);
    for (int i = 0; i < 37; i++) CHECK(x[i] == x0[i] + y[i]);
}

// ---- cross-entropy ----

// sum over counted rows of lse - x[t] (double), and its gradient by the logits.
static double ref_ce(double *grad, const double *x, const int32_t *t, int n, int V) {
    double L = 0;
    for (int r = 0; r < n; r++) {
        const double *row = x + (size_t)r * V;
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, row[j]);
        for (int j = 0; j < V; j++) s += exp(row[j] - m);
        if (t[r] >= 0) L += m + log(s) - row[t[r]];
        if (grad)
            for (int j = 0; j < V; j++)
                grad[(size_t)r * V + j] = t[r] < 0 ? 0 : exp(row[j] - m) / s - (j == t[r]);
    }
    return L;
}

struct ce_ctx {
    const int32_t *t;
    int n, V;
};
static double ce_loss(const double *x, void *vc) {
    struct ce_ctx *c = vc;
    return ref_ce(NULL, x, c->t, c->n, c->V);
}

static void test_crossentropy_small(void) {
    enum { n = 7, V = 37 };
    int32_t t[n] = {0, -1, 36, 5, -100, 17, 17};
    float x[n * V];
    double fd[n * V];
    fill(x, n * V, -4, 4);
    x[5 * V + 17] = 30;  // a row whose target has probability ~1
    double *xd = to_double(x, n * V);
    struct ce_ctx ctx = {t, n, V};
    double want = ref_ce(NULL, xd, t, n, V);
    finite_diff(fd, xd, n * V, ce_loss, &ctx);
    for (int i = 0; i < n * V; i++) fd[i] *= 0.25;  // the op returns the gradient times scale
    double got = crossentropy_forward_backward(x, t, n, V, 0.25f);
    CHECK_MSG(fabs(got - want) < 1e-6 * fabs(want), "loss %.9g, want %.9g", got, want);
    CHECK_MSG(rel_err(x, fd, n * V) < 1e-5, "gradient %.3g", rel_err(x, fd, n * V));
    for (int j = 0; j < V; j++) CHECK(x[V + j] == 0 && x[4 * V + j] == 0);  // skipped rows: zeros
    free(xd);
}

static void test_crossentropy_large_vocab(void) {
    enum { n = 6, V = 5001 };
    int32_t t[n] = {4999, 0, -1, 2500, 5000, 1};
    float *x = falloc((size_t)n * V);
    fill(x, (size_t)n * V, -20, 20);
    for (int j = 0; j < V; j++) x[5 * V + j] = 1000 + x[5 * V + j];  // large logits: no overflow
    double *xd = to_double(x, (size_t)n * V), *grad = dalloc((size_t)n * V);
    double want = ref_ce(grad, xd, t, n, V);
    double got = crossentropy_forward_backward(x, t, n, V, 1.0f);
    CHECK_MSG(fabs(got - want) < 1e-6 * fabs(want), "loss %.9g, want %.9g", got, want);
    CHECK_MSG(rel_err(x, grad, (size_t)n * V) < 1e-6, "gradient %.3g", rel_err(x, grad, (size_t)n * V));
    // Every counted row's gradient sums to zero (softmax sums to one).
    for (int r = 0; r < n; r++) {
        double s = 0;
        for (int j = 0; j < V; j++) s += x[(size_t)r * V + j];
        CHECK_MSG(fabs(s) < 1e-5, "row %d sums to %.3g", r, s);
    }
    // A target past the vocabulary is NaN, not a read out of bounds.
    int32_t bad[1] = {V};
    CHECK(isnan(crossentropy_forward_backward(x, bad, 1, V, 1.0f)));
    free(x), free(xd), free(grad);
}

// ---- attention ----

struct attn {
    int N, NH, KVH, HD;
    const int32_t *seg;
    double scale;
};

// out [N, NH, HD], lse [N, NH] in double.
static void ref_attn_forward(double *out, double *lse, const double *q, const double *k, const double *v,
                             const struct attn *a) {
    int G = a->NH / a->KVH, HD = a->HD;
    double *s = dalloc((size_t)a->N);
    for (int n = 0; n < a->N; n++)
        for (int h = 0; h < a->NH; h++) {
            const double *qr = q + ((size_t)n * a->NH + h) * HD;
            double *o = out + ((size_t)n * a->NH + h) * HD, m = -INFINITY, sum = 0;
            int s0 = a->seg ? a->seg[n] : 0;
            for (int j = s0; j <= n; j++) {
                const double *kr = k + ((size_t)j * a->KVH + h / G) * HD;
                double d = 0;
                for (int c = 0; c < HD; c++) d += qr[c] * kr[c];
                s[j] = d * a->scale;
                m = fmax(m, s[j]);
            }
            for (int c = 0; c < HD; c++) o[c] = 0;
            for (int j = s0; j <= n; j++) {
                double p = exp(s[j] - m);
                sum += p;
                for (int c = 0; c < HD; c++) o[c] += p * v[((size_t)j * a->KVH + h / G) * HD + c];
            }
            for (int c = 0; c < HD; c++) o[c] /= sum;
            if (lse) lse[n * a->NH + h] = m + log(sum);
        }
    free(s);
}

// The analytic backward in double: dq, dk, dv (+=) from dout.
static void ref_attn_backward(double *dq, double *dk, double *dv, const double *dout, const double *q,
                              const double *k, const double *v, const struct attn *a) {
    int G = a->NH / a->KVH, HD = a->HD;
    double *p = dalloc((size_t)a->N), *dp = dalloc((size_t)a->N);
    for (int n = 0; n < a->N; n++)
        for (int h = 0; h < a->NH; h++) {
            size_t qi = ((size_t)n * a->NH + h) * HD;
            int s0 = a->seg ? a->seg[n] : 0;
            double m = -INFINITY, sum = 0, D = 0;
            for (int j = s0; j <= n; j++) {
                double d = 0;
                for (int c = 0; c < HD; c++) d += q[qi + c] * k[((size_t)j * a->KVH + h / G) * HD + c];
                p[j] = d * a->scale;
                m = fmax(m, p[j]);
            }
            for (int j = s0; j <= n; j++) sum += p[j] = exp(p[j] - m);
            for (int j = s0; j <= n; j++) {
                const double *vr = v + ((size_t)j * a->KVH + h / G) * HD;
                p[j] /= sum;
                dp[j] = 0;
                for (int c = 0; c < HD; c++) dp[j] += dout[qi + c] * vr[c];
                D += p[j] * dp[j];
            }
            for (int j = s0; j <= n; j++) {
                size_t ki = ((size_t)j * a->KVH + h / G) * HD;
                double ds = p[j] * (dp[j] - D) * a->scale;
                for (int c = 0; c < HD; c++) {
                    dq[qi + c] += ds * k[ki + c];
                    dk[ki + c] += ds * q[qi + c];
                    dv[ki + c] += p[j] * dout[qi + c];
                }
            }
        }
    free(p), free(dp);
}

struct attn_ctx {
    const struct attn *a;
    int wrt;  // 0 q, 1 k, 2 v
    const double *q, *k, *v, *dout;
};

static double attn_loss(const double *x, void *vc) {
    struct attn_ctx *c = vc;
    size_t no = (size_t)c->a->N * c->a->NH * c->a->HD;
    double *out = dalloc(no), L = 0;
    ref_attn_forward(out, NULL, c->wrt == 0 ? x : c->q, c->wrt == 1 ? x : c->k, c->wrt == 2 ? x : c->v, c->a);
    for (size_t i = 0; i < no; i++) L += c->dout[i] * out[i];
    free(out);
    return L;
}

// seg_start from segment lengths that sum to N.
static int32_t *segments(int N, const int *len) {
    int32_t *seg = malloc(sizeof(int32_t) * N);
    for (int n = 0, s = 0; n < N; s += *len++)
        for (int i = 0; i < *len; i++) seg[n++] = s;
    return seg;
}

struct attn_bufs {
    size_t nq, nk, nl;
    float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
};

static struct attn_bufs attn_alloc(const struct attn *a) {
    struct attn_bufs b;
    b.nq = (size_t)a->N * a->NH * a->HD, b.nk = (size_t)a->N * a->KVH * a->HD, b.nl = (size_t)a->N * a->NH;
    b.q = falloc(b.nq), b.k = falloc(b.nk), b.v = falloc(b.nk), b.out = falloc(b.nq), b.lse = falloc(b.nl);
    b.dout = falloc(b.nq), b.dq = calloc(b.nq, 4), b.dk = calloc(b.nk, 4), b.dv = calloc(b.nk, 4);
    fill(b.q, b.nq, -1.5, 1.5), fill(b.k, b.nk, -1.5, 1.5), fill(b.v, b.nk, -1, 1), fill(b.dout, b.nq, -1, 1);
    return b;
}

static void attn_free(struct attn_bufs *b) {
    free(b->q), free(b->k), free(b->v), free(b->out), free(b->lse), free(b->dout), free(b->dq), free(b->dk),
        free(b->dv);
}

static void attn_run(struct attn_bufs *b, const struct attn *a) {
    attention_forward(b->out, b->lse, b->q, b->k, b->v, a->seg, a->N, a->NH, a->KVH, a->HD, (float)a->scale);
    attention_backward(b->dq, b->dk, b->dv, b->dout, b->out, b->lse, b->q, b->k, b->v, a->seg, a->N, a->NH, a->KVH,
                       a->HD, (float)a->scale);
}

// Forward and backward against the double reference; finite differences too when fd.
static void attn_case(int N, const int *len, int NH, int KVH, int HD, bool fd) {
    int32_t *seg = len ? segments(N, len) : NULL;
    struct attn a = {N, NH, KVH, HD, seg, 1 / sqrt(HD)};
    a.scale = (float)a.scale;  // the op gets a float
    struct attn_bufs b = attn_alloc(&a);
    for (size_t i = 0; i < b.nq; i++) b.out[i] = NAN;  // every output is written
    attn_run(&b, &a);

    double *q = to_double(b.q, b.nq), *k = to_double(b.k, b.nk), *v = to_double(b.v, b.nk);
    double *dout = to_double(b.dout, b.nq), *out = dalloc(b.nq), *lse = dalloc(b.nl);
    double *dq = dalloc(b.nq), *dk = dalloc(b.nk), *dv = dalloc(b.nk);
    ref_attn_forward(out, lse, q, k, v, &a);
    ref_attn_backward(dq, dk, dv, dout, q, k, v, &a);
    char what[96];
    snprintf(what, sizeof what, "N=%d NH=%d KVH=%d HD=%d%s", N, NH, KVH, HD, len ? " packed" : "");
    CHECK_MSG(rel_err(b.out, out, b.nq) < 1e-5, "%s out %.3g", what, rel_err(b.out, out, b.nq));
    CHECK_MSG(rel_err(b.lse, lse, b.nl) < 1e-6, "%s lse %.3g", what, rel_err(b.lse, lse, b.nl));
    CHECK_MSG(rel_err(b.dq, dq, b.nq) < 2e-5, "%s dq %.3g", what, rel_err(b.dq, dq, b.nq));
    CHECK_MSG(rel_err(b.dk, dk, b.nk) < 2e-5, "%s dk %.3g", what, rel_err(b.dk, dk, b.nk));
    CHECK_MSG(rel_err(b.dv, dv, b.nk) < 2e-5, "%s dv %.3g", what, rel_err(b.dv, dv, b.nk));
    if (fd) {  // the analytic reference and the op against finite differences
        struct attn_ctx ctx = {&a, 0, q, k, v, dout};
        double *g = dalloc(b.nq);
        const float *ops[3] = {b.dq, b.dk, b.dv};
        const double *refs[3] = {dq, dk, dv};
        double *xs[3] = {q, k, v};
        for (ctx.wrt = 0; ctx.wrt < 3; ctx.wrt++) {
            size_t n = ctx.wrt ? b.nk : b.nq;
            finite_diff(g, xs[ctx.wrt], n, attn_loss, &ctx);
            double e = 0, scale = 0;
            for (size_t i = 0; i < n; i++) e = fmax(e, fabs(refs[ctx.wrt][i] - g[i])), scale = fmax(scale, fabs(g[i]));
            CHECK_MSG(e < 1e-7 * scale, "%s reference gradient %d: %.3g", what, ctx.wrt, e / scale);
            CHECK_MSG(rel_err(ops[ctx.wrt], g, n) < 2e-5, "%s gradient %d vs fd: %.3g", what, ctx.wrt,
                      rel_err(ops[ctx.wrt], g, n));
        }
        free(g);
    }
    attn_free(&b);
    free(seg), free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
}

static void test_attention_small_fd(void) {
    attn_case(23, (int[]){10, 8, 5}, 4, 2, 6, true);  // GQA 4:2, three segments
    attn_case(17, (int[]){9, 8}, 6, 2, 4, true);      // GQA 6:2, two segments
    attn_case(9, NULL, 2, 2, 2, true);                // plain multi-head, one causal sequence
    attn_case(5, (int[]){1, 1, 3}, 3, 1, 8, true);    // one-token segments, MQA
}

static void test_attention_tiles(void) {
    // Several 64-query and 64-key tiles, tiles cut by segment ends, head_dim with and
    // without a 16-wide remainder, a segment boundary inside a tile.
    attn_case(200, (int[]){130, 1, 69}, 6, 2, 32, false);
    attn_case(150, (int[]){70, 80}, 4, 2, 20, false);
    attn_case(100, (int[]){100}, 4, 4, 64, false);
}

// Changing keys and values of segment 2 leaves segments 1 and 3 bit for bit.
static void test_attention_segments_isolated(void) {
    const int N = 90, NH = 4, KVH = 2, HD = 16;
    int32_t *seg = segments(N, (int[]){40, 30, 20});
    struct attn a = {N, NH, KVH, HD, seg, 0.25};
    struct attn_bufs b = attn_alloc(&a), c = attn_alloc(&a);
    memcpy(c.q, b.q, sizeof(float) * b.nq), memcpy(c.k, b.k, sizeof(float) * b.nk);
    memcpy(c.v, b.v, sizeof(float) * b.nk), memcpy(c.dout, b.dout, sizeof(float) * b.nq);
    for (int n = 40; n < 70; n++)
        for (int i = 0; i < KVH * HD; i++) c.k[n * KVH * HD + i] += 1, c.v[n * KVH * HD + i] -= 1;
    attn_run(&b, &a);
    attn_run(&c, &a);
    size_t qrow = (size_t)NH * HD, krow = (size_t)KVH * HD;
    for (int r = 0; r < 2; r++) {  // segment 1 [0, 40) and segment 3 [70, 90)
        int n0 = r ? 70 : 0, n1 = r ? 90 : 40;
        size_t nq = (n1 - n0) * qrow, nk = (n1 - n0) * krow;
        CHECK(!memcmp(b.out + n0 * qrow, c.out + n0 * qrow, sizeof(float) * nq));
        CHECK(!memcmp(b.lse + n0 * NH, c.lse + n0 * NH, sizeof(float) * (n1 - n0) * NH));
        CHECK(!memcmp(b.dq + n0 * qrow, c.dq + n0 * qrow, sizeof(float) * nq));
        CHECK(!memcmp(b.dk + n0 * krow, c.dk + n0 * krow, sizeof(float) * nk));
        CHECK(!memcmp(b.dv + n0 * krow, c.dv + n0 * krow, sizeof(float) * nk));
    }
    CHECK(memcmp(b.out + 40 * qrow, c.out + 40 * qrow, sizeof(float) * 30 * qrow));  // segment 2 did change
    attn_free(&b), attn_free(&c);
    free(seg);
}

// The backward adds: from non-zero gradients the result is old + new, and two calls from
// zero give twice one call.
static void test_attention_accumulates(void) {
    const int N = 70, NH = 4, KVH = 2, HD = 16;
    int32_t *seg = segments(N, (int[]){50, 20});
    struct attn a = {N, NH, KVH, HD, seg, 0.25};
    struct attn_bufs b = attn_alloc(&a);
    attn_run(&b, &a);
    float *once[3] = {b.dq, b.dk, b.dv};
    size_t n[3] = {b.nq, b.nk, b.nk};
    double *want[3];
    for (int t = 0; t < 3; t++) {
        want[t] = dalloc(n[t]);
        for (size_t i = 0; i < n[t]; i++) want[t][i] = 2.0 * once[t][i];
    }
    attention_backward(b.dq, b.dk, b.dv, b.dout, b.out, b.lse, b.q, b.k, b.v, seg, N, NH, KVH, HD, 0.25f);
    for (int t = 0; t < 3; t++) {
        CHECK_MSG(rel_err(once[t], want[t], n[t]) < 1e-6, "gradient %d: %.3g", t, rel_err(once[t], want[t], n[t]));
        free(want[t]);
    }
    attn_free(&b);
    free(seg);
}

// ---- thread-count independence ----

struct snapshot {
    float *attn[5];
    float *ce, *rms_dx, *rms_dw, *emb, *sw;
    double loss;
};

static void run_all(struct snapshot *s) {
    test_rng_state = 0x1234567ULL;  // the same inputs for every run
    {
        const int N = 600, NH = 8, KVH = 2, HD = 24;
        int32_t *seg = segments(N, (int[]){300, 1, 200, 99});
        struct attn a = {N, NH, KVH, HD, seg, 0.2};
        struct attn_bufs b = attn_alloc(&a);
        attn_run(&b, &a);
        s->attn[0] = b.out, s->attn[1] = b.lse, s->attn[2] = b.dq, s->attn[3] = b.dk, s->attn[4] = b.dv;
        free(b.q), free(b.k), free(b.v), free(b.dout), free(seg);
    }
    {
        const int n = 150, V = 3001;
        int32_t t[150];
        for (int r = 0; r < n; r++) t[r] = r % 7 == 3 ? -1 : (int32_t)(test_rand() % V);
        s->ce = falloc((size_t)n * V);
        fill(s->ce, (size_t)n * V, -10, 10);
        s->loss = crossentropy_forward_backward(s->ce, t, n, V, 0.5f);
    }
    {
        const int N = 1500, C = 200;
        float *x = falloc((size_t)N * C), *w = falloc(C), *out = falloc((size_t)N * C), *rstd = falloc(N);
        float *dout = falloc((size_t)N * C);
        fill(x, (size_t)N * C, -2, 2), fill(w, C, 0, 2), fill(dout, (size_t)N * C, -1, 1);
        s->rms_dx = calloc((size_t)N * C, 4), s->rms_dw = calloc(C, 4);
        rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
        rmsnorm_backward(s->rms_dx, s->rms_dw, dout, x, w, rstd, N, C);
        int32_t *ids = malloc(sizeof(int32_t) * N);
        for (int n = 0; n < N; n++) ids[n] = (int32_t)(test_rand() % 50);
        s->emb = calloc((size_t)50 * C, 4);
        embedding_backward(s->emb, dout, ids, N, C);
        s->sw = falloc((size_t)N * C);
        swiglu_forward(s->sw, x, dout, (long)N * C);
        free(x), free(w), free(out), free(rstd), free(dout), free(ids);
    }
}

static void test_thread_count_independent(void) {
    int saved = omp_get_max_threads();
    struct snapshot one, many;
    omp_set_num_threads(1);
    run_all(&one);
    omp_set_num_threads(3);  // more threads than cores, and not a power of two
    run_all(&many);
    omp_set_num_threads(saved);
    size_t an = (size_t)600 * 8 * 24, ak = (size_t)600 * 2 * 24;
    size_t sizes[5] = {an, 600 * 8, an, ak, ak};
    for (int i = 0; i < 5; i++) CHECK_MSG(!memcmp(one.attn[i], many.attn[i], 4 * sizes[i]), "attention output %d", i);
    CHECK(one.loss == many.loss);
    CHECK(!memcmp(one.ce, many.ce, sizeof(float) * 150 * 3001));
    CHECK(!memcmp(one.rms_dx, many.rms_dx, sizeof(float) * 1500 * 200));
    CHECK(!memcmp(one.rms_dw, many.rms_dw, sizeof(float) * 200));
    CHECK(!memcmp(one.emb, many.emb, sizeof(float) * 50 * 200));
    CHECK(!memcmp(one.sw, many.sw, sizeof(float) * 1500 * 200));
    struct snapshot *s[2] = {&one, &many};
    for (int j = 0; j < 2; j++) {
        for (int i = 0; i < 5; i++) free(s[j]->attn[i]);
        free(s[j]->ce), free(s[j]->rms_dx), free(s[j]->rms_dw), free(s[j]->emb), free(s[j]->sw);
    }
}

// ---- the MLP block and training head with bf16 storage (tp_backend_cpu_act16's ops) ----

// x [n] rounded to bf16 in place; the bits into h.
static void round16(float *x, uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = tp_f32_to_bf16(x[i]), x[i] = tp_bf16_to_f32(h[i]);
}

// Every stored tensor bit for bit what the GPU's bf16 storage keeps: each [N, F] tensor
// and the logits and their gradient rounded as written and read back rounded, the fp32
// ops' arithmetic between.
static void test_bf16_storage_rounds_where_the_gpu_does(void) {
    enum { N = 5, C = 16, F = 24, V = 40 };
    float x[N * C], res[N * C], dout[N * C], wg[F * C], wu[F * C], wd[C * F], w[V * C];
    fill(x, N * C, -2, 2), fill(res, N * C, -1, 1), fill(dout, N * C, -1, 1);
    fill(wg, F * C, -0.5, 0.5), fill(wu, F * C, -0.5, 0.5), fill(wd, C * F, -0.5, 0.5), fill(w, V * C, -1, 1);
    // the twin
    uint16_t act[N * F], gate[N * F], up[N * F], dact[N * F], dgate[N * F], dup[N * F], z16[N * V], x16[N * C];
    float out[N * C], dx[N * C], dwg[F * C] = {0}, dwu[F * C] = {0}, dwd[C * F] = {0}, hdx[N * C], hdw[V * C] = {0};
    float xr[N * C];  // the MLP's input is stored in bf16 too (the attention block's ln2)
    memcpy(xr, x, sizeof x);
    round16(xr, x16, N * C);
    mlp_up_forward_bf16(act, gate, up, x16, wg, wu, N, C, F);
    mlp_down_forward_bf16(out, act, wd, res, N, F, C);
    mlp_backward_bf16(dx, dwg, dwu, dwd, dout, x16, act, gate, up, wg, wu, wd, dact, dgate, dup, N, C, F);
    int32_t target[N] = {3, -1, 39, 0, 17};
    double loss = head_loss_backward_bf16(hdx, hdw, x, w, target, z16, N, C, V, 0.5f);
    // the same by hand
    uint16_t b[N * V];
    float g[N * F], u[N * F], a[N * F], da[N * F], dg[N * F], du[N * F], want[N * C], zero_w[V * C] = {0};
    float wdwg[F * C] = {0}, wdwu[F * C] = {0}, wdwd[C * F] = {0}, z[N * V];
    linear_forward(g, xr, wg, NULL, N, C, F), linear_forward(u, xr, wu, NULL, N, C, F);
    round16(g, b, N * F);
    CHECK(!memcmp(b, gate, sizeof gate));
    round16(u, b, N * F);
    CHECK(!memcmp(b, up, sizeof up));
    swiglu_forward(a, g, u, N * F);
    round16(a, b, N * F);
    CHECK(!memcmp(b, act, sizeof act));
    linear_residual_forward(want, a, wd, NULL, res, N, F, C);
    CHECK(!memcmp(want, out, sizeof out));
    linear_backward_many(1, da, (float *[]){wdwd}, NULL, (const float *[]){dout}, a, (const float *[]){wd}, (int[]){C},
                         N, F);
    round16(da, b, N * F);
    CHECK(!memcmp(b, dact, sizeof dact) && !memcmp(wdwd, dwd, sizeof dwd));
    swiglu_backward(dg, du, da, g, u, N * F);
    round16(dg, b, N * F);
    CHECK(!memcmp(b, dgate, sizeof dgate));
    round16(du, b, N * F);
    CHECK(!memcmp(b, dup, sizeof dup));
    linear_backward_many(2, want, (float *[]){wdwg, wdwu}, NULL, (const float *[]){dg, du}, xr,
                         (const float *[]){wg, wu}, (int[]){F, F}, N, C);
    CHECK(!memcmp(want, dx, sizeof dx) && !memcmp(wdwg, dwg, sizeof dwg) && !memcmp(wdwu, dwu, sizeof dwu));
    linear_forward(z, x, w, NULL, N, C, V);
    round16(z, b, N * V);
    double want_loss = crossentropy_forward_backward(z, target, N, V, 0.5f);
    CHECK(want_loss == loss);
    round16(z, b, N * V);
    CHECK(!memcmp(b, z16, sizeof z16));
    linear_backward_many(1, want, (float *[]){zero_w}, NULL, (const float *[]){z}, x, (const float *[]){w}, (int[]){V},
                         N, C);
    CHECK(!memcmp(want, hdx, sizeof hdx) && !memcmp(zero_w, hdw, sizeof hdw));
}

// The bf16 twin of the attention block (attn_forward_bf16, attn_backward_bf16) against the
// same ops by hand, rounding where the GPU's bf16 storage rounds: ln; q, k, v as the
// products (q/k biases in bf16) store them; Qwen3's norms of the rounded q, k, rounded; q, k
// again after RoPE; att; ln2; datt; without the norms, dq, dk, dv after RoPE's backward.
// Every stored tensor, mid, d/d(x) and gradient bit for bit.
static void attn_bf16_case(bool qk_norm) {
    enum { N = 6, C = 16, NH = 2, KVH = 1, HD = 8, Q = NH * HD, KV = KVH * HD };
    float x[N * C], norm[C], norm2[C], wq[Q * C], wk[KV * C], wv[KV * C], wo[C * Q], bq[Q], bk[KV], bv[KV];
    float qn_w[HD], kn_w[HD], inv_freq[HD / 2], dres[N * C];
    fill(x, N * C, -2, 2), fill(norm, C, 0.5, 1.5), fill(norm2, C, 0.5, 1.5), fill(qn_w, HD, 0.5, 1.5);
    fill(kn_w, HD, 0.5, 1.5), fill(wq, Q * C, -0.5, 0.5), fill(wk, KV * C, -0.5, 0.5), fill(wv, KV * C, -0.5, 0.5);
    fill(wo, C * Q, -0.5, 0.5), fill(bq, Q, -1, 1), fill(bk, KV, -1, 1), fill(bv, KV, -1, 1), fill(dres, N * C, -1, 1);
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * i / HD);
    int32_t pos[N] = {0, 1, 2, 3, 0, 1}, seg[N] = {0, 0, 0, 0, 4, 4};
    const attn_weights w = {norm, wq, wk, wv, wo, bq, bk, bv, NULL, qk_norm ? qn_w : NULL, qk_norm ? kn_w : NULL};
    const attn_batch b = {N, C, NH, KVH, HD, 1e-6f, pos, seg, inv_freq};
    // the twin
    uint16_t ln[N * C], q_raw[N * Q], k_raw[N * KV], q[N * Q], k[N * KV], v[N * KV], att[N * Q], ln2[N * C];
    uint16_t datt[N * Q];
    float rstd[N], q_rstd[N * NH], k_rstd[N * KVH], lse[N * NH], mid[N * C], rstd2[N], d[N * C];
    float dln[N * C], dq[N * Q], dk[N * KV], dv[N * KV], dq_raw[N * Q], dk_raw[N * KV];
    float g[11][Q * C];
    memset(g, 0, sizeof g);
    const attn_acts a = {ln, rstd, q_raw, k_raw, q_rstd, k_rstd, q, k, v, att, lse};
    const attn_scratch sc = {datt, dln, dq, dk, dv, dq_raw, dk_raw, NULL};
    const attn_grads gr = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], NULL, g[9], g[10]};
    memcpy(d, dres, sizeof d);
    attn_forward_bf16(mid, ln2, rstd2, &a, x, &w, norm2, &b);
    attn_backward_bf16(d, &gr, &a, x, &w, &sc, &b);
    // by hand
    uint16_t h[N * Q];
    float tl[N * C], tq[N * Q], tk[N * KV], tv[N * KV], tn[N * Q], ta[N * Q], tlse[N * NH], tr[N], tqr[N * NH];
    float tkr[N * KVH], tmid[N * C], tl2[N * C], tr2[N], rb[Q + 2 * KV];
    float h_g[11][Q * C], hd[N * C], hdln[N * C], hdq[N * Q], hdk[N * KV], hdv[N * KV], hdqr[N * Q], hdkr[N * KV];
    float hdatt[N * Q], q_rr[N * Q], k_rr[N * KV];
    memset(h_g, 0, sizeof h_g);
    rmsnorm_forward(tl, tr, x, norm, N, C, 1e-6f);
    round16(tl, h, N * C);
    CHECK(!memcmp(h, ln, sizeof ln) && !memcmp(tr, rstd, sizeof rstd));
    memcpy(rb, bq, sizeof bq), memcpy(rb + Q, bk, sizeof bk), memcpy(rb + Q + KV, bv, sizeof bv);
    round16(rb, h, Q + 2 * KV);
    linear_forward(tq, tl, wq, rb, N, C, Q), linear_forward(tk, tl, wk, rb + Q, N, C, KV);
    linear_forward(tv, tl, wv, rb + Q + KV, N, C, KV);
    round16(tv, h, N * KV);
    CHECK(!memcmp(h, v, sizeof v));
    round16(tq, h, N * Q);
    CHECK(!qk_norm || !memcmp(h, q_raw, sizeof q_raw));
    memcpy(q_rr, tq, sizeof q_rr);
    round16(tk, h, N * KV);
    CHECK(!qk_norm || !memcmp(h, k_raw, sizeof k_raw));
    memcpy(k_rr, tk, sizeof k_rr);
    if (qk_norm) {
        rmsnorm_forward(tn, tqr, tq, qn_w, N * NH, HD, 1e-6f), memcpy(tq, tn, sizeof tq);
        rmsnorm_forward(tn, tkr, tk, kn_w, N * KVH, HD, 1e-6f), memcpy(tk, tn, sizeof tk);
        CHECK(!memcmp(tqr, q_rstd, sizeof q_rstd) && !memcmp(tkr, k_rstd, sizeof k_rstd));
    }
    round16(tq, h, N * Q), round16(tk, h, N * KV);
    rope_forward(tq, pos, inv_freq, N, NH, HD), rope_forward(tk, pos, inv_freq, N, KVH, HD);
    round16(tq, h, N * Q);
    CHECK(!memcmp(h, q, sizeof q));
    round16(tk, h, N * KV);
    CHECK(!memcmp(h, k, sizeof k));
    attention_forward(ta, tlse, tq, tk, tv, seg, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    round16(ta, h, N * Q);
    CHECK(!memcmp(h, att, sizeof att) && !memcmp(tlse, lse, sizeof lse));
    linear_forward(tmid, ta, wo, NULL, N, Q, C);
    add_rmsnorm_forward(tmid, tl2, tr2, tmid, x, norm2, N, C, 1e-6f);
    round16(tl2, h, N * C);
    CHECK(!memcmp(h, ln2, sizeof ln2) && !memcmp(tmid, mid, sizeof mid) && !memcmp(tr2, rstd2, sizeof rstd2));
    // backward
    memcpy(hd, dres, sizeof hd);
    linear_backward_many(1, hdatt, (float *[]){h_g[4]}, NULL, (const float *[]){hd}, ta, (const float *[]){wo},
                         (int[]){C}, N, Q);
    round16(hdatt, h, N * Q);
    CHECK(!memcmp(h, datt, sizeof datt));
    memset(hdq, 0, sizeof hdq), memset(hdk, 0, sizeof hdk), memset(hdv, 0, sizeof hdv);
    attention_backward(hdq, hdk, hdv, hdatt, ta, tlse, tq, tk, tv, seg, N, NH, KVH, HD, 1.0f / sqrtf((float)HD));
    rope_backward(hdq, pos, inv_freq, N, NH, HD), rope_backward(hdk, pos, inv_freq, N, KVH, HD);
    if (qk_norm) {
        memset(hdqr, 0, sizeof hdqr), memset(hdkr, 0, sizeof hdkr);
        rmsnorm_backward(hdqr, h_g[9], hdq, q_rr, qn_w, tqr, N * NH, HD);
        rmsnorm_backward(hdkr, h_g[10], hdk, k_rr, kn_w, tkr, N * KVH, HD);
        round16(hdqr, h, N * Q), round16(hdkr, h, N * KV);  // written in bf16, read by the products
    } else {  // dq, dk, dv stored in bf16 (and the products read them rounded)
        round16(hdq, h, N * Q);
        CHECK(!memcmp(h, dq, N * Q * 2));
        round16(hdk, h, N * KV);
        CHECK(!memcmp(h, dk, N * KV * 2));
        round16(hdv, h, N * KV);
        CHECK(!memcmp(h, dv, N * KV * 2));
        memcpy(hdqr, hdq, sizeof hdqr), memcpy(hdkr, hdk, sizeof hdkr);
    }
    linear_backward_many(3, hdln, (float *[]){h_g[1], h_g[2], h_g[3]}, (float *[]){h_g[5], h_g[6], h_g[7]},
                         (const float *[]){hdqr, hdkr, hdv}, tl, (const float *[]){wq, wk, wv}, (int[]){Q, KV, KV}, N,
                         C);
    rmsnorm_backward(hd, h_g[0], hdln, x, norm, tr, N, C);
    CHECK(!memcmp(hd, d, sizeof d));
    CHECK(!memcmp(h_g, g, sizeof g));
}

static void test_attn_bf16_rounds_where_the_gpu_does(void) {
    attn_bf16_case(true);
    attn_bf16_case(false);
}

int main(void) {
    RUN(test_exp);
    RUN(test_embedding);
    RUN(test_rmsnorm_backward);
    RUN(test_add_rmsnorm);
    RUN(test_rope);
    RUN(test_rope_table);
    RUN(test_swiglu);
    RUN(test_add_inplace);
    RUN(test_crossentropy_small);
    RUN(test_crossentropy_large_vocab);
    RUN(test_attention_small_fd);
    RUN(test_attention_tiles);
    RUN(test_attention_segments_isolated);
    RUN(test_attention_accumulates);
    RUN(test_thread_count_independent);
    RUN(test_bf16_storage_rounds_where_the_gpu_does);
    RUN(test_attn_bf16_rounds_where_the_gpu_does);
    return TEST_SUMMARY();
}
