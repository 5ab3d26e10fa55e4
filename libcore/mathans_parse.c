// mathans_parse.c — LaTeX-ish answers to expression trees (mathans_impl.h).
//
// A scannerless recursive-descent parser: LaTeX reads character by character anyway
// (\frac12 takes single digits, "12" elsewhere is twelve). Every recursion goes through
// enter(), which counts nesting against TP_MATH_MAX_DEPTH, and the arena bounds the nodes,
// so "{{{{..." or a 4 KB sum fails cleanly instead of exhausting the stack.
//
//   list     := item ((',' | ';' | and | or) item)*
//   item     := rel ('\cup' rel)*
//   rel      := expr (relop expr)*
//   expr     := [sign] term (('+' | '-' | '\pm') term)*
//   term     := factor (('*' | '\cdot' | '\times' | '/' | '\div' | implicit) factor)*
//   factor   := ['-'] postfix ['^' arg]
//   postfix  := primary ('!' | '\%' | subscript)*
#include "mathans.h"
#include "mathans_impl.h"
#include "unicode.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *s;
    size_t n, i;
    int depth;
    bool fail;
    mtree *t;
} parser;

// ---- nodes ----

static int new_node(parser *P, int op) {
    mtree *t = P->t;
    if (t->n >= TP_MATH_MAX_NODES) {
        P->fail = true;
        return -1;
    }
    mnode *nd = &t->nd[t->n];
    memset(nd, 0, sizeof *nd);
    nd->op = (uint8_t)op;
    nd->kid = nd->next = -1;
    nd->depth = 1;
    return t->n++;
}

// Appends child c to node n's children, updating depth and the flags that bubble up.
static void add_kid(parser *P, int n, int c) {
    if (n < 0 || c < 0) return;
    mnode *nd = P->t->nd;
    if (nd[n].kid < 0) nd[n].kid = c;
    else {
        int k = nd[n].kid;
        while (nd[k].next >= 0) k = nd[k].next;
        nd[k].next = c;
    }
    if (nd[c].depth + 1 > nd[n].depth) nd[n].depth = (uint8_t)(nd[c].depth + 1 > 255 ? 255 : nd[c].depth + 1);
    if (nd[n].depth > 2 * TP_MATH_MAX_DEPTH) P->fail = true;
    nd[n].flags |= nd[c].flags & (NF_VARS | NF_PM);
}

static int wrap(parser *P, int op, int a, int b) {
    if (a < 0 || P->fail) return -1;
    int n = new_node(P, op);
    add_kid(P, n, a);
    if (b >= 0) add_kid(P, n, b);
    return P->fail ? -1 : n;
}

static bool enter(parser *P) {
    if (++P->depth > TP_MATH_MAX_DEPTH) P->fail = true;
    return !P->fail;
}
static void leave(parser *P) { P->depth--; }

// ---- characters ----

static int peek(const parser *P) { return P->i < P->n ? (unsigned char)P->s[P->i] : 0; }
static int peek_at(const parser *P, size_t k) { return P->i + k < P->n ? (unsigned char)P->s[P->i + k] : 0; }

// The non-ASCII character at the cursor (0 for ASCII or bad UTF-8); its byte length in *len.
static uint32_t peek_cp(const parser *P, size_t *len) {
    uint32_t cp = 0;
    int k = peek(P) >= 0x80 ? tp_utf8_decode((const unsigned char *)P->s + P->i, P->n - P->i, &cp) : 0;
    *len = (size_t)k;
    return k ? cp : 0;
}

static bool at_cp(const parser *P, uint32_t cp) {
    size_t k;
    return peek(P) >= 0x80 && peek_cp(P, &k) == cp;
}

// Accepts the character cp (U+00D7 ×, U+2212 −, ...).
static bool accept_cp(parser *P, uint32_t cp) {
    size_t k;
    if (peek(P) < 0x80 || peek_cp(P, &k) != cp) return false;
    P->i += k;
    return true;
}

static bool starts(const parser *P, const char *lit) {
    size_t k = strlen(lit);
    return P->n - P->i >= k && !memcmp(P->s + P->i, lit, k);
}

// A \command at the cursor: its name length (letters after the backslash), 0 if none.
static size_t command_len(const parser *P) {
    if (peek(P) != '\\') return 0;
    size_t k = 1;
    while (P->i + k < P->n && isalpha((unsigned char)P->s[P->i + k])) k++;
    return k - 1;
}

static bool is_command(const parser *P, const char *name) {
    size_t k = command_len(P);
    return k == strlen(name) && !memcmp(P->s + P->i + 1, name, k);
}

// Accepts \name (not a prefix of a longer command).
static bool accept_command(parser *P, const char *name) {
    if (!is_command(P, name)) return false;
    P->i += 1 + strlen(name);
    return true;
}

static const char *const ignored_commands[] = {
    "left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr", "biggl", "biggr",
    "quad", "qquad", "displaystyle", "textstyle", "limits", "nolimits", "circ", "degree", "ldots", "cdots",
    "dots", "mathstrut", "hfill", "phantom", NULL};

// Skips what carries no value: spaces, $ and \$, \left/\right, thin spaces, degree marks.
static void skip_ws(parser *P) {
    for (;;) {
        int c = peek(P);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '~' || c == '$') {
            P->i++;
            continue;
        }
        if (accept_cp(P, 0xB0)) continue;  // °
        if (c == '^' && (starts(P, "^\\circ") || starts(P, "^{\\circ}") || starts(P, "^{\\circ }"))) {
            P->i += starts(P, "^\\circ") ? 6 : starts(P, "^{\\circ}") ? 8 : 9;
            continue;
        }
        if (c == '\\') {
            int d = peek_at(P, 1);
            if (d == ',' || d == ';' || d == ':' || d == '!' || d == ' ' || d == '$') {
                P->i += 2;
                continue;
            }
            size_t k = command_len(P);
            bool skipped = false;
            for (int j = 0; k && ignored_commands[j]; j++)
                if (strlen(ignored_commands[j]) == k && !memcmp(P->s + P->i + 1, ignored_commands[j], k)) {
                    bool lr = !strcmp(ignored_commands[j], "left") || !strcmp(ignored_commands[j], "right");
                    P->i += 1 + k;
                    if (lr && peek(P) == '.') P->i++;  // \left. and \right. are invisible
                    if (!strcmp(ignored_commands[j], "phantom") && peek(P) == '{') {
                        int open = 0;
                        do {
                            if (peek(P) == '{') open++;
                            else if (peek(P) == '}') open--;
                            P->i++;
                        } while (open > 0 && P->i < P->n);
                    }
                    skipped = true;
                    break;
                }
            if (skipped) continue;
        }
        return;
    }
}

static bool accept(parser *P, int c) {
    skip_ws(P);
    if (peek(P) != c) return false;
    P->i++;
    return true;
}

static void expect(parser *P, int c) {
    if (!accept(P, c)) P->fail = true;
}

// ---- numbers ----

static bool fits_mul10(__int128 v) { return v < ((__int128)1 << 120) / 10; }

// Rewrites the digits lits[start..nlits) of a literal with exponent exp10 (after the digits
// of the fraction were counted in frac) as its text "<digits>e<exp>", NUL-terminated.
static bool finish_literal(mtree *t, size_t start, long frac, long exp10) {
    char *d = t->lits + start;
    size_t n = t->nlits - start, a = 0;
    while (a < n && d[a] == '0') a++;
    while (n > a && d[n - 1] == '0') n--, exp10++;
    if (a == n) exp10 = frac = 0, a = 0, n = 1;  // zero: "0e0"
    memmove(d, d + a, n - a);
    char e[24];  // "e<exp>" by hand: snprintf would be most of the time spent on a short answer
    size_t w = sizeof e;
    long x = exp10 - frac, m = x < 0 ? -x : x;
    e[--w] = 0;
    do e[--w] = (char)('0' + m % 10), m /= 10;
    while (m);
    if (x < 0) e[--w] = '-';
    e[--w] = 'e';
    size_t elen = sizeof e - w;  // with the NUL
    if (start + (n - a) + elen > sizeof t->lits) return false;
    memcpy(d + (n - a), e + w, elen);
    t->nlits = start + (n - a) + elen;
    return true;
}

// digits [. digits] | . digits, with "{,}" between digit groups, and an adjacent e±N exponent.
// The value is p/q while it fits; else the long double of its text in lits, NaN (cannot judge)
// when that overflows or underflows: 1e99999 is not infinity, 1e-99999 not zero.
static int parse_number(parser *P, bool one_digit) {
    int n = new_node(P, M_NUM);
    if (n < 0) return -1;
    mtree *t = P->t;
    mnode *nd = &t->nd[n];
    size_t start = t->nlits;
    long frac = 0;
    __int128 p = 0, q = 1;
    bool exact = true, dot = false;
    while (P->i < P->n) {
        int c = peek(P);
        if (isdigit(c)) {
            if (exact && fits_mul10(p) && (!dot || fits_mul10(q))) {
                p = p * 10 + (c - '0');
                if (dot) q *= 10;
            } else exact = false;
            if (t->nlits + 1 >= sizeof t->lits) return P->fail = true, -1;
            t->lits[t->nlits++] = (char)c;
            frac += dot;
            P->i++;
            if (one_digit) break;
        } else if (c == '.' && !dot && !one_digit && isdigit(peek_at(P, 1))) {
            dot = true;
            nd->flags |= NF_DECIMAL;
            P->i++;
        } else if (c == '{' && starts(P, "{,}") && isdigit(peek_at(P, 3)) && !dot && !one_digit) {
            P->i += 3;
        } else break;
    }
    long exp10 = 0;
    if (!one_digit && (peek(P) == 'e' || peek(P) == 'E') &&
        (isdigit(peek_at(P, 1)) || ((peek_at(P, 1) == '-' || peek_at(P, 1) == '+') && isdigit(peek_at(P, 2))))) {
        P->i++;
        int sign = 1;
        if (peek(P) == '-' || peek(P) == '+') sign = peek(P) == '-' ? -1 : 1, P->i++;
        while (isdigit(peek(P))) {
            exp10 = exp10 * 10 + (peek(P) - '0');
            if (exp10 > 100000000) return P->fail = true, -1;  // no long double is that big or small
            P->i++;
        }
        exp10 *= sign;
        nd->flags |= NF_DECIMAL;
    }
    for (long k = 0; exact && k < (exp10 < 0 ? -exp10 : exp10); k++) {
        __int128 *v = exp10 > 0 ? &p : &q;
        if (!fits_mul10(*v)) exact = false;
        else *v *= 10;
    }
    if (!finish_literal(t, start, frac, exp10)) return P->fail = true, -1;
    nd->aux = (uint32_t)start;
    if (exact) {
        __int128 g = tp_math_gcd(p, q);
        nd->flags |= NF_EXACT;
        nd->p = p / g, nd->q = q / g;
    } else {
        nd->x = strtold(t->lits + start, NULL);
        if (!isfinite(nd->x) || nd->x == 0) nd->x = NAN;  // inexact: never truly 0
    }
    if (!(nd->flags & NF_DECIMAL) && !exp10) nd->flags |= NF_INTLIT;
    return n;
}

// ---- words: functions, units, and/or ----

static uint32_t hash_lower(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)tolower((unsigned char)s[k]);
        if (isspace(c)) continue;
        h = (h ^ c) * 16777619u;
    }
    return h ? h : 1;
}

static const struct { const char *name; int id; } functions[] = {
    {"sin", F_SIN},     {"cos", F_COS},       {"tan", F_TAN},       {"cot", F_COT},   {"sec", F_SEC},
    {"csc", F_CSC},     {"arcsin", F_ASIN},   {"arccos", F_ACOS},   {"arctan", F_ATAN}, {"sinh", F_SINH},
    {"cosh", F_COSH},   {"tanh", F_TANH},     {"ln", F_LN},         {"log", F_LOG},   {"exp", F_EXP},
    {"sqrt", F_SQRT},   {NULL, 0}};

static int function_id(const char *s, size_t n) {
    for (int k = 0; functions[k].name; k++)
        if (strlen(functions[k].name) == n && !memcmp(functions[k].name, s, n)) return functions[k].id;
    return 0;
}

// Words after a number that name a unit ("5 cm", "12 dollars"): dropped, like \text{ cm}.
static const char *const unit_words[] = {
    "cm", "mm", "km", "kg", "mg", "ft", "feet", "foot", "inch", "inches", "mile", "mph", "kmh", "hour", "hr",
    "hrs", "minute", "min", "mins", "second", "sec", "secs", "day", "week", "month", "year", "yr", "degree", "deg",
    "dollar", "cent", "unit", "meter", "metre", "liter", "litre", "gallon", "pound", "lb", "lbs", "oz", "sq",
    "square", "cubic", "point", "student", "people", "person", "page", "minutes", "seconds", "hours", NULL};

static bool is_unit_word(const char *s, size_t n) {
    if (n > 2 && (s[n - 1] == 's' || s[n - 1] == 'S')) {
        for (int k = 0; unit_words[k]; k++)
            if (strlen(unit_words[k]) == n - 1 && !strncasecmp(unit_words[k], s, n - 1)) return true;
    }
    for (int k = 0; unit_words[k]; k++)
        if (strlen(unit_words[k]) == n && !strncasecmp(unit_words[k], s, n)) return true;
    return false;
}

static size_t letter_run(const parser *P) {
    size_t k = 0;
    while (P->i + k < P->n && isalpha((unsigned char)P->s[P->i + k])) k++;
    return k;
}

static bool at_word(const parser *P, const char *w) {
    size_t k = letter_run(P);
    return k == strlen(w) && !strncasecmp(P->s + P->i, w, k);
}

// ---- grammar ----

static int parse_rel(parser *P);
static int parse_expr(parser *P);
static int parse_factor(parser *P);
static int parse_list(parser *P, int op, const char *closers, int *count);

// A command argument: {group}, or one digit, one letter, or one command (\frac12, \sqrt2, \frac\pi2).
static int parse_arg(parser *P) {
    skip_ws(P);
    if (!enter(P)) return -1;
    int r = -1;
    int c = peek(P);
    if (c == '{') {
        P->i++;
        r = parse_rel(P);
        expect(P, '}');
    } else if (isdigit(c)) {
        r = parse_number(P, true);
    } else if (isalpha(c)) {
        r = new_node(P, M_VAR);
        if (r >= 0) P->t->nd[r].aux = hash_lower(P->s + P->i, 1), P->t->nd[r].flags |= NF_VARS;
        P->i++;
    } else if (c == '\\') {
        r = parse_factor(P);
    } else P->fail = true;
    leave(P);
    return P->fail ? -1 : r;
}

// The raw {...} after \text and friends: [*a, *b) inside the braces.
static bool raw_group(parser *P, size_t *a, size_t *b) {
    skip_ws(P);
    if (peek(P) != '{') return false;
    int open = 0;
    size_t start = P->i + 1;
    for (; P->i < P->n; P->i++) {
        if (P->s[P->i] == '\\' && P->i + 1 < P->n) {
            P->i++;
            continue;
        }
        if (P->s[P->i] == '{') open++;
        else if (P->s[P->i] == '}' && --open == 0) {
            *a = start, *b = P->i;
            P->i++;
            return true;
        }
    }
    P->fail = true;
    return false;
}

static bool has_alpha(const char *s, size_t n) {
    for (size_t k = 0; k < n; k++)
        if (isalpha((unsigned char)s[k])) return true;
    return false;
}

// \text{...}: a number or expression inside is parsed; a word is a symbol; "" and units vanish (-2).
static int parse_text(parser *P) {
    size_t a, b;
    if (!raw_group(P, &a, &b)) return -1;
    while (a < b && isspace((unsigned char)P->s[a])) a++;
    while (b > a && isspace((unsigned char)P->s[b - 1])) b--;
    if (a == b) return -2;
    if (!has_alpha(P->s + a, b - a)) {  // \text{5}, \mathrm{(1,2)}
        size_t save_n = P->n, save_i = P->i;
        P->n = b, P->i = a;
        int r = parse_rel(P);
        skip_ws(P);
        if (P->i != P->n) P->fail = true;
        P->n = save_n, P->i = save_i;
        return r;
    }
    if (b - a == 1 && (P->s[a] | 0x20) == 'i') return new_node(P, M_IMAG);  // \mathrm{i}
    int r = new_node(P, M_TEXT);
    if (r >= 0) P->t->nd[r].aux = hash_lower(P->s + a, b - a), P->t->nd[r].flags |= NF_VARS;
    return r;
}

// \begin{pmatrix} a & b \\ c & d \end{pmatrix} (bmatrix, matrix, vmatrix, ...): rows of cells.
static int parse_matrix(parser *P) {
    size_t a, b;
    if (!raw_group(P, &a, &b)) return -1;
    if (b - a < 6 || memcmp(P->s + b - 6, "matrix", 6)) {  // \begin{array}{cc}, \begin{cases}: not an answer
        P->fail = true;
        return -1;
    }
    int m = new_node(P, M_MATRIX);
    int cols = -1;
    while (!P->fail) {
        int in_row = 0;
        for (;;) {
            int c = parse_rel(P);
            add_kid(P, m, c);
            in_row++;
            if (!accept(P, '&')) break;
        }
        if (cols < 0) cols = in_row;
        else if (cols != in_row) P->fail = true;
        skip_ws(P);
        if (starts(P, "\\\\")) {
            P->i += 2;
            skip_ws(P);
            if (!is_command(P, "end")) continue;
        }
        if (!accept_command(P, "end") || !raw_group(P, &a, &b)) P->fail = true;
        break;
    }
    if (m >= 0 && !P->fail) P->t->nd[m].aux = (uint32_t)cols;
    return P->fail ? -1 : m;
}

// The function's argument after \sin, \log_2, \sin^2: a parenthesised group or one factor.
static int parse_function(parser *P, int id) {
    int base = -1, power = -1;
    for (int k = 0; k < 2; k++) {
        skip_ws(P);
        if (peek(P) == '_' && !P->fail) P->i++, base = parse_arg(P);
        else if (peek(P) == '^' && !P->fail) P->i++, power = parse_arg(P);
    }
    int arg = parse_factor(P);
    if (id == F_SQRT) return wrap(P, M_ROOT, arg, -1);
    int f = new_node(P, M_FUNC);
    if (f < 0) return -1;
    P->t->nd[f].sub = (uint8_t)id;
    add_kid(P, f, arg);
    if (base >= 0) add_kid(P, f, base);
    return power >= 0 ? wrap(P, M_POW, f, power) : f;
}

static int symbol(parser *P, const char *name, size_t n) {
    int r = new_node(P, M_VAR);
    if (r >= 0) P->t->nd[r].aux = hash_lower(name, n), P->t->nd[r].flags |= NF_VARS;
    return r;
}

static int parse_command(parser *P) {
    size_t k = command_len(P);
    const char *name = P->s + P->i + 1;
    if (k == 0) {  // \{ set \}, \% is postfix, anything else is not an answer
        if (peek_at(P, 1) == '{') {
            P->i += 2;
            int count;
            int s = parse_list(P, M_SET, "\\}", &count);
            if (!starts(P, "\\}")) P->fail = true;
            else P->i += 2;
            if (s >= 0) P->t->nd[s].flags |= NF_BRACED;  // a set, not a list: no tuple's order binds it
            return s;
        }
        P->fail = true;
        return -1;
    }
    P->i += 1 + k;
#define IS(lit) (k == sizeof(lit) - 1 && !memcmp(name, lit, k))
    if (IS("frac") || IS("dfrac") || IS("tfrac") || IS("cfrac")) {
        int a = parse_arg(P);
        int b = parse_arg(P);
        return wrap(P, M_DIV, a, b);
    }
    if (IS("sqrt")) {
        int index = -1;
        skip_ws(P);
        if (peek(P) == '[') {
            P->i++;
            index = parse_expr(P);
            expect(P, ']');
        }
        int a = parse_arg(P);
        return wrap(P, M_ROOT, a, index);
    }
    if (IS("binom") || IS("dbinom") || IS("tbinom")) {
        int a = parse_arg(P);
        int b = parse_arg(P);
        return wrap(P, M_BINOM, a, b);
    }
    if (IS("pi")) return new_node(P, M_PI_CONST);
    if (IS("infty") || IS("infinity")) return new_node(P, M_INF);
    if (IS("text") || IS("textbf") || IS("textit") || IS("textrm") || IS("textnormal") || IS("mathrm") ||
        IS("mathbf") || IS("mathit") || IS("mbox") || IS("operatorname") || IS("textsf") || IS("mathsf")) {
        int r = parse_text(P);
        if (r == -2) {  // empty: not a factor of its own
            skip_ws(P);
            return P->i < P->n ? parse_factor(P) : (P->fail = true, -1);
        }
        return r;
    }
    if (IS("boxed") || IS("fbox") || IS("overline") || IS("vec") || IS("hat") || IS("bar") || IS("mathbb") ||
        IS("tilde") || IS("widehat") || IS("underline") || IS("mathcal")) {
        return parse_arg(P);
    }
    if (IS("lfloor") || IS("lceil")) {
        bool floor = IS("lfloor");
        int e = parse_expr(P);
        skip_ws(P);
        if (!accept_command(P, floor ? "rfloor" : "rceil")) P->fail = true;
        return wrap(P, floor ? M_FLOOR : M_CEIL, e, -1);
    }
    if (IS("langle")) {
        int count;
        int t = parse_list(P, M_TUPLE, "\\rangle", &count);
        skip_ws(P);
        if (!accept_command(P, "rangle")) P->fail = true;
        if (t >= 0) P->t->nd[t].sub = MB_LEFT_OPEN | MB_RIGHT_OPEN;  // a vector: a tuple, never a closed interval
        return t;
    }
    if (IS("begin")) return parse_matrix(P);
    int fn = function_id(name, k);
    if (fn) return parse_function(P, fn);
    return symbol(P, name, k);  // \alpha, \theta, unknown commands: symbols named by the command
#undef IS
}

static bool at_closer(const parser *P) {
    int c = peek(P);
    return c == 0 || c == ')' || c == ']' || c == '}' || starts(P, "\\}") || is_command(P, "rangle") ||
           is_command(P, "rfloor") || is_command(P, "rceil") || c == ',' || c == ';' || c == '&' || c == '|';
}

// ( list ), [ list ), ... : a group when it holds one item, a tuple or interval otherwise.
static int parse_bracketed(parser *P) {
    int open = peek(P);
    P->i++;
    int count = 0;
    int l = parse_list(P, M_TUPLE, ")]", &count);
    skip_ws(P);
    int close = peek(P);
    if (close != ')' && close != ']') {
        P->fail = true;
        return -1;
    }
    P->i++;
    if (l < 0) return -1;
    if (count == 1 && ((open == '(' && close == ')') || (open == '[' && close == ']')))
        return P->t->nd[l].kid;  // (x) or [x]: grouping
    if (count == 1) {
        P->fail = true;
        return -1;
    }
    P->t->nd[l].sub = (uint8_t)((open == '(' ? MB_LEFT_OPEN : 0) | (close == ')' ? MB_RIGHT_OPEN : 0));
    return l;
}

static int parse_primary(parser *P) {
    skip_ws(P);
    int c = peek(P);
    if (isdigit(c) || (c == '.' && isdigit(peek_at(P, 1)))) return parse_number(P, false);
    if (c == '(' || c == '[') return parse_bracketed(P);
    if (c == '{') {
        P->i++;
        int r = parse_rel(P);
        expect(P, '}');
        return r;
    }
    if (c == '|') {
        P->i++;
        int r = parse_expr(P);
        expect(P, '|');
        return wrap(P, M_ABS, r, -1);
    }
    if (c == '\\') return parse_command(P);
    if (accept_cp(P, 0x3C0)) return new_node(P, M_PI_CONST);  // π
    if (accept_cp(P, 0x221E)) return new_node(P, M_INF);      // ∞
    if (isalpha(c)) {
        size_t k = letter_run(P);
        int fn = function_id(P->s + P->i, k);
        if (fn && k > 1) {
            P->i += k;
            return parse_function(P, fn);
        }
        if (k == 1 && (c == 'e') ) {  // e alone is Euler's number, as in math-verify
            P->i++;
            return new_node(P, M_EULER);
        }
        if (c == 'i' || c == 'I') {  // i is the imaginary unit (in "5i", "xi" too); i_1 is a symbol
            P->i++;
            return new_node(P, M_IMAG);
        }
        P->i++;  // one letter; a longer run is a product of letters (abc = a*b*c)
        return symbol(P, P->s + P->i - 1, 1);
    }
    P->fail = true;
    return -1;
}

static int parse_postfix(parser *P) {
    int r = parse_primary(P);
    while (!P->fail) {
        skip_ws(P);
        int c = peek(P);
        if (c == '!') P->i++, r = wrap(P, M_FACT, r, -1);
        else if (c == '%' || starts(P, "\\%")) P->i += c == '%' ? 1 : 2, r = wrap(P, M_PCT, r, -1);
        else if (c == '\'') P->i++;
        else if (c == '_') {  // subscripts name symbols (x_1); on numbers (1011_2) they are a base we ignore
            P->i++;
            size_t a = P->i;
            int s = parse_arg(P);
            mnode *nd = P->t->nd;
            if (s >= 0 && r >= 0 && nd[r].op == M_IMAG)
                nd[r].op = M_VAR, nd[r].aux = hash_lower("i", 1), nd[r].flags |= NF_VARS;
            if (s >= 0 && r >= 0 && nd[r].op == M_VAR) nd[r].aux = nd[r].aux * 31u + hash_lower(P->s + a, P->i - a);
        } else break;
    }
    return r;
}

static int parse_factor(parser *P) {
    if (!enter(P)) return -1;
    skip_ws(P);
    int r;
    if (peek(P) == '-' || at_cp(P, 0x2212)) {  // - or U+2212 −
        if (!accept_cp(P, 0x2212)) P->i++;
        r = wrap(P, M_NEG, parse_factor(P), -1);
    } else if (peek(P) == '+') {
        P->i++;
        r = parse_factor(P);
    } else {
        r = parse_postfix(P);
        skip_ws(P);
        if (peek(P) == '^' && !P->fail) {
            P->i++;
            skip_ws(P);
            int e = peek(P) == '-' ? parse_factor(P) : parse_arg(P);
            r = wrap(P, M_POW, r, e);
            r = r >= 0 ? r : -1;
            while (!P->fail && (skip_ws(P), peek(P) == '!')) P->i++, r = wrap(P, M_FACT, r, -1);
        }
    }
    leave(P);
    return P->fail ? -1 : r;
}

static size_t and_or_len(parser *P);

static bool at_factor_start(parser *P) {
    skip_ws(P);
    int c = peek(P);
    if (at_cp(P, 0x3C0) || at_cp(P, 0x221E)) return true;  // π ∞
    if (isdigit(c) || isalpha(c) || c == '(' || c == '{' || c == '.') return !(isalpha(c) && and_or_len(P));
    if (c == '[') return false;
    if (c != '\\' || starts(P, "\\{") || starts(P, "\\}")) return false;
    static const char *const binary[] = {"cdot", "times", "div", "pm", "mp", "le", "leq", "ge", "geq", "lt", "gt",
                                         "ne", "neq", "approx", "in", "cup", "cap", "end", "rangle", "rfloor",
                                         "rceil", "to", "implies", "Rightarrow", "quad", "qquad", NULL};
    for (int k = 0; binary[k]; k++)
        if (is_command(P, binary[k])) return false;
    return command_len(P) > 0;
}

// True when a unit word follows (and ends the term): "5 cm", "3 hours".
static bool skip_unit_word(parser *P) {
    size_t k = letter_run(P);
    if (k < 2 || !is_unit_word(P->s + P->i, k)) return false;
    size_t save = P->i;
    P->i += k;
    skip_ws(P);
    if (at_closer(P) || peek(P) == '^' || peek(P) == '=' || peek(P) == '+' || peek(P) == '-') {
        if (peek(P) == '^') {  // cm^2
            P->i++;
            int e = parse_arg(P);
            (void)e;
        }
        return true;
    }
    P->i = save;
    return false;
}

static bool is_int_lit(const parser *P, int n) { return n >= 0 && (P->t->nd[n].flags & NF_INTLIT); }
static bool is_simple_frac(const parser *P, int n) {
    const mnode *nd = P->t->nd;
    return n >= 0 && nd[n].op == M_DIV && is_int_lit(P, nd[n].kid) && is_int_lit(P, nd[nd[n].kid].next);
}

static int parse_term(parser *P) {
    if (!enter(P)) return -1;
    int acc = parse_factor(P);  // the product so far; a '/' divides all of it (left to right)
    int count = 1;
    while (!P->fail) {
        skip_ws(P);
        int op = 0;
        if (accept(P, '*') || accept_cp(P, 0xD7) || accept_command(P, "cdot") || accept_command(P, "times")) {
            op = '*';  // * × \cdot \times
        } else if (accept(P, '/') || accept_cp(P, 0xF7) || accept_command(P, "div")) {
            op = '/';  // / ÷ \div
        } else if (and_or_len(P)) {
            break;  // "2 \text{ and } 3" is a list (parse_list), not the product of 2, a unit and 3
        } else if (isalpha(peek(P)) && skip_unit_word(P)) {
            continue;
        } else if (at_factor_start(P)) {
            op = 'i';
        } else break;
        int f = parse_factor(P);
        if (f < 0) break;
        const mnode *fn = &P->t->nd[f];
        if (op == 'i' && (fn->op == M_TEXT || (fn->op == M_POW && P->t->nd[fn->kid].op == M_TEXT)))
            continue;  // 5\text{ cm}, 5\text{ cm}^2: a unit
        if (op == 'i' && count == 1 && is_int_lit(P, acc) && is_simple_frac(P, f)) {
            int s = new_node(P, M_SUM);  // 2\frac{1}{2} is a mixed number (math-verify reads it so too)
            add_kid(P, s, acc);
            add_kid(P, s, f);
            acc = s;
        } else if (op == '/') {
            acc = wrap(P, M_DIV, acc, f);
        } else if (acc >= 0 && P->t->nd[acc].op == M_PROD) {
            add_kid(P, acc, f);
        } else {
            acc = wrap(P, M_PROD, acc, f);
        }
        count++;
    }
    leave(P);
    return P->fail ? -1 : acc;
}

static int parse_expr(parser *P) {
    if (!enter(P)) return -1;
    int sum = new_node(P, M_SUM);
    int terms = 0, single = -1;
    bool first = true;
    while (!P->fail) {
        skip_ws(P);
        int sign = 0;  // 0 plus, 1 minus, 2 plus-minus
        if (peek(P) == '+') P->i++;
        else if (peek(P) == '-') P->i++, sign = 1;
        else if (accept_cp(P, 0x2212)) sign = 1;  // − minus
        else if (accept_command(P, "pm") || accept_command(P, "mp") || accept_cp(P, 0xB1)) sign = 2;  // ±
        else if (!first) break;
        int t = parse_term(P);
        if (t < 0) break;
        if (sign == 1) t = wrap(P, M_NEG, t, -1);
        if (sign == 2) {
            t = wrap(P, M_PM, t, -1);
            if (t >= 0) P->t->nd[t].flags |= NF_PM;
        }
        add_kid(P, sum, t);
        single = t;
        terms++;
        first = false;
    }
    leave(P);
    if (P->fail || terms == 0) {
        P->fail = true;
        return -1;
    }
    return terms == 1 ? single : sum;
}

static int relop(parser *P) {
    skip_ws(P);
    int c = peek(P);
    if (c == '=') return P->i++, MR_EQ;
    if (c == '<') return P->i++, peek(P) == '=' ? (P->i++, MR_LE) : MR_LT;
    if (c == '>') return P->i++, peek(P) == '=' ? (P->i++, MR_GE) : MR_GT;
    if (accept_command(P, "le") || accept_command(P, "leq") || accept_command(P, "leqslant")) return MR_LE;
    if (accept_command(P, "ge") || accept_command(P, "geq") || accept_command(P, "geqslant")) return MR_GE;
    if (accept_command(P, "lt")) return MR_LT;
    if (accept_command(P, "gt")) return MR_GT;
    if (accept_command(P, "ne") || accept_command(P, "neq")) return MR_NE;
    if (accept_command(P, "in") || accept_command(P, "approx")) return MR_EQ;
    if (accept_cp(P, 0x2264)) return MR_LE;  // ≤
    if (accept_cp(P, 0x2265)) return MR_GE;  // ≥
    return 0;
}

static int parse_rel(parser *P) {
    if (!enter(P)) return -1;
    int first = parse_expr(P);
    int rel = -1, nops = 0;
    uint32_t ops = 0;
    for (int op; !P->fail && (op = relop(P)) != 0;) {
        if (rel < 0) {
            rel = new_node(P, M_REL);
            add_kid(P, rel, first);
        }
        int e = parse_expr(P);
        add_kid(P, rel, e);
        if (nops < 10) ops |= (uint32_t)op << (3 * nops);
        nops++;
    }
    if (rel >= 0 && !P->fail) P->t->nd[rel].aux = ops, P->t->nd[rel].sub = (uint8_t)(nops > 255 ? 255 : nops);
    leave(P);
    return P->fail ? -1 : rel >= 0 ? rel : first;
}

static int parse_item(parser *P) {
    int a = parse_rel(P);
    skip_ws(P);
    if (!is_command(P, "cup") && !at_cp(P, 0x222A)) return a;  // \cup ∪
    int u = new_node(P, M_UNION);
    add_kid(P, u, a);
    while (!P->fail && (accept_command(P, "cup") || accept_cp(P, 0x222A))) {
        add_kid(P, u, parse_rel(P));
        skip_ws(P);
    }
    return P->fail ? -1 : u;
}

// The length of an "and" / "or" between list items at the cursor, as a word or as \text{ and }
// (\mbox, \textrm, \mathrm too); 0 when there is none. Moves nothing.
static size_t and_or_len(parser *P) {
    skip_ws(P);
    int c = peek(P);
    if ((c | 0x20) == 'a' || (c | 0x20) == 'o') return at_word(P, "and") || at_word(P, "or") ? letter_run(P) : 0;
    if (c != '\\') return 0;
    size_t k = command_len(P);
    const char *name = P->s + P->i + 1;
    bool text = (k == 4 && (!memcmp(name, "text", 4) || !memcmp(name, "mbox", 4))) ||
                (k == 6 && (!memcmp(name, "textrm", 6) || !memcmp(name, "mathrm", 6)));
    if (!text) return 0;
    size_t save = P->i, a, b, len = 0;
    bool failed = P->fail;
    P->i += 1 + command_len(P);
    if (raw_group(P, &a, &b)) {
        while (a < b && isspace((unsigned char)P->s[a])) a++;
        while (b > a && isspace((unsigned char)P->s[b - 1])) b--;
        if ((b - a == 3 && !strncasecmp(P->s + a, "and", 3)) || (b - a == 2 && !strncasecmp(P->s + a, "or", 2)))
            len = P->i - save;
    }
    P->fail = failed;
    P->i = save;
    return len;
}

static bool skip_and_or(parser *P) {
    size_t k = and_or_len(P);
    P->i += k;
    return k > 0;
}

// Items separated by ',' ';' "and" "or" up to a closer in `closers` (or the end).
static int parse_list(parser *P, int op, const char *closers, int *count) {
    if (!enter(P)) return -1;
    int l = new_node(P, op);
    *count = 0;
    while (!P->fail) {
        add_kid(P, l, parse_item(P));
        (*count)++;
        skip_ws(P);
        bool sep = false;
        if (peek(P) == ',' || peek(P) == ';') P->i++, sep = true;
        if (skip_and_or(P)) sep = true;
        if (!sep) break;
        skip_ws(P);
        // a trailing comma; closers is one command ("\\}", "\\rangle") or a set of characters (")]")
        bool closing = closers[0] == '\\' ? starts(P, closers) : closers[0] && peek(P) && strchr(closers, peek(P));
        if (P->i >= P->n || closing) break;
    }
    leave(P);
    return P->fail ? -1 : l;
}

// "1,234", "-12,345.5", "\$32,\!348" as a whole answer are numbers, not lists (math-verify's
// rule too): true, with the digits (no separators, \! or \$) in buf.
static bool thousands_number(const char *s, size_t n, char *buf, size_t *m) {
    size_t k = 0, o = 0;
    while (k < n && isspace((unsigned char)s[k])) k++;
    if (k < n && s[k] == '-') buf[o++] = s[k++];
    if (k + 1 < n && s[k] == '\\' && s[k + 1] == '$') k += 2;
    else if (k < n && s[k] == '$') k++;
    size_t d = 0;
    while (k < n && isdigit((unsigned char)s[k])) buf[o++] = s[k++], d++;
    if (d < 1 || d > 3 || s[k - d] == '0') return false;  // "0,100" and "012,345" are lists, not numbers
    int groups = 0;
    for (;;) {
        size_t j = k;
        if (j >= n || s[j] != ',') break;
        j++;
        if (j + 1 < n && s[j] == '\\' && s[j + 1] == '!') {  // 11,\! 111: a thin negative space
            j += 2;
            while (j < n && s[j] == ' ') j++;
        }
        if (j + 3 > n || !isdigit((unsigned char)s[j]) || !isdigit((unsigned char)s[j + 1]) ||
            !isdigit((unsigned char)s[j + 2]) || (j + 3 < n && isdigit((unsigned char)s[j + 3])))
            return false;
        memcpy(buf + o, s + j, 3), o += 3;
        k = j + 3, groups++;
    }
    if (!groups) return false;
    if (k < n && s[k] == '.') {
        buf[o++] = s[k++];
        while (k < n && isdigit((unsigned char)s[k])) buf[o++] = s[k++];
    }
    while (k < n && isspace((unsigned char)s[k])) k++;
    *m = o;
    return k == n;
}

int tp_math_parse(const char *s, size_t len, mtree *t) {
    if (len > TP_MATH_MAX_LEN) return -1;
    char buf[TP_MATH_MAX_LEN + 1];
    size_t m = 0;
    if (thousands_number(s, len, buf, &m)) s = buf, len = m;
    // a trailing full stop ends a sentence, not a number
    while (len && (s[len - 1] == '.' || isspace((unsigned char)s[len - 1]))) len--;
    parser P = {.s = s, .n = len, .t = t};
    t->n = 0;
    t->nlits = 1;  // offset 0 means "no text"
    int count = 0;
    int l = parse_list(&P, M_SET, "", &count);
    skip_ws(&P);
    if (P.fail || l < 0 || P.i != P.n) return -1;
    t->root = count == 1 ? t->nd[l].kid : l;
    return 0;
}
