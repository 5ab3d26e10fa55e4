// Our JSON printer against libjq's own jv_dump_string (the oracle for `jq -c .`).
#include "json.h"
#include "test.h"

#include <float.h>
#include <stdint.h>

static int mismatches;

static void compare(jv v) {
    jv ref = jv_dump_string(jv_copy(v), 0);
    tp_buf b = {0};
    tp_json_dump(&b, v);
    tp_buf_putc(&b, 0);
    if (strcmp(b.data, jv_string_value(ref)) != 0) {
        if (mismatches++ < 5) fprintf(stderr, "  mismatch: ours '%s' jq '%s'\n", b.data, jv_string_value(ref));
    }
    tp_buf_free(&b);
    jv_free(ref);
    jv_free(v);
}

static double bits_to_double(uint64_t u) {
    double d;
    memcpy(&d, &u, 8);
    return d;
}

static void test_numbers_match_jq(void) {
    mismatches = 0;
    const double special[] = {0.0, -0.0, 1, -1, 0.1, 0.2, 0.3, 1e15, 1e16, 1e17, 1e21, 1e22, 123456789012345678.0,
                              1e-4, 1e-5, 9.999e-5, 0.0001, 1.5e300, DBL_MAX, -DBL_MAX, DBL_MIN, 4.9e-324,
                              2.2250738585072009e-308, 9007199254740993.0, 999999999999999.9, 1e15 - 0.5,
                              INFINITY, -INFINITY, NAN, 5e-324, 1.7976931348623157e308, 0.5, 100, 1e100,
                              -2.5e-3, 3.14159265358979, 2.718281828459045, 1.0 / 3, 2.0 / 3};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) compare(jv_number(special[i]));
    for (int i = 0; i < 200000; i++) {
        double d;
        switch (i % 5) {
        case 0: do d = bits_to_double(test_rand()); while (isnan(d)); break;  // any double
        case 1: d = (double)(int64_t)(test_rand() >> (test_rand() % 64)) * (test_rand() & 1 ? 1 : -1); break;
        case 2: d = (double)(int64_t)(test_rand() % 2000001 - 1000000) / 1000.0; break;
        case 3: d = -test_uniform() * 20; break;  // log-prob like
        default: d = ldexp(test_uniform(), (int)(test_rand() % 200) - 100); break;
        }
        compare(jv_number(d));
    }
    CHECK_MSG(mismatches == 0, "%d numbers printed differently from jq", mismatches);
}

static void test_strings_match_jq(void) {
    mismatches = 0;
    // Every code point (surrogates excluded) in runs of 64, so each escape rule is hit.
    char s[64 * 4 + 1];
    for (uint32_t start = 0; start < 0x110000; start += 64) {
        size_t n = 0;
        for (uint32_t c = start; c < start + 64 && c < 0x110000; c++) {
            if (c >= 0xD800 && c < 0xE000) continue;
            if (c < 0x80) s[n++] = (char)c;
            else if (c < 0x800) { s[n++] = (char)(0xC0 | c >> 6); s[n++] = (char)(0x80 | (c & 63)); }
            else if (c < 0x10000) {
                s[n++] = (char)(0xE0 | c >> 12); s[n++] = (char)(0x80 | ((c >> 6) & 63)); s[n++] = (char)(0x80 | (c & 63));
            } else {
                s[n++] = (char)(0xF0 | c >> 18); s[n++] = (char)(0x80 | ((c >> 12) & 63));
                s[n++] = (char)(0x80 | ((c >> 6) & 63)); s[n++] = (char)(0x80 | (c & 63));
            }
        }
        compare(jv_string_sized(s, (int)n));
    }
    // Invalid UTF-8 becomes U+FFFD inside jv; both printers then agree.
    compare(jv_string_sized("a\xff\xfe b \xc3", 7));
    CHECK_MSG(mismatches == 0, "%d strings printed differently from jq", mismatches);
}

static jv random_value(int depth) {
    int kind = (int)(test_rand() % (depth > 3 ? 5 : 7));
    switch (kind) {
    case 0: return jv_null();
    case 1: return jv_bool(test_rand() & 1);
    case 2: return jv_number((double)(int)(test_rand() % 100000) / (test_rand() & 1 ? 1 : 7));
    case 3: case 4: {
        char s[16];
        int n = (int)(test_rand() % 15);
        for (int i = 0; i < n; i++) s[i] = (char)(1 + test_rand() % 126);
        return jv_string_sized(s, n);
    }
    case 5: {
        jv a = jv_array();
        int n = (int)(test_rand() % 6);
        for (int i = 0; i < n; i++) a = jv_array_append(a, random_value(depth + 1));
        return a;
    }
    default: {
        jv o = jv_object();
        int n = (int)(test_rand() % 6);
        for (int i = 0; i < n; i++) {
            char key[8];
            snprintf(key, sizeof key, "k%d", (int)(test_rand() % 10));
            o = jv_object_set(o, jv_string(key), random_value(depth + 1));
        }
        return o;
    }
    }
}

static void test_nested_values_match_jq(void) {
    mismatches = 0;
    const char *texts[] = {"{}", "[]", "{\"b\":1,\"a\":[1,2,{\"c\":null}],\"b\":3}", "[true,false,null,\"\\u0000\"]",
                           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\\n\\t\\\"there\\\"\"}]}"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) compare(jv_parse(texts[i]));
    for (int i = 0; i < 20000; i++) compare(random_value(0));
    CHECK_MSG(mismatches == 0, "%d values printed differently from jq", mismatches);
}

int main(void) {
    RUN(test_numbers_match_jq);
    RUN(test_strings_match_jq);
    RUN(test_nested_values_match_jq);
    return TEST_SUMMARY();
}
