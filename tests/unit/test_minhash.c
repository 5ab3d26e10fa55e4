// MinHash signatures and LSH (libcore/minhash.h): the estimate follows the Jaccard
// similarity and LSH candidates follow the S-curve the header documents.
#include "minhash.h"
#include "test.h"

// Two sets of n elements sharing `common` of them: Jaccard common / (2n - common).
static void make_pair(uint64_t *a, uint64_t *b, size_t n, size_t common) {
    for (size_t i = 0; i < n; i++) {
        a[i] = tp_mix64(test_rand());
        b[i] = i < common ? a[i] : tp_mix64(test_rand());
    }
}

static void test_signature_basics(void) {
    enum { N = 1000 };
    static uint64_t a[N], b[N], sa[TP_MINHASH_K], sb[TP_MINHASH_K];
    make_pair(a, b, N, N);
    tp_minhash_sig(a, N, sa);
    for (size_t i = 0; i < N; i++) b[i] = a[N - 1 - i];  // order does not matter
    tp_minhash_sig(b, N, sb);
    CHECK(tp_minhash_similarity(sa, sb) == 1.0);
    memcpy(b, a, sizeof a);
    for (size_t i = 0; i < N / 2; i++) b[i] = a[0];  // repeats do not matter when the set is the same
    tp_minhash_sig(b, N, sb);
    uint64_t dedup[N];
    size_t nd = 0;
    dedup[nd++] = a[0];
    for (size_t i = N / 2; i < N; i++) dedup[nd++] = a[i];
    uint64_t sd[TP_MINHASH_K];
    tp_minhash_sig(dedup, nd, sd);
    CHECK(tp_minhash_similarity(sb, sd) == 1.0);
    make_pair(a, b, N, 0);
    tp_minhash_sig(a, N, sa), tp_minhash_sig(b, N, sb);
    CHECK(tp_minhash_similarity(sa, sb) < 0.05);
    // empty: all UINT64_MAX; tiny sets are densified (no bin left empty)
    tp_minhash_sig(a, 0, sa);
    CHECK(sa[0] == UINT64_MAX && sa[TP_MINHASH_K - 1] == UINT64_MAX);
    tp_minhash_sig(a, 3, sa);
    int empty = 0;
    for (int i = 0; i < TP_MINHASH_K; i++) empty += sa[i] == UINT64_MAX;
    CHECK(empty == 0);
}

static void test_estimate_tracks_jaccard(void) {
    enum { N = 2000 };
    static uint64_t a[N], b[N], sa[TP_MINHASH_K], sb[TP_MINHASH_K];
    const double targets[] = {0.2, 0.5, 0.8, 0.95};
    for (size_t t = 0; t < 4; t++) {
        // J = c / (2N - c)  =>  c = 2NJ / (1 + J)
        size_t common = (size_t)(2.0 * N * targets[t] / (1 + targets[t]) + 0.5);
        double sum = 0;
        for (int rep = 0; rep < 20; rep++) {
            make_pair(a, b, N, common);
            tp_minhash_sig(a, N, sa), tp_minhash_sig(b, N, sb);
            sum += tp_minhash_similarity(sa, sb);
        }
        double mean = sum / 20;  // the standard error of a mean of 20 is about 0.01
        CHECK_MSG(fabs(mean - targets[t]) < 0.04, "J %.2f: estimate %.3f", targets[t], mean);
    }
}

static void test_lsh_follows_s_curve(void) {
    CHECK(fabs(tp_lsh_probability(0.5, 16, 8) - 0.061) < 0.001);
    CHECK(fabs(tp_lsh_probability(0.7, 16, 8) - 0.613) < 0.001);
    CHECK(fabs(tp_lsh_probability(0.8, 16, 8) - 0.947) < 0.001);
    tp_lsh bad;
    CHECK(tp_lsh_init(&bad, 10, 10) < 0);
    enum { N = 1500, PAIRS = 200 };
    static uint64_t a[N], b[N], sa[TP_MINHASH_K], sb[TP_MINHASH_K];
    const double sims[] = {0.3, 0.7, 0.9};
    for (int t = 0; t < 3; t++) {
        size_t common = (size_t)(2.0 * N * sims[t] / (1 + sims[t]) + 0.5);
        int hits = 0;
        for (int p = 0; p < PAIRS; p++) {
            tp_lsh l;
            CHECK(tp_lsh_init(&l, 16, 8) == 0);
            make_pair(a, b, N, common);
            tp_minhash_sig(a, N, sa), tp_minhash_sig(b, N, sb);
            uint64_t match = 0;
            CHECK(!tp_lsh_query(&l, sa, true, 17, NULL));
            if (tp_lsh_query(&l, sb, false, 18, &match)) {
                hits++;
                CHECK(match == 17);
            }
            CHECK(tp_lsh_query(&l, sa, false, 0, NULL));  // an inserted text finds itself
            tp_lsh_free(&l);
        }
        double expect = tp_lsh_probability(sims[t], 16, 8), got = (double)hits / PAIRS;
        // binomial standard deviation over 200 pairs is at most 0.035; the MinHash estimate adds some
        CHECK_MSG(fabs(got - expect) < 0.12, "s %.1f: %d/%d candidates, S-curve says %.3f", sims[t], hits, PAIRS, expect);
    }
    tp_lsh l;
    tp_lsh_init(&l, 16, 8);
    tp_minhash_sig(a, 0, sa);  // an empty text is never a duplicate, and is not inserted
    CHECK(!tp_lsh_query(&l, sa, true, 1, NULL) && !tp_lsh_query(&l, sa, true, 1, NULL));
    tp_lsh_free(&l);
}

static void test_words_signature(void) {
    tp_words w = {0}, v = {0};
    uint64_t *scratch = NULL;
    size_t cap = 0;
    uint64_t sa[TP_MINHASH_K], sb[TP_MINHASH_K];
    const char *text = "To find the sum we add the ones digits first, then the tens digits, carrying one "
                       "whenever the column sum is ten or more; finally we read off the hundreds.";
    tp_words_scan(&w, text, strlen(text), 0);
    tp_words_scan(&v, text, strlen(text), 0);
    tp_minhash_words(&w, 5, &scratch, &cap, sa);
    tp_minhash_words(&v, 5, &scratch, &cap, sb);
    CHECK(tp_minhash_similarity(sa, sb) == 1.0);
    v.count = 0;  // a short text (fewer words than the shingle) is one shingle of all its words
    tp_words_scan(&v, "two words", 9, 0);
    tp_minhash_words(&v, 5, &scratch, &cap, sb);
    CHECK(sb[0] != UINT64_MAX && tp_minhash_similarity(sa, sb) < 0.1);
    free(scratch);
    tp_words_free(&w), tp_words_free(&v);
}

int main(void) {
    RUN(test_signature_basics);
    RUN(test_estimate_tracks_jaccard);
    RUN(test_lsh_follows_s_curve);
    RUN(test_words_signature);
    return TEST_SUMMARY();
}
