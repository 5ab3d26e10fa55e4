// mathans.c — finding the final answer in a solution, and the entry points of the module.
//
// Every extraction mode is one scan from the end of the text backwards (the answer is at
// the end, and the last one wins) plus a forward scan over the answer itself, so a call is
// linear in the text and allocates nothing. Parsing and comparison: mathans_parse.c,
// mathans_equal.c.
#include "mathans.h"
#include "mathans_impl.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

const tp_extract_mode tp_extract_default[TP_EXTRACT_COUNT] = {
    TP_EXTRACT_BOXED, TP_EXTRACT_HASHES, TP_EXTRACT_ANSWER_IS, TP_EXTRACT_ANSWER_COLON, TP_EXTRACT_LAST_NUMBER};

static const struct {
    const char *name;
    tp_extract_mode mode;
} mode_names[] = {
    {"boxed", TP_EXTRACT_BOXED},         {"hashes", TP_EXTRACT_HASHES},        {"gsm8k", TP_EXTRACT_HASHES},
    {"answer", TP_EXTRACT_ANSWER_IS},    {"answer-is", TP_EXTRACT_ANSWER_IS},  {"colon", TP_EXTRACT_ANSWER_COLON},
    {"answer-colon", TP_EXTRACT_ANSWER_COLON}, {"number", TP_EXTRACT_LAST_NUMBER},
    {"last-number", TP_EXTRACT_LAST_NUMBER},   {NULL, 0}};

int tp_extract_parse(const char *spec, tp_extract_mode *modes, int cap, tp_err *err) {
    int n = 0;
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int found = -1;
        for (int k = 0; mode_names[k].name; k++)
            if (strlen(mode_names[k].name) == len && !strncmp(mode_names[k].name, p, len)) found = k;
        if (found < 0) {
            tp_err_set(err, "unknown extraction mode '%.*s' (boxed, hashes, answer, colon, number)", (int)len, p);
            return -1;
        }
        if (n >= cap) {
            tp_err_set(err, "too many extraction modes in '%s'", spec);
            return -1;
        }
        modes[n++] = mode_names[found].mode;
        if (!end) break;
        p = end + 1;
    }
    if (n == 0) tp_err_set(err, "no extraction mode in '%s'", spec);
    return n ? n : -1;
}

// ---- spans ----

typedef struct span {
    size_t a, b;  // [a, b)
} span;

static bool is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Trims spaces, **bold**, $...$ / \(...\) / \[...\] around the answer and a final '.' or ','.
static span trim(const char *t, span s) {
    for (int round = 0; round < 8; round++) {
        span o = s;
        while (s.a < s.b && is_space((unsigned char)t[s.a])) s.a++;
        while (s.b > s.a && is_space((unsigned char)t[s.b - 1])) s.b--;
        while (s.b > s.a && (t[s.b - 1] == '.' || t[s.b - 1] == ',') && !(s.b - s.a >= 2 && t[s.b - 2] == '\\')) s.b--;
        if (s.b - s.a >= 4 && !memcmp(t + s.a, "**", 2) && !memcmp(t + s.b - 2, "**", 2)) s.a += 2, s.b -= 2;
        else if (s.b - s.a >= 2 && !memcmp(t + s.a, "**", 2)) s.a += 2;
        else if (s.b - s.a >= 2 && !memcmp(t + s.b - 2, "**", 2)) s.b -= 2;
        if (s.b - s.a >= 2 && t[s.a] == '$' && t[s.b - 1] == '$' && (s.b - s.a < 2 || t[s.b - 2] != '\\')) s.a++, s.b--;
        if (s.b - s.a >= 4 && t[s.a] == '\\' && (t[s.a + 1] == '(' || t[s.a + 1] == '[') && t[s.b - 2] == '\\' &&
            (t[s.b - 1] == ')' || t[s.b - 1] == ']'))
            s.a += 2, s.b -= 2;
        if (o.a == s.a && o.b == s.b) break;
    }
    return s;
}

// ---- modes ----

static bool at(const char *t, size_t len, size_t i, const char *lit) {
    size_t k = strlen(lit);
    return i + k <= len && !memcmp(t + i, lit, k);
}

static bool at_nocase(const char *t, size_t len, size_t i, const char *lit) {
    size_t k = strlen(lit);
    return i + k <= len && !strncasecmp(t + i, lit, k);
}

// The last \boxed{...} / \fbox{...} with balanced braces; "\boxed 5" takes the next token
// ("\boxed $5$": the token inside the $). A box that does not close is skipped for an earlier
// one; an earlier box still open where that one starts cannot close after it either (its
// braces never balance there), so each forward scan stops at the previous failure and the
// whole search stays linear. *out is written only when a box is found.
static bool find_boxed(const char *t, size_t len, span *out) {
    size_t i = len, limit = len;
    while (i > 0) {
        const char *bs = memrchr(t, '\\', i);
        if (!bs) return false;
        i = (size_t)(bs - t);
        size_t cmd = at(t, len, i, "\\boxed") ? 6 : at(t, len, i, "\\fbox") ? 5 : 0;
        if (!cmd) continue;
        size_t j = i + cmd;
        while (j < len && (t[j] == ' ' || t[j] == '\t')) j++;
        if (j < len && t[j] == '{') {
            int open = 0;
            for (size_t k = j; k < limit; k++) {
                if (t[k] == '\\' && k + 1 < limit) {
                    k++;
                    continue;
                }
                if (t[k] == '{') open++;
                else if (t[k] == '}' && --open == 0) {
                    span box = trim(t, (span){j + 1, k});
                    if (box.b == box.a) return false;  // \boxed{}: the last box is empty
                    *out = box;
                    return true;
                }
            }
            limit = j;  // unclosed (a cut-off text): look for an earlier box
            continue;
        }
        if ((j > i + cmd || (j < len && t[j] == '$')) && j < len) {  // \boxed 5, \boxed $5$
            if (t[j] == '$') j++;
            size_t k = j;
            while (k < len && !is_space((unsigned char)t[k]) && t[k] != '$') k++;
            span box = trim(t, (span){j, k});
            if (box.b > box.a) {
                *out = box;
                return true;
            }
        }
    }
    return false;
}

static size_t line_end(const char *t, size_t len, size_t i) {
    const char *nl = memchr(t + i, '\n', len - i);
    return nl ? (size_t)(nl - t) : len;
}

// GSM8K: "#### 42" -- the rest of the line after the last ####.
static bool find_hashes(const char *t, size_t len, span *out) {
    size_t i = len;
    while (i >= 4) {
        const char *h = memrchr(t, '#', i);
        if (!h || h - t < 3) return false;
        i = (size_t)(h - t);
        if (memcmp(t + i - 3, "####", 4)) continue;
        *out = trim(t, (span){i + 1, line_end(t, len, i + 1)});
        if (out->b > out->a) return true;
        i -= 3;
    }
    return false;
}

// From s: the $...$ that starts there, else up to the end of the sentence ('.' then a
// space, outside $...$) or of the line.
static span sentence(const char *t, size_t len, size_t s) {
    while (s < len && (t[s] == ' ' || t[s] == ':' || t[s] == '\t')) s++;
    size_t e = line_end(t, len, s);
    bool math = false;
    for (size_t k = s; k < e; k++) {
        if (t[k] == '\\' && k + 1 < e) {
            k++;
            continue;
        }
        if (t[k] == '$') {
            math = !math;
            if (!math && t[s] == '$') return trim(t, (span){s, k + 1});  // the closing $ of a leading $...$
            continue;
        }
        if (!math && t[k] == '.' && (k + 1 >= e || is_space((unsigned char)t[k + 1]))) return trim(t, (span){s, k});
    }
    return trim(t, (span){s, e});
}

// "The answer is 42", "the final answer is $\frac12$." -- the last such phrase.
static bool find_answer_is(const char *t, size_t len, span *out) {
    for (size_t i = len; i-- > 0;) {
        if ((t[i] | 0x20) != 'a' || !at_nocase(t, len, i, "answer")) continue;
        size_t j = i + 6;
        while (j < len && t[j] == ' ') j++;
        if (j < len && t[j] == ':') j++;  // "final answer is: x" is handled below too
        while (j < len && (t[j] == ' ' || t[j] == '*')) j++;
        if (!at_nocase(t, len, j, "is")) continue;
        if (j + 2 < len && isalpha((unsigned char)t[j + 2])) continue;
        j += 2;
        while (j < len && (t[j] == '*' || t[j] == ' ')) j++;
        *out = sentence(t, len, j);
        if (out->b > out->a) return true;
    }
    return false;
}

// "Answer: 42", "**Answer:** 42", "Final Answer: 42" at the start of a line.
static bool find_answer_colon(const char *t, size_t len, span *out) {
    for (size_t i = len; i-- > 0;) {
        if ((t[i] | 0x20) != 'a' || !at_nocase(t, len, i, "answer")) continue;
        size_t j = i + 6;
        while (j < len && t[j] == '*') j++;
        if (j >= len || t[j] != ':') continue;
        j++;
        size_t k = i;  // only markup and "final" before it on its line
        if (k >= 6 && !strncasecmp(t + k - 6, "final ", 6)) k -= 6;
        while (k > 0 && (t[k - 1] == '*' || t[k - 1] == '#' || t[k - 1] == ' ' || t[k - 1] == '_' || t[k - 1] == '\t'))
            k--;
        if (k > 0 && t[k - 1] != '\n') continue;
        while (j < len && (t[j] == '*' || t[j] == ' ')) j++;
        *out = trim(t, (span){j, line_end(t, len, j)});
        if (out->b > out->a) return true;
    }
    return false;
}

// The last number: -1,234.5 or 3/4; digits glued to a word ("sepehr2010", "x2") are a name.
static bool find_last_number(const char *t, size_t len, span *out) {
    size_t i = len;
    for (;;) {
        while (i > 0 && !isdigit((unsigned char)t[i - 1])) i--;
        if (i == 0) return false;
        size_t b = i, a = i;
        for (;;) {
            while (a > 0 && isdigit((unsigned char)t[a - 1])) a--;
            if (a >= 2 && (t[a - 1] == '.' || t[a - 1] == '/') && isdigit((unsigned char)t[a - 2])) {
                a--;
                continue;
            }
            if (a >= 2 && t[a - 1] == ',' && isdigit((unsigned char)t[a - 2]) && a + 3 <= len &&
                isdigit((unsigned char)t[a]) && isdigit((unsigned char)t[a + 1]) && isdigit((unsigned char)t[a + 2]) &&
                (a + 3 == len || !isdigit((unsigned char)t[a + 3]))) {
                a--;
                continue;
            }
            break;
        }
        if (a > 0 && isalpha((unsigned char)t[a - 1])) {
            i = a;
            continue;
        }
        if (a > 0 && t[a - 1] == '-' && (a == 1 || !isalnum((unsigned char)t[a - 2]))) a--;
        *out = (span){a, b};
        return true;
    }
}

int tp_math_extract(const char *text, size_t len, const tp_extract_mode *modes, int n_modes, size_t *start,
                    size_t *alen) {
    if (!modes) modes = tp_extract_default, n_modes = TP_EXTRACT_COUNT;
    for (int k = 0; k < n_modes; k++) {
        span s = {0, 0};
        bool found = false;
        switch (modes[k]) {
        case TP_EXTRACT_BOXED: found = find_boxed(text, len, &s); break;
        case TP_EXTRACT_HASHES: found = find_hashes(text, len, &s); break;
        case TP_EXTRACT_ANSWER_IS: found = find_answer_is(text, len, &s); break;
        case TP_EXTRACT_ANSWER_COLON: found = find_answer_colon(text, len, &s); break;
        case TP_EXTRACT_LAST_NUMBER: found = find_last_number(text, len, &s); break;
        default: break;
        }
        if (found && s.b > s.a) {
            *start = s.a, *alen = s.b - s.a;
            return (int)modes[k];
        }
    }
    return -1;
}

// ---- equivalence ----

size_t tp_math_word(const char *s, size_t len, char *w, size_t cap) {
    size_t m = 0, k = 0;
    bool letters = false;
    while (k < len) {
        unsigned char c = (unsigned char)s[k];
        if (c == '\\') {
            size_t j = k + 1;
            while (j < len && isalpha((unsigned char)s[j])) j++;
            size_t nlen = j - k - 1;
            static const char *const wrappers[] = {"text", "textbf", "textit", "mathrm", "mathbf", "mbox", "textnormal",
                                                   "mathit", NULL};
            bool ok = false;
            for (int i = 0; wrappers[i]; i++)
                if (strlen(wrappers[i]) == nlen && !memcmp(s + k + 1, wrappers[i], nlen)) ok = true;
            if (!ok) {
                if (nlen == 0 && j < len && (s[j] == ' ' || s[j] == '$' || s[j] == ',' || s[j] == '!')) ok = true, j++;
            }
            if (!ok) return 0;
            k = j;
            continue;
        }
        if (c == '{' || c == '}' || c == '(' || c == ')' || c == '$' || isspace(c)) {
            k++;
            continue;
        }
        if (!isalpha(c)) return 0;
        letters = true;
        if (m + 1 < cap) w[m++] = (char)tolower(c);
        k++;
    }
    if (cap) w[m < cap ? m : cap - 1] = 0;
    return letters ? m : 0;
}


// An answer given with its box ("\boxed{5}") is the box's content.
static span unbox(const char *s, size_t n) {
    span sp = trim(s, (span){0, n});
    if (n >= 6 && memmem(s, n, "\\boxed", 6)) find_boxed(s, n, &sp);
    return sp;
}

tp_math_verdict tp_math_equal(const char *pred, size_t plen, const char *gold, size_t glen) {
    if (plen > TP_MATH_MAX_LEN || glen > TP_MATH_MAX_LEN) return TP_MATH_UNKNOWN;
    span ps = unbox(pred, plen), gs = unbox(gold, glen);
    pred += ps.a, plen = ps.b - ps.a;
    gold += gs.a, glen = gs.b - gs.a;
    if (!plen || !glen) return TP_MATH_UNKNOWN;
    if (plen == glen && !memcmp(pred, gold, plen)) return TP_MATH_EQUAL;
    char pw[64], gw[64];
    size_t pwl = tp_math_word(pred, plen, pw, sizeof pw), gwl = tp_math_word(gold, glen, gw, sizeof gw);
    if (pwl && gwl) return pwl == gwl && !strcmp(pw, gw) ? TP_MATH_EQUAL : TP_MATH_DIFFERENT;
    static _Thread_local mtree pt, gt;  // 2 x 64 KB, reused: comparing numbers allocates nothing
    if (tp_math_parse(pred, plen, &pt) || tp_math_parse(gold, glen, &gt)) return TP_MATH_UNKNOWN;
    int r = tp_math_compare_trees(&gt, &pt);
    return r > 0 ? TP_MATH_EQUAL : r == 0 ? TP_MATH_DIFFERENT : TP_MATH_UNKNOWN;
}

tp_math_verdict tp_math_verify(const char *text, size_t len, const char *gold, size_t glen,
                               const tp_extract_mode *modes, int n_modes, char *pred, size_t cap) {
    size_t a = 0, n = 0;
    int found = tp_math_extract(text, len, modes, n_modes, &a, &n);
    if (pred && cap) {
        size_t m = found < 0 ? 0 : n < cap - 1 ? n : cap - 1;
        memcpy(pred, text + a, m);
        pred[m] = 0;
    }
    if (found < 0) return TP_MATH_DIFFERENT;
    // A gold that is itself a solution: its box or its #### line.
    static const tp_extract_mode gold_modes[] = {TP_EXTRACT_BOXED, TP_EXTRACT_HASHES};
    size_t ga = 0, gn = glen;
    if ((glen >= 4 && memmem(gold, glen, "####", 4)) || (glen >= 6 && memmem(gold, glen, "\\boxed", 6)))
        if (tp_math_extract(gold, glen, gold_modes, 2, &ga, &gn) < 0) ga = 0, gn = glen;
    return tp_math_equal(text + a, n, gold + ga, gn);
}
