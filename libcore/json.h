// json.h — parsing and printing jv values as compact JSON, fast.
//
// The output is byte-for-byte what libjq's jv_dump_string(v, 0) (and so `jq -c .`)
// prints — same key order, escapes and number format — at several times its speed,
// which matters when a record carries thousands of token ids or log-probs.
// NaN prints as null and ±Inf as ±1.7976931348623157e+308, as jq does.
#ifndef TP_JSON_H
#define TP_JSON_H

#include <jv.h>
#include <stdbool.h>

#include "buf.h"
#include "error.h"

// Parses exactly one JSON value (RFC 8259, strict: no NaN, no leading zeros, no
// trailing commas) from text[0..len), which need not be NUL-terminated. On error,
// err says what and at which 1-based column. Strings keep jq's rules: invalid
// UTF-8 becomes U+FFFD; duplicate keys keep the first position and the last value.
int tp_json_parse(const char *text, size_t len, jv *out, tp_err *err);

// Appends v (borrowed, not freed) to b.
void tp_json_dump(tp_buf *b, jv v);
// Longest number text: sign, 17 digits followed by 15 zeros (1.2345678901234567e31), NUL.
enum { TP_JSON_NUMBER_MAX = 40 };
// Writes a double as jq prints it, NUL-terminated; returns the length (< TP_JSON_NUMBER_MAX).
int tp_json_format_number(char out[TP_JSON_NUMBER_MAX], double d);
// Appends s[0..n) as a JSON string literal (s must be valid UTF-8, as jv strings are).
void tp_json_dump_string(tp_buf *b, const char *s, size_t n);

// Field access that tolerates any value (libjq's jv_object_get asserts on non-objects).
// obj is borrowed. tp_json_get returns obj[key] (owned), or jv_invalid() when obj is not
// an object or has no key; tp_json_get_string the string value of obj[key], valid while
// obj lives, or NULL; tp_json_get_bool true/false, or dflt for anything else.
jv tp_json_get(jv obj, const char *key);
const char *tp_json_get_string(jv obj, const char *key);
bool tp_json_get_bool(jv obj, const char *key, bool dflt);

#endif
