// Words, n-gram hashes, the u64 map and the repetition score (libcore/ngram.h).
#include "ngram.h"
#include "test.h"

static void words_of(const char *s, tp_words *w) {
    w->count = 0;
    tp_words_scan(w, s, strlen(s), 0);
}

static void test_words_split_and_fold(void) {
    tp_words w = {0};
    const char *s = "Hello, WORLD_1 foo-bar x2";
    words_of(s, &w);
    CHECK(w.count == 5);  // hello, world_1, foo, bar, x2
    CHECK(w.start[1] == 7 && w.end[1] == 14);
    CHECK(!strncmp(s + w.start[3], "bar", 3));
    tp_words v = {0};
    words_of("hello world_1 FOO BAR X2", &v);
    CHECK(v.count == 5);
    for (size_t i = 0; i < 5 && i < v.count; i++) CHECK(w.hash[i] == v.hash[i]);  // ASCII case folded
    CHECK(w.hash[0] != w.hash[2]);
    words_of("", &v);
    CHECK(v.count == 0);
    words_of("  ,.;  ", &v);
    CHECK(v.count == 0);
    tp_words_free(&w), tp_words_free(&v);
}

static void test_words_cjk_one_per_character(void) {
    tp_words w = {0};
    const char *s = "因此x=2答案是 Привет мир";
    words_of(s, &w);
    // 因 此 x 2 答 案 是 привет мир: ideographs are words of their own, Cyrillic runs are words
    CHECK_MSG(w.count == 9, "%zu words", w.count);
    CHECK(w.end[0] - w.start[0] == 3);
    CHECK(!strncmp(s + w.start[7], "Привет", w.end[7] - w.start[7]));
    // spans are offset by base when texts are scanned in parts
    tp_words_scan(&w, "tail", 4, 100);
    CHECK(w.count == 10 && w.start[9] == 100 && w.end[9] == 104);
    // an invalid byte separates words and is skipped
    words_of("ab\xff" "cd", &w);
    CHECK(w.count == 2);
    // the scripts textfilter.h's table calls CJK, also 々 and half-width kana, and Thai,
    // Lao and Khmer: a word per character; Hangul and Cyrillic put spaces between words
    words_of("人々ｶﾀ", &w);
    CHECK_MSG(w.count == 4, "%zu words", w.count);
    words_of("ภาษา ລາວ ខ្មែរ", &w);  // 4 Thai + 3 Lao letters; Khmer: 2 letters and a subscript mark
    CHECK_MSG(w.count >= 9, "%zu words", w.count);
    words_of("한국어 문장", &w);
    CHECK_MSG(w.count == 2, "%zu words", w.count);
    tp_words_free(&w);
}

static void test_hash64(void) {
    CHECK(tp_hash64("abc", 3, 0) == tp_hash64("abc", 3, 0));
    CHECK(tp_hash64("abc", 3, 0) != tp_hash64("abc", 3, 1));
    CHECK(tp_hash64("abc", 3, 0) != tp_hash64("abd", 3, 0));
    CHECK(tp_hash64("", 0, 0) != tp_hash64("\0", 1, 0));
    const char *long_text = "a text longer than eight bytes, hashed 8 at a time";
    CHECK(tp_hash64(long_text, strlen(long_text), 0) != tp_hash64(long_text, strlen(long_text) - 1, 0));
    uint64_t a[3] = {1, 2, 3}, b[3] = {3, 2, 1};
    CHECK(tp_ngram_hash(a, 3) != tp_ngram_hash(b, 3));  // order matters
    CHECK(tp_ngram_hash(a, 2) != tp_ngram_hash(a, 3));
}

static void test_u64map(void) {
    tp_u64map m = {0};
    uint64_t v = 0;
    CHECK(!tp_u64map_get(&m, 5, &v));
    CHECK(tp_u64map_add(&m, 0, 11, NULL));  // key 0 is allowed (stored as 1)
    CHECK(tp_u64map_get(&m, 0, &v) && v == 11);
    for (uint64_t k = 1; k <= 100000; k++) CHECK(tp_u64map_add(&m, k * 0x9e3779b97f4a7c15ull, k, NULL) || k == 0);
    CHECK(m.count == 100001);
    CHECK(!tp_u64map_add(&m, 777 * 0x9e3779b97f4a7c15ull, 1, &v) && v == 777);  // the first value stays
    CHECK(tp_u64map_get(&m, 99999 * 0x9e3779b97f4a7c15ull, &v) && v == 99999);
    CHECK(!tp_u64map_get(&m, 3, NULL));
    tp_u64map_reset(&m, 10);
    CHECK(m.count == 0 && m.cap == 64 && !tp_u64map_get(&m, 777 * 0x9e3779b97f4a7c15ull, NULL));
    CHECK(tp_u64map_add(&m, 42, 0, NULL) && !tp_u64map_add(&m, 42, 0, NULL));
    tp_u64map_free(&m);
}

static void test_repeat_fraction(void) {
    tp_words w = {0};
    tp_u64map scratch = {0};
    words_of("one two three four five six seven eight nine ten eleven twelve", &w);
    CHECK(tp_repeat_fraction(w.hash, w.count, 10, &scratch) == 0);
    CHECK(tp_repeat_fraction(w.hash, w.count, 13, &scratch) == 0);  // fewer words than n
    // ten distinct words three times: 21 10-grams, 10 distinct, 11 repeats
    words_of("a b c d e f g h i j A B C D E F G H I J a b c d e f g h i j", &w);
    double f = tp_repeat_fraction(w.hash, w.count, 10, &scratch);
    CHECK_MSG(fabs(f - 11.0 / 21.0) < 1e-12, "%g", f);
    // a loop scores near 1
    char loop[4000] = "";
    for (int i = 0; i < 60; i++) strcat(loop, "Wait, let me check that again. ");
    words_of(loop, &w);
    CHECK(tp_repeat_fraction(w.hash, w.count, 10, &scratch) > 0.95);
    tp_words_free(&w), tp_u64map_free(&scratch);
}

int main(void) {
    RUN(test_words_split_and_fold);
    RUN(test_words_cjk_one_per_character);
    RUN(test_hash64);
    RUN(test_u64map);
    RUN(test_repeat_fraction);
    return TEST_SUMMARY();
}
