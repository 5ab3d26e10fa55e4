// A strict RFC 8259 JSON parser that builds libjq jv values.
//
// Why not jv_parse_sized: libjq 1.6's parser leaks a value on some malformed
// inputs (fixed in jq 1.7), quotes the whole input in its messages, needs NUL-
// terminated text, and parses numbers through a slow dtoa; JSONL reading is the
// hot path of cot-filter, reward and evaluate. The values built are the ones jq
// builds (same strings, numbers, key order and duplicate-key rule); the
// differential fuzz target checks that.
#include "json.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 1000 };

typedef struct parser {
    const char *start, *p, *end;
    const char *error;   // static message; NULL while fine
    const char *where;   // position of the error
    tp_buf scratch;      // unescaped string bytes
} parser;

static jv fail(parser *ps, const char *msg, const char *at) {
    if (!ps->error) {
        ps->error = msg;
        ps->where = at;
    }
    return jv_invalid();
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\t' || *ps->p == '\r')) ps->p++;
}

static int hex4(const char *s) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static void put_utf8(tp_buf *b, uint32_t c) {
    char out[4];
    int n;
    if (c < 0x80) out[0] = (char)c, n = 1;
    else if (c < 0x800) out[0] = (char)(0xC0 | c >> 6), out[1] = (char)(0x80 | (c & 63)), n = 2;
    else if (c < 0x10000)
        out[0] = (char)(0xE0 | c >> 12), out[1] = (char)(0x80 | ((c >> 6) & 63)), out[2] = (char)(0x80 | (c & 63)), n = 3;
    else
        out[0] = (char)(0xF0 | c >> 18), out[1] = (char)(0x80 | ((c >> 12) & 63)),
        out[2] = (char)(0x80 | ((c >> 6) & 63)), out[3] = (char)(0x80 | (c & 63)), n = 4;
    tp_buf_append(b, out, (size_t)n);
}

// At the opening quote. jv_string_sized replaces invalid UTF-8 with U+FFFD, as jq does.
static jv parse_string(parser *ps) {
    const char *s = ++ps->p;
    while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && (unsigned char)*ps->p >= 0x20) ps->p++;
    if (ps->p < ps->end && *ps->p == '"') {  // the common case: nothing to unescape
        jv v = jv_string_sized(s, (int)(ps->p - s));
        ps->p++;
        return v;
    }
    tp_buf *b = &ps->scratch;
    b->len = 0;
    tp_buf_append(b, s, (size_t)(ps->p - s));
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            return jv_string_sized(b->data ? b->data : "", (int)b->len);
        }
        if (c < 0x20) return fail(ps, "control characters (U+0000 to U+001F) must be escaped in strings", ps->p);
        if (c != '\\') {
            const char *run = ps->p;
            while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && (unsigned char)*ps->p >= 0x20) ps->p++;
            tp_buf_append(b, run, (size_t)(ps->p - run));
            continue;
        }
        if (ps->end - ps->p < 2) break;
        char e = ps->p[1];
        const char *esc = ps->p;
        ps->p += 2;
        switch (e) {
        case '"': tp_buf_putc(b, '"'); break;
        case '\\': tp_buf_putc(b, '\\'); break;
        case '/': tp_buf_putc(b, '/'); break;
        case 'b': tp_buf_putc(b, '\b'); break;
        case 'f': tp_buf_putc(b, '\f'); break;
        case 'n': tp_buf_putc(b, '\n'); break;
        case 'r': tp_buf_putc(b, '\r'); break;
        case 't': tp_buf_putc(b, '\t'); break;
        case 'u': {
            int u = ps->end - ps->p >= 4 ? hex4(ps->p) : -1;
            if (u < 0) return fail(ps, "invalid \\uXXXX escape", esc);
            ps->p += 4;
            uint32_t cp = (uint32_t)u;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                int lo = ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u' ? hex4(ps->p + 2) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return fail(ps, "invalid \\uXXXX\\uXXXX surrogate pair escape", esc);
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                cp = 0xFFFD;  // a lone low surrogate: jq stores the replacement character
            }
            put_utf8(b, cp);
            break;
        }
        default: return fail(ps, "invalid escape in string", esc);
        }
    }
    return fail(ps, "unfinished string", s - 1);
}

static const double exact_pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                     1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static jv parse_number(parser *ps) {
    const char *s = ps->p, *q = s;
    bool neg = q < ps->end && *q == '-';
    if (neg) q++;
    // Clinger's fast path: up to 15 significant digits and |exponent| <= 22 give one
    // correctly rounded operation. Everything else goes to strtod (also correctly rounded).
    uint64_t mant = 0;
    int digits = 0, frac = 0;
    if (q < ps->end && *q == '0') q++;
    else if (q < ps->end && *q >= '1' && *q <= '9')
        while (q < ps->end && *q >= '0' && *q <= '9') mant = mant * 10 + (uint64_t)(*q++ - '0'), digits++;
    else return fail(ps, "invalid number", s);
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') return fail(ps, "invalid number: digits must follow '.'", s);
        while (q < ps->end && *q >= '0' && *q <= '9') mant = mant * 10 + (uint64_t)(*q++ - '0'), digits++, frac++;
    }
    int exp = 0;
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        bool eneg = q < ps->end && *q == '-';
        if (q < ps->end && (*q == '-' || *q == '+')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') return fail(ps, "invalid number: digits must follow the exponent", s);
        while (q < ps->end && *q >= '0' && *q <= '9') {
            if (exp < 100000) exp = exp * 10 + (*q - '0');
            q++;
        }
        if (eneg) exp = -exp;
    }
    ps->p = q;
    int scale = exp - frac;
    if (digits <= 15 && scale >= -22 && scale <= 22) {
        double d = (double)mant;
        d = scale < 0 ? d / exact_pow10[-scale] : d * exact_pow10[scale];
        return jv_number(neg ? -d : d);
    }
    char tmp[64];
    size_t len = (size_t)(q - s);
    if (len < sizeof tmp) {
        memcpy(tmp, s, len);
        tmp[len] = 0;
        return jv_number(strtod(tmp, NULL));
    }
    char *big = strndup(s, len);
    double d = big ? strtod(big, NULL) : NAN;
    free(big);
    return jv_number(d);
}

static jv parse_value(parser *ps, int depth);

static jv parse_array(parser *ps, int depth) {
    const char *open = ps->p++;
    jv a = jv_array();
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return a;
    }
    for (;;) {
        jv v = parse_value(ps, depth + 1);
        if (!jv_is_valid(v)) break;
        a = jv_array_append(a, v);
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            return a;
        }
        fail(ps, ps->p < ps->end ? "expected ',' or ']' in array" : "unfinished array", ps->p < ps->end ? ps->p : open);
        break;
    }
    jv_free(a);
    return jv_invalid();
}

static jv parse_object(parser *ps, int depth) {
    const char *open = ps->p++;
    jv o = jv_object();
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return o;
    }
    for (;;) {
        skip_space(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            fail(ps, ps->p < ps->end ? "expected a string key in object" : "unfinished object", ps->p < ps->end ? ps->p : open);
            break;
        }
        jv key = parse_string(ps);
        if (!jv_is_valid(key)) break;
        skip_space(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            jv_free(key);
            fail(ps, ps->p < ps->end ? "expected ':' after object key" : "unfinished object", ps->p < ps->end ? ps->p : open);
            break;
        }
        ps->p++;
        jv v = parse_value(ps, depth + 1);
        if (!jv_is_valid(v)) {
            jv_free(key);
            break;
        }
        o = jv_object_set(o, key, v);
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            return o;
        }
        fail(ps, ps->p < ps->end ? "expected ',' or '}' in object" : "unfinished object", ps->p < ps->end ? ps->p : open);
        break;
    }
    jv_free(o);
    return jv_invalid();
}

static jv parse_literal(parser *ps, const char *word, jv value) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, word, n)) {
        ps->p += n;
        return value;
    }
    return fail(ps, "invalid literal", ps->p);
}

static jv parse_value(parser *ps, int depth) {
    skip_space(ps);
    if (ps->p >= ps->end) return fail(ps, "expected a value", ps->p);
    if (depth > MAX_DEPTH) return fail(ps, "nested deeper than 1000 levels", ps->p);
    switch (*ps->p) {
    case '{': return parse_object(ps, depth);
    case '[': return parse_array(ps, depth);
    case '"': return parse_string(ps);
    case 't': return parse_literal(ps, "true", jv_true());
    case 'f': return parse_literal(ps, "false", jv_false());
    case 'n': return parse_literal(ps, "null", jv_null());
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
        return fail(ps, "unexpected character", ps->p);
    }
}

int tp_json_parse(const char *text, size_t len, jv *out, tp_err *err) {
    parser ps = {.start = text, .p = text, .end = text + len};
    jv v = parse_value(&ps, 0);
    if (jv_is_valid(v)) {
        skip_space(&ps);
        if (ps.p < ps.end) {
            jv_free(v);
            v = fail(&ps, "unexpected text after the JSON value", ps.p);
        }
    }
    tp_buf_free(&ps.scratch);
    if (!jv_is_valid(v)) {
        if (ps.where >= ps.end) tp_err_set(err, "%s at end of input", ps.error);
        else tp_err_set(err, "%s at column %zu", ps.error, (size_t)(ps.where - ps.start) + 1);
        return -1;
    }
    *out = v;
    return 0;
}
