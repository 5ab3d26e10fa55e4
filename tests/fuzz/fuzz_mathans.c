// libFuzzer target: the math answers module on arbitrary text. The first byte picks the
// extraction modes; the rest is split at the first 0x1f byte into a solution text and a
// gold answer. Checks what must hold whatever the input: a verdict in range, an extracted
// span inside the text, the same verdict twice (no hidden state), that an answer is never
// different from itself, and that one found equal to something is equal to itself.
#include "mathans.h"
#include "mathans_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool has_relation(const mtree *t) {
    for (int k = 0; k < t->n; k++)
        if (t->nd[k].op == M_REL) return true;
    return false;
}

// tp_math_equal parses s as it is: no \boxed to take the content of, nothing for trim() to drop.
static bool parsed_as_is(const char *s, size_t n) {
    static const char ends[] = " \t\n\r.,*$\\";
    return n && !memchr(ends, s[0], sizeof ends - 1) && !memchr(ends, s[n - 1], sizeof ends - 1) &&
           !memmem(s, n, "box", 3);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size == 0) return 0;
    tp_extract_mode modes[TP_EXTRACT_COUNT];
    int n_modes = 1 + data[0] % TP_EXTRACT_COUNT;
    for (int k = 0; k < n_modes; k++) modes[k] = (tp_extract_mode)((data[0] / 8 + k) % TP_EXTRACT_COUNT);
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const char *sep = memchr(text, 0x1f, len);
    size_t tlen = sep ? (size_t)(sep - text) : len;
    const char *gold = sep ? sep + 1 : text;
    size_t glen = sep ? len - tlen - 1 : len;

    size_t a = 0, alen = 0;
    int found = tp_math_extract(text, tlen, modes, n_modes, &a, &alen);
    if (found >= 0 && (a > tlen || alen > tlen - a || alen == 0)) abort();

    char pred[64];
    tp_math_verdict v1 = tp_math_verify(text, tlen, gold, glen, modes, n_modes, pred, sizeof pred);
    tp_math_verdict v2 = tp_math_verify(text, tlen, gold, glen, modes, n_modes, NULL, 0);
    if (v1 != v2 || v1 < TP_MATH_UNKNOWN || v1 > TP_MATH_EQUAL) abort();
    if (strlen(pred) >= sizeof pred) abort();

    tp_math_verdict e = tp_math_equal(gold, glen, text, tlen);
    if (e < TP_MATH_UNKNOWN || e > TP_MATH_EQUAL) abort();
    // Parsed twice, an answer must not differ from itself (the byte-equal shortcut is bypassed).
    static mtree t1, t2;
    if (tp_math_parse(gold, glen, &t1) == 0 && tp_math_parse(gold, glen, &t2) == 0 &&
        tp_math_compare_trees(&t1, &t2) == 0) {
        fprintf(stderr, "'%.*s' differs from itself\n", (int)glen, gold);
        abort();
    }
    // Judged equal to the text, it is equal to itself too. Not for relations: "0/0 = 5"
    // is 5 against "5" but its two sides are undefined everywhere; nor for DIFFERENT: "\{0/0\}" is
    // different from "\{1,2\}" by its size alone.
    bool same_bytes = glen == tlen && !memcmp(gold, text, glen);  // equal without being judged
    if (e == TP_MATH_EQUAL && !same_bytes && parsed_as_is(gold, glen) && parsed_as_is(text, tlen) &&
        tp_math_parse(gold, glen, &t1) == 0 &&
        tp_math_parse(gold, glen, &t2) == 0 && !has_relation(&t1) && tp_math_compare_trees(&t1, &t2) != 1) {
        fprintf(stderr, "'%.*s' is equal to '%.*s' but not to itself\n", (int)glen, gold, (int)tlen, text);
        abort();
    }
    return 0;
}
