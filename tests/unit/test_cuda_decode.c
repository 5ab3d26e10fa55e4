// The CUDA kernels of KV-cache generation against their CPU twins (kernels/ops.h):
// attention_decode within 1e-5 relative (max |err| / max |ref|) on random caches, for
// the decode step (one token per sequence, few or many sequences: the split-over-keys
// path and the one block per (token, kv head) path) and prefill-like calls (thousands
// of tokens, each with its own len); scatter_rows exactly. Outputs start as NaN so an
// element a kernel never writes fails; head dims that are not a multiple of 32 through
// the simple kernel. Skipped without a GPU.
#include "cuda_test.h"
#include "ops.h"

#ifdef TP_HAVE_CUDA
static double worst_seen;

static float *rnd(size_t n) {
    float *p = malloc(n * sizeof *p + 4);
    fill_uniform(p, n, -2, 2);
    return p;
}

// n tokens against a cache of `slots` sequences of cap rows each; token i reads slot
// i % slots from its start, len[i] rows (lens cycles through the given list).
static void decode_case(int NH, int KVH, int HD, int n, int slots, int cap, const int *lens, int nlens) {
    size_t rows = (size_t)slots * cap, kv = rows * KVH * HD, nq = (size_t)n * NH * HD;
    float *q = rnd(nq), *k = rnd(kv), *v = rnd(kv), *out = malloc(nq * sizeof *out);
    int32_t *row0 = malloc(n * sizeof *row0), *len = malloc(n * sizeof *len);
    for (int i = 0; i < n; i++) {
        row0[i] = (int32_t)((i % slots) * cap);
        len[i] = lens[i % nlens];
    }
    float scale = 1.0f / sqrtf((float)HD);
    attention_decode(out, q, k, v, row0, len, n, NH, KVH, HD, scale);
    float *d_q = dev_copy(q, nq * 4), *d_k = dev_copy(k, kv * 4), *d_v = dev_copy(v, kv * 4);
    float *d_out = dev_poisoned(nq);
    int32_t *d_row0 = dev_copy(row0, n * sizeof *row0), *d_len = dev_copy(len, n * sizeof *len);
    cuda_attention_decode(d_out, d_q, d_k, d_v, d_row0, d_len, n, NH, KVH, HD, scale);
    CHECK_CUDA_OK();
    float *got = host_of(d_out, nq);
    double e = max_rel(got, out, nq);
    if (e > worst_seen) worst_seen = e;
    CHECK_MSG(e <= 1e-5, "attention_decode NH %d KVH %d HD %d n %d (len %d..): max rel err %.3g", NH, KVH, HD, n,
              lens[0], e);
    free(q), free(k), free(v), free(out), free(row0), free(len), free(got);
    cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_out), cuda_free(d_row0), cuda_free(d_len);
}

static const int shapes[][3] = {{14, 2, 64}, {16, 8, 128}, {4, 4, 64}, {12, 2, 128}};
static const int lens[] = {1, 31, 32, 33, 300, 129, 7, 257, 128, 64, 200, 95};

// Decode steps: n = 1 and 7 and 64 sequences (split over keys on any GPU with >= 8 SMs).
static void test_decode_step(void) {
    NEED_GPU();
    for (int s = 0; s < 4; s++) {
        const int *sh = shapes[s];
        for (int l = 0; l < 5; l++) decode_case(sh[0], sh[1], sh[2], 1, 6, 300, lens + l, 1);
        decode_case(sh[0], sh[1], sh[2], 7, 6, 300, lens, 12);
        decode_case(sh[0], sh[1], sh[2], 64, 6, 300, lens, 12);
    }
    // empty sequences in a split launch: zeros, and their pairs' counters never move
    const int with_empty[] = {0, 300, 0, 45};
    decode_case(14, 2, 64, 4, 4, 300, with_empty, 4);
    decode_case(14, 2, 64, 1, 1, 300, with_empty, 1);
}

// Many tokens (one block per (token, kv head), no split) and prefill-like calls where
// each token of a slot has its own len.
static void test_decode_many_tokens(void) {
    NEED_GPU();
    for (int s = 0; s < 4; s++) decode_case(shapes[s][0], shapes[s][1], shapes[s][2], 1200, 6, 300, lens, 12);
    int prefill[300];
    for (int i = 0; i < 300; i++) prefill[i] = i + 1;  // token i of the prompt sees rows 0..i
    decode_case(14, 2, 64, 4096, 6, 300, prefill, 300);
    decode_case(16, 8, 128, 600, 2, 300, prefill, 300);
}

// Long sequences: n = 1 with ~3000 keys is split into many chunks and merged.
static void test_decode_split_long(void) {
    NEED_GPU();
    const int long_lens[] = {3000, 2999, 1, 2048};
    decode_case(14, 2, 64, 1, 1, 3000, long_lens, 1);
    decode_case(14, 2, 64, 1, 1, 3000, long_lens + 1, 1);
    decode_case(16, 8, 128, 1, 1, 3000, long_lens, 1);
    decode_case(12, 2, 128, 3, 3, 3000, long_lens, 4);
    decode_case(14, 2, 64, 64, 1, 3000, long_lens, 4);
}

// Other head dims (vector widths 1, 2 and 4 per lane) and groups above 8 query heads.
static void test_decode_other_shapes(void) {
    NEED_GPU();
    const int other[][3] = {{24, 2, 96}, {8, 1, 256}, {16, 1, 32}, {6, 2, 192}, {40, 8, 160}, {7, 1, 224}, {2, 1, 256}};
    for (int s = 0; s < 7; s++) {
        decode_case(other[s][0], other[s][1], other[s][2], 5, 6, 300, lens, 12);
        decode_case(other[s][0], other[s][1], other[s][2], 700, 6, 300, lens, 12);
    }
}

// Head dims that are not a multiple of 32 (the tiny test models: 8, 16) take the simple
// kernel; so do buffers that are not 16-byte aligned.
static void test_decode_any_head_dim(void) {
    NEED_GPU();
    const int any[][3] = {{4, 2, 16}, {4, 2, 8}, {6, 3, 48}, {2, 1, 200}, {3, 3, 1}};
    for (int s = 0; s < 5; s++) {
        decode_case(any[s][0], any[s][1], any[s][2], 5, 6, 300, lens, 12);
        decode_case(any[s][0], any[s][1], any[s][2], 300, 6, 300, lens, 12);
    }
}

static void test_decode_bad_head_dim(void) {
    NEED_GPU();
    float *d = dev_poisoned(64);
    int32_t one[1] = {1}, *d_one = dev_copy(one, sizeof one);
    cuda_attention_decode(d, d, d, d, d_one, d_one, 1, 1, 1, 300, 1.0f);
    char err[512];
    CHECK(cuda_take_error(err, sizeof err) == -1);
    CHECK_CONTAINS(err, "HD 300");
    CHECK_CUDA_OK();  // the error was taken: nothing left
    cuda_free(d), cuda_free(d_one);
}

static void test_scatter_rows(void) {
    NEED_GPU();
    const int cases[][3] = {{300, 128, 57}, {1000, 33, 200}, {64, 1024, 64}, {5, 6, 1}};  // rows N, C, n
    for (int t = 0; t < 4; t++) {
        int N = cases[t][0], C = cases[t][1], n = cases[t][2];
        int32_t *idx = malloc(n * sizeof *idx);
        for (int i = 0; i < n; i++) idx[i] = (int32_t)(((long)i * 97 + 11) % N);  // distinct: 97 is coprime to every N here
        float *src = rnd((size_t)n * C), *dst = malloc((size_t)N * C * 4);
        for (size_t j = 0; j < (size_t)N * C; j++) dst[j] = NAN;  // unscattered rows stay NaN on both sides
        float *d_dst = dev_poisoned((size_t)N * C), *d_src = dev_copy(src, (size_t)n * C * 4);
        int32_t *d_idx = dev_copy(idx, n * sizeof *idx);
        scatter_rows(dst, src, idx, n, C);
        cuda_scatter_rows(d_dst, d_src, d_idx, n, C);
        CHECK_CUDA_OK();
        float *got = host_of(d_dst, (size_t)N * C);
        CHECK_MSG(max_rel(got, dst, (size_t)N * C) == 0, "scatter_rows N %d C %d n %d differs", N, C, n);
        free(idx), free(src), free(dst), free(got);
        cuda_free(d_dst), cuda_free(d_src), cuda_free(d_idx);
    }
    char name[256];
    if (cuda_device_describe(name, sizeof name) == 0)
        printf("# cuda decode on %s: worst max rel err %.3g\n", name, worst_seen);
}
#else
static void test_no_cuda(void) { NEED_GPU(); }
#endif

int main(void) {
#ifdef TP_HAVE_CUDA
    RUN(test_decode_step);
    RUN(test_decode_many_tokens);
    RUN(test_decode_split_long);
    RUN(test_decode_other_shapes);
    RUN(test_decode_any_head_dim);
    RUN(test_decode_bad_head_dim);
    RUN(test_scatter_rows);
#else
    RUN(test_no_cuda);
#endif
    return TEST_SUMMARY();
}
