#include "json.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int format_int(char *out, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    int len = 0;
    if (v < 0) out[len++] = '-';
    while (n) out[len++] = tmp[--n];
    out[len] = 0;
    return len;
}

// Shortest decimal digits that read back as d (d > 0, finite). Returns the digit
// count; *decpt is the decimal exponent such that d = 0.DIGITS × 10^decpt.
static int shortest_digits(double d, char digits[24], int *decpt) {
    char tmp[40];
    // Any double is recovered from 17 significant digits; if one with 15 or 16
    // digits round-trips, the correctly rounded one of that length does too, and a
    // normal double's 15-digit rounding, stripped of zeros, is its shortest form.
    // Subnormals carry fewer bits, so their search starts at one digit.
    for (int prec = d < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (prec == 17 || strtod(tmp, NULL) == d) break;
    }
    // tmp is "D.DDDDe±XX": collect digits, drop trailing zeros.
    int n = 0;
    const char *p = tmp;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[n++] = *p;
    while (n > 1 && digits[n - 1] == '0') n--;
    digits[n] = 0;
    *decpt = atoi(p + 1) + 1;
    return n;
}

int tp_json_format_number(char out[TP_JSON_NUMBER_MAX], double d) {
    if (isnan(d)) return (int)(memcpy(out, "null", 5), 4);
    if (d > DBL_MAX) d = DBL_MAX;
    if (d < -DBL_MAX) d = -DBL_MAX;
    if (d == 0) return signbit(d) ? (memcpy(out, "-0", 3), 2) : (memcpy(out, "0", 2), 1);
    // Integers below 1e15 print in full in either scheme; most numbers in our records are.
    if (fabs(d) < 1e15 && d == (double)(long long)d) return format_int(out, (long long)d);
    int len = 0;
    if (d < 0) { out[len++] = '-'; d = -d; }
    char digits[24];
    int decpt;
    int nd = shortest_digits(d, digits, &decpt);
    if (decpt <= -4 || decpt > nd + 15) {
        // Exponential, jq style: 1e+17, 1.5e-07 (at least two exponent digits).
        out[len++] = digits[0];
        if (nd > 1) {
            out[len++] = '.';
            memcpy(out + len, digits + 1, (size_t)nd - 1);
            len += nd - 1;
        }
        len += snprintf(out + len, TP_JSON_NUMBER_MAX - (size_t)len, "e%c%02d", decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
    } else if (decpt <= 0) {
        out[len++] = '0';
        out[len++] = '.';
        for (int i = 0; i < -decpt; i++) out[len++] = '0';
        memcpy(out + len, digits, (size_t)nd);
        len += nd;
    } else if (decpt >= nd) {
        memcpy(out + len, digits, (size_t)nd);
        len += nd;
        for (int i = nd; i < decpt; i++) out[len++] = '0';
    } else {
        memcpy(out + len, digits, (size_t)decpt);
        len += decpt;
        out[len++] = '.';
        memcpy(out + len, digits + decpt, (size_t)(nd - decpt));
        len += nd - decpt;
    }
    out[len] = 0;
    return len;
}

void tp_json_dump_string(tp_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    tp_buf_reserve(b, n + 2);
    b->data[b->len++] = '"';
    size_t run = 0;  // start of the pending run of bytes that need no escape
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        tp_buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0};
        int len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        tp_buf_append(b, esc, (size_t)len);
    }
    tp_buf_append(b, s + run, n - run);
    tp_buf_putc(b, '"');
}

void tp_json_dump(tp_buf *b, jv v) {
    switch (jv_get_kind(v)) {
    case JV_KIND_NULL: tp_buf_append(b, "null", 4); break;
    case JV_KIND_TRUE: tp_buf_append(b, "true", 4); break;
    case JV_KIND_FALSE: tp_buf_append(b, "false", 5); break;
    case JV_KIND_NUMBER: {
        tp_buf_reserve(b, TP_JSON_NUMBER_MAX);
        b->len += (size_t)tp_json_format_number(b->data + b->len, jv_number_value(v));
        break;
    }
    case JV_KIND_STRING: {
        jv s = jv_copy(v);
        tp_json_dump_string(b, jv_string_value(v), (size_t)jv_string_length_bytes(s));
        break;
    }
    case JV_KIND_ARRAY: {
        tp_buf_putc(b, '[');
        int n = jv_array_length(jv_copy(v));
        for (int i = 0; i < n; i++) {
            if (i) tp_buf_putc(b, ',');
            jv item = jv_array_get(jv_copy(v), i);
            tp_json_dump(b, item);
            jv_free(item);
        }
        tp_buf_putc(b, ']');
        break;
    }
    case JV_KIND_OBJECT: {
        tp_buf_putc(b, '{');
        bool first = true;
        for (int it = jv_object_iter(v); jv_object_iter_valid(v, it); it = jv_object_iter_next(v, it)) {
            if (!first) tp_buf_putc(b, ',');
            first = false;
            jv key = jv_object_iter_key(v, it);
            jv value = jv_object_iter_value(v, it);
            tp_json_dump(b, key);
            tp_buf_putc(b, ':');
            tp_json_dump(b, value);
            jv_free(key);
            jv_free(value);
        }
        tp_buf_putc(b, '}');
        break;
    }
    default:
        // An invalid value is a caller bug; print what jq would rather than crash.
        tp_buf_append(b, "null", 4);
    }
}

jv tp_json_get(jv obj, const char *key) {
    if (jv_get_kind(obj) != JV_KIND_OBJECT) return jv_invalid();
    return jv_object_get(jv_copy(obj), jv_string(key));
}

const char *tp_json_get_string(jv obj, const char *key) {
    jv v = tp_json_get(obj, key);
    const char *s = jv_get_kind(v) == JV_KIND_STRING ? jv_string_value(v) : NULL;
    jv_free(v);  // obj still holds a reference, so the string stays alive
    return s;
}

bool tp_json_get_bool(jv obj, const char *key, bool dflt) {
    jv v = tp_json_get(obj, key);
    jv_kind k = jv_get_kind(v);
    jv_free(v);
    return k == JV_KIND_TRUE ? true : k == JV_KIND_FALSE ? false : dflt;
}
