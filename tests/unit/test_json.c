// Our JSON printer against libjq's own jv_dump_string (the oracle for `jq -c .`).
#include "json.h"
#include "test.h"

#include <stdbool.h>

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
                              -2.5e-3, 3.14159265358979, 2.718281828459045, 1.0 / 3, 2.0 / 3,
                              -1.2345678901234567e31, -9.8765432109876543e30, 1.2345678901234567e16};
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

static void test_longest_numbers_fit(void) {
    // The longest texts: 17 digits then 15 zeros, with a sign. Written into an exact-size
    // heap buffer, so ASan (make test SAN=1) catches any byte past TP_JSON_NUMBER_MAX.
    int longest = 0;
    for (int e = 15; e <= 33; e++) {
        for (int i = 0; i < 2000; i++) {
            double d = -(1 + test_uniform()) * pow(10, e);
            char *out = malloc(TP_JSON_NUMBER_MAX);
            int n = tp_json_format_number(out, d);
            CHECK(n < TP_JSON_NUMBER_MAX && (int)strlen(out) == n);
            if (n > longest) longest = n;
            free(out);
        }
    }
    CHECK(longest == 33);
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

// Parses text with ours and with libjq; both must agree on success and value.
static int parse_disagreements;
static void parse_both(const char *text, size_t n) {
    jv ours, ref;
    tp_err err;
    int rc = tp_json_parse(text, n, &ours, &err);
    char *z = strndup(text, n);
    ref = jv_parse_sized(z, (int)n);
    free(z);
    bool same = rc == 0 ? jv_is_valid(ref) && jv_equal(jv_copy(ours), jv_copy(ref)) : !jv_is_valid(ref);
    if (!same && parse_disagreements++ < 5) fprintf(stderr, "  parsers disagree on '%.*s' (%s)\n", (int)n, text, rc ? err.msg : "we accept");
    if (rc == 0) jv_free(ours);
    jv_free(ref);
}

static void test_parser_matches_jq(void) {
    parse_disagreements = 0;
    static const char *texts[] = {
        "{}", "[]", " [1, 2.5, -0, 0.1e1, 1E+2, -1e-400, 1e400, 123456789012345678901234567890] ",
        "{\"a\":1,\"b\":2,\"a\":3}", "\"\\ud83d\\ude00 \\u00e9 \\/ \\b\\f\\n\\r\\t \\\"\"", "\"\\udc00\"",
        "\"\xff\xfe invalid utf8 \xc3\"", "true", "false", "null", "[[[[[]]]]]", "{\"k\":{\"k\":[{}]}}",
        "0.30000000000000004", "2.2250738585072011e-308", "4.9406564584124654e-324", "9007199254740993",
        "1.7976931348623157e308", "-0.0", "1e22", "1e23", "123456789012345.6", "0.000001234567890123456789",
        "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "\"abc", "[", "{", "\"\\x\"", "\"\\u12\"",
        "\"\\ud800\"", "\"\\ud800\\u0041\"", "tru", "nul", "-", "1e", "1e+", "--1", "\"\x01\"", "1 2", "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) parse_both(texts[i], strlen(texts[i]));
    // jq 1.6 accepts these; JSON does not, and neither do we.
    static const char *lenient[] = {"1.", "01", "nan", "[1,2]]", ".5", "+1", "[-nan]"};
    for (size_t i = 0; i < sizeof lenient / sizeof lenient[0]; i++) {
        jv v;
        tp_err err;
        CHECK_MSG(tp_json_parse(lenient[i], strlen(lenient[i]), &v, &err) == -1, "accepted %s", lenient[i]);
    }
    // Random values printed by jq, then parsed by both.
    for (int i = 0; i < 20000; i++) {
        jv v = random_value(0);
        jv s = jv_dump_string(v, 0);
        parse_both(jv_string_value(s), (size_t)jv_string_length_bytes(jv_copy(s)));
        jv_free(s);
    }
    // Random decimal numbers of every length and exponent, the fast path's edges.
    char num[64];
    for (int i = 0; i < 200000; i++) {
        int digits = 1 + (int)(test_rand() % 20), exp = (int)(test_rand() % 80) - 40, n = 0;
        if (test_rand() & 1) num[n++] = '-';
        num[n++] = (char)('1' + test_rand() % 9);
        for (int d = 1; d < digits; d++) {
            if (d == 1 + (int)(test_rand() % digits)) num[n++] = '.';
            num[n++] = (char)('0' + test_rand() % 10);
        }
        n += snprintf(num + n, sizeof num - (size_t)n, "e%d", exp);
        parse_both(num, (size_t)n);
    }
    CHECK_MSG(parse_disagreements == 0, "%d disagreements", parse_disagreements);
}

static void test_parse_errors_name_the_column(void) {
    jv v;
    tp_err err;
    CHECK(tp_json_parse("{\"a\":1,}", 8, &v, &err) == -1);
    CHECK_STR(err.msg, "expected a string key in object at column 8");
    CHECK(tp_json_parse("[1 2]", 5, &v, &err) == -1);
    CHECK_STR(err.msg, "expected ',' or ']' in array at column 4");
    CHECK(tp_json_parse("{\"a\":\"b", 7, &v, &err) == -1);
    CHECK_STR(err.msg, "unfinished string at column 6");
    CHECK(tp_json_parse("nan", 3, &v, &err) == -1);
    CHECK_STR(err.msg, "invalid literal at column 1");
    CHECK(tp_json_parse("01", 2, &v, &err) == -1);
    CHECK_STR(err.msg, "unexpected text after the JSON value at column 2");
    char deep[2100];
    memset(deep, '[', 1050);
    memset(deep + 1050, ']', 1050);
    CHECK(tp_json_parse(deep, 2100, &v, &err) == -1);
    CHECK_STR(err.msg, "nested deeper than 1000 levels at column 1002");
    // Not NUL-terminated: the parser stops at len.
    CHECK(tp_json_parse("[1]garbage", 3, &v, &err) == 0);
    jv_free(v);
}

int main(void) {
    RUN(test_numbers_match_jq);
    RUN(test_longest_numbers_fit);
    RUN(test_strings_match_jq);
    RUN(test_nested_values_match_jq);
    RUN(test_parser_matches_jq);
    RUN(test_parse_errors_name_the_column);
    return TEST_SUMMARY();
}
