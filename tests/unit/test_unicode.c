// UTF-8 helpers: streaming prefix, lossy replacement as Rust's from_utf8_lossy, classes.
#include "test.h"
#include "unicode.h"

static void test_complete_prefix(void) {
    const char *emoji = "a\xF0\x9F\x98\x80";  // "a😀"
    for (size_t n = 1; n <= 5; n++) CHECK(tp_utf8_complete_prefix(emoji, n) == (n == 5 ? 5 : 1));
    CHECK(tp_utf8_complete_prefix("\xC3", 1) == 0);          // é unfinished
    CHECK(tp_utf8_complete_prefix("\xC3\xA9", 2) == 2);
    CHECK(tp_utf8_complete_prefix("x\xE0\x80", 3) == 3);      // E0 80 can never finish: nothing waits
    CHECK(tp_utf8_complete_prefix("x\xED\xA0", 3) == 3);      // a surrogate: never valid
    CHECK(tp_utf8_complete_prefix("x\xFF", 2) == 2);
}

static void lossy(const char *in, size_t n, const char *want) {
    tp_buf b = {0};
    tp_utf8_append_lossy(&b, in, n);
    tp_buf_putc(&b, 0);
    CHECK_STR(b.data, want);
    tp_buf_free(&b);
}

static void test_lossy(void) {
    lossy("ok", 2, "ok");
    lossy("a\xFF" "b", 3, "a\xEF\xBF\xBD" "b");
    lossy("\xF0\x9F\x98", 3, "\xEF\xBF\xBD");                       // one maximal subpart, one U+FFFD
    lossy("\xE0\x80\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // E0 80: no valid prefix
    lossy("\xC3\xA9\xC3", 3, "\xC3\xA9\xEF\xBF\xBD");
}

static void test_classes(void) {
    CHECK(tp_uc_class('a') == TP_UC_L && tp_uc_class('7') == TP_UC_N && tp_uc_class(' ') == TP_UC_SPACE);
    CHECK(tp_uc_class(0x85) == TP_UC_SPACE && tp_uc_class(0xA0) == TP_UC_SPACE && tp_uc_class(0x3000) == TP_UC_SPACE);
    CHECK(tp_uc_class(0x180E) == 0 && tp_uc_class(0xFEFF) == 0);  // not White_Space since Unicode 6.3 / format char
    CHECK(tp_uc_class(0x301) == TP_UC_M && tp_uc_class('!') == TP_UC_P && tp_uc_class('+') == TP_UC_S);
    CHECK(tp_uc_class(0x6570) == TP_UC_L && tp_uc_class(0x1F600) == TP_UC_S && tp_uc_class(0x0663) == TP_UC_N);
}

int main(void) {
    RUN(test_complete_prefix);
    RUN(test_lossy);
    RUN(test_classes);
    return TEST_SUMMARY();
}
