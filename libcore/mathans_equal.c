// mathans_equal.c — are two parsed answers the same mathematical object?
//
// Numbers are exact rationals (__int128 numerator and denominator) as long as they fit;
// what does not fit, and what is irrational (\sqrt2, \pi, \sin 1), is a long double compared
// with a relative tolerance of 1e-9 (absolute 1e-12 near zero). Values are complex (i*i = -1),
// though only + - * / and integer powers take a non-real operand (the rest cannot judge one).
// Expressions with symbols are evaluated at five points where every symbol is a small
// random-looking rational chosen by its name (the same on both sides), negative at two of
// them (|x| is not x): a probabilistic identity test, exact where the arithmetic is.
// Collections follow math-verify's rules: sets and bare lists are unordered, tuples ordered,
// intervals need the same brackets, "x = 5" against "5" compares 5.
#include "mathans.h"
#include "mathans_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NPOINTS = 5, MAX_ITEMS = 128, MAX_NESTING = 16 };

typedef struct mval {
    __int128 p, q;
    long double x;
    bool exact, bad, inf;
} mval;

static const long double REL_TOL = 1e-9L, ABS_TOL = 1e-12L;

// ---- values ----

static mval from_float(long double x) {
    mval v = {.x = x};
    v.inf = isinf(x);
    v.bad = isnan(x);
    return v;
}

static const __int128 LIMIT = (__int128)1 << 124;

static mval from_ratio(__int128 p, __int128 q) {
    if (q == 0) return (mval){.bad = true};
    if (q < 0) p = -p, q = -q;
    __int128 g = tp_math_gcd(p, q);
    if (g > 1) p /= g, q /= g;
    mval v = {.p = p, .q = q, .exact = true};
    v.x = (long double)p / (long double)q;
    return v;
}

static bool small(__int128 v) { return v < LIMIT && v > -LIMIT; }

// Result of a float operation: an overflow from finite operands makes the value unusable.
static mval float_result(long double x, mval a, mval b) {
    mval r = from_float(x);
    if (r.inf && !a.inf && !b.inf) r.bad = true, r.inf = false;
    if (a.bad || b.bad) r.bad = true;
    return r;
}

static mval v_add(mval a, mval b) {
    if (a.bad || b.bad) return (mval){.bad = true};
    if (a.exact && b.exact) {
        __int128 x, y, z, w;
        if (!__builtin_mul_overflow(a.p, b.q, &x) && !__builtin_mul_overflow(b.p, a.q, &y) &&
            !__builtin_add_overflow(x, y, &z) && !__builtin_mul_overflow(a.q, b.q, &w) && small(z) && small(w))
            return from_ratio(z, w);
    }
    return float_result(a.x + b.x, a, b);
}

static mval v_neg(mval a) {
    a.p = -a.p;
    a.x = -a.x;
    return a;
}

static mval v_mul(mval a, mval b) {
    if (a.bad || b.bad) return (mval){.bad = true};
    if (a.exact && b.exact) {
        __int128 x, y;
        if (!__builtin_mul_overflow(a.p, b.p, &x) && !__builtin_mul_overflow(a.q, b.q, &y) && small(x) && small(y))
            return from_ratio(x, y);
    }
    if ((a.exact && a.p == 0) || (b.exact && b.p == 0)) return from_ratio(0, 1);
    return float_result(a.x * b.x, a, b);
}

static mval v_inv(mval a) {
    if (a.bad) return a;
    if (a.exact) return a.p == 0 ? (mval){.bad = true} : from_ratio(a.q, a.p);
    if (a.inf) return from_ratio(0, 1);
    if (a.x == 0) return (mval){.bad = true};
    return from_float(1.0L / a.x);
}

static mval v_div(mval a, mval b) { return v_mul(a, v_inv(b)); }

// The exact integer n-th root of v >= 0, or -1.
static __int128 int_root(__int128 v, int n) {
    if (v < 0) return -1;
    if (v < 2) return v;
    long double r = powl((long double)v, 1.0L / n);
    if (!(r < 1e30L)) return -1;
    __int128 c = (__int128)llroundl(r);
    for (__int128 k = c - 1 > 0 ? c - 1 : 0; k <= c + 1; k++) {
        __int128 acc = 1;
        bool over = false;
        for (int j = 0; j < n && !over; j++) over = __builtin_mul_overflow(acc, k, &acc) || acc > v;
        if (!over && acc == v) return k;
    }
    return -1;
}

static mval v_pow(mval a, mval e) {
    if (a.bad || e.bad) return (mval){.bad = true};
    if (a.exact && e.exact && e.q == 1 && e.p <= 4096 && e.p >= -4096) {
        bool neg = e.p < 0;
        __int128 n = neg ? -e.p : e.p;
        mval r = from_ratio(1, 1), base = a;
        while (n && r.exact && base.exact) {  // squaring: the exact product overflows to float by itself
            if (n & 1) r = v_mul(r, base);
            n >>= 1;
            if (n) base = v_mul(base, base);
        }
        if (r.exact && (base.exact || !n)) return neg ? v_inv(r) : r;
        return float_result(powl(a.x, (long double)e.x), a, e);
    }
    if (a.exact && e.exact && e.q <= 16 && e.p > 0 && e.p <= 64 && a.p >= 0) {  // exact roots: 8^(2/3) = 4
        __int128 rp = int_root(a.p, (int)e.q), rq = int_root(a.q, (int)e.q);
        if (rp >= 0 && rq > 0) return v_pow(from_ratio(rp, rq), from_ratio(e.p, 1));
    }
    if (a.x < 0 && e.exact && e.q % 2 == 1) {  // odd roots of negatives are real
        long double r = powl(-a.x, e.x);
        return float_result((e.p % 2) ? -r : r, a, e);
    }
    return float_result(powl(a.x, e.x), a, e);
}

static mval v_factorial(mval a) {
    if (a.bad || !a.exact || a.q != 1 || a.p < 0) return (mval){.bad = true};
    if (a.p > 170) return (mval){.bad = true};
    mval r = from_ratio(1, 1);
    for (int k = 2; k <= (int)a.p; k++) r = v_mul(r, from_ratio(k, 1));
    return r;
}

static mval v_binom(mval n, mval k) {
    if (n.bad || k.bad || !n.exact || !k.exact || n.q != 1 || k.q != 1 || k.p < 0 || k.p > 1000)
        return (mval){.bad = true};
    mval r = from_ratio(1, 1);
    for (int j = 0; j < (int)k.p; j++) r = v_div(v_mul(r, v_add(n, from_ratio(-j, 1))), from_ratio(j + 1, 1));
    return r;
}

static long double func_value(int id, long double x, long double base, bool has_base) {
    switch (id) {
    case F_SIN: return sinl(x);
    case F_COS: return cosl(x);
    case F_TAN: return tanl(x);
    case F_COT: return 1.0L / tanl(x);
    case F_SEC: return 1.0L / cosl(x);
    case F_CSC: return 1.0L / sinl(x);
    case F_ASIN: return asinl(x);
    case F_ACOS: return acosl(x);
    case F_ATAN: return atanl(x);
    case F_SINH: return sinhl(x);
    case F_COSH: return coshl(x);
    case F_TANH: return tanhl(x);
    case F_LN: return logl(x);
    case F_LOG: return has_base ? logl(x) / logl(base) : logl(x);
    case F_EXP: return expl(x);
    default: return NAN;
    }
}

// ---- complex values ----

// A complex value; im is exactly 0 for a real one, so real arithmetic stays as exact as before.
typedef struct cval {
    mval re, im;
} cval;

static cval real(mval v) { return (cval){v, {.q = 1, .exact = true}}; }
static const cval C_BAD = {{.bad = true}, {.bad = true}};
static bool c_bad(cval z) { return z.re.bad || z.im.bad; }
static bool c_real(cval z) { return z.im.exact && z.im.p == 0; }

static cval c_add(cval a, cval b) {
    if (c_real(a) && c_real(b)) return real(v_add(a.re, b.re));
    return (cval){v_add(a.re, b.re), v_add(a.im, b.im)};
}
static cval c_neg(cval a) { return (cval){v_neg(a.re), v_neg(a.im)}; }

static cval c_mul(cval a, cval b) {
    if (c_real(a) && c_real(b)) return real(v_mul(a.re, b.re));
    return (cval){v_add(v_mul(a.re, b.re), v_neg(v_mul(a.im, b.im))), v_add(v_mul(a.re, b.im), v_mul(a.im, b.re))};
}

static cval c_inv(cval a) {
    if (c_real(a)) return real(v_inv(a.re));
    mval norm = v_add(v_mul(a.re, a.re), v_mul(a.im, a.im));  // 1/z = conj(z) / |z|^2
    return (cval){v_div(a.re, norm), v_neg(v_div(a.im, norm))};
}

static cval c_div(cval a, cval b) { return c_mul(a, c_inv(b)); }

// z^e: real powers as v_pow; a non-real base only to an integer power (by squaring).
static cval c_pow(cval a, cval e) {
    if (c_bad(a) || c_bad(e) || !c_real(e)) return C_BAD;
    if (c_real(a)) return real(v_pow(a.re, e.re));
    if (!e.re.exact || e.re.q != 1 || e.re.p > 4096 || e.re.p < -4096) return C_BAD;
    __int128 n = e.re.p < 0 ? -e.re.p : e.re.p;
    cval r = real(from_ratio(1, 1)), base = a;
    for (; n && !c_bad(r); n >>= 1) {
        if (n & 1) r = c_mul(r, base);
        if (n > 1) base = c_mul(base, base);
    }
    return e.re.p < 0 ? c_inv(r) : r;
}

// ---- evaluation ----

// A symbol's value at point pt: a rational picked by hashing its name, never an integer (fewer
// poles), of size under 3; positive at point 0, negative at point 1 (|x| = x, \sqrt{x^2} = x
// and \ln(x^2) = 2\ln x hold at positive points only), of a sign picked by the hash at the
// others, so that two symbols differ in sign somewhere too (|xy| = xy).
static mval symbol_value(uint32_t h, int pt) {
    static const int den[NPOINTS] = {7, 11, 13, 17, 19};
    uint32_t m = (h ^ (uint32_t)(pt + 1) * 0x9E3779B9u) * 0x85EBCA6Bu;
    m ^= m >> 15;
    int num = 1 + (int)(m % (uint32_t)(3 * den[pt] - 1));
    if (num % den[pt] == 0) num++;
    bool negative = pt == 1 || (pt > 1 && (m >> 28) & 1);
    return from_ratio(negative ? -num : num, den[pt]);
}

static mval eval_real(const mtree *t, int n, int pt, int pm);

static cval eval(const mtree *t, int n, int pt, int pm) {
    if (n < 0) return C_BAD;
    const mnode *nd = &t->nd[n];
    int a = nd->kid, b = a >= 0 ? t->nd[a].next : -1;
    switch ((mop)nd->op) {
    case M_IMAG: return (cval){from_ratio(0, 1), from_ratio(1, 1)};
    case M_SUM: {
        cval s = real(from_ratio(0, 1));
        for (int k = a; k >= 0; k = t->nd[k].next) s = c_add(s, eval(t, k, pt, pm));
        return s;
    }
    case M_PROD: {
        cval s = real(from_ratio(1, 1));
        for (int k = a; k >= 0; k = t->nd[k].next) s = c_mul(s, eval(t, k, pt, pm));
        return s;
    }
    case M_NEG: return c_neg(eval(t, a, pt, pm));
    case M_PM: return pm < 0 ? c_neg(eval(t, a, pt, pm)) : eval(t, a, pt, pm);
    case M_DIV: return c_div(eval(t, a, pt, pm), eval(t, b, pt, pm));
    case M_POW: return c_pow(eval(t, a, pt, pm), eval(t, b, pt, pm));
    case M_PCT: return c_div(eval(t, a, pt, pm), real(from_ratio(100, 1)));
    case M_ABS: {
        cval z = eval(t, a, pt, pm);
        if (c_bad(z) || c_real(z)) return real((z.re.exact ? z.re.p < 0 : z.re.x < 0) ? v_neg(z.re) : z.re);
        return real(from_float(hypotl(z.re.x, z.im.x)));
    }
    default: return real(eval_real(t, n, pt, pm));
    }
}

// A real operand: bad when it is not real (\sin i, i!, \lfloor i \rfloor cannot be judged).
static mval real_part(cval z) { return c_bad(z) || !c_real(z) ? (mval){.bad = true} : z.re; }

// The nodes whose value is real whenever their operands are.
static mval eval_real(const mtree *t, int n, int pt, int pm) {
    const mnode *nd = &t->nd[n];
    int a = nd->kid, b = a >= 0 ? t->nd[a].next : -1;
    switch ((mop)nd->op) {
    case M_NUM: return (nd->flags & NF_EXACT) ? from_ratio(nd->p, nd->q) : from_float(nd->x);
    case M_VAR:
    case M_TEXT: return symbol_value(nd->aux, pt);
    case M_PI_CONST: return from_float(3.14159265358979323846264338327950288L);
    case M_EULER: return from_float(2.71828182845904523536028747135266250L);
    case M_INF: return from_float(INFINITY);
    case M_ROOT: {
        mval idx = b >= 0 ? real_part(eval(t, b, pt, pm)) : from_ratio(2, 1);
        return v_pow(real_part(eval(t, a, pt, pm)), v_inv(idx));
    }
    case M_FUNC: {
        mval x = real_part(eval(t, a, pt, pm)), base = b >= 0 ? real_part(eval(t, b, pt, pm)) : from_ratio(10, 1);
        int f = nd->sub;
        bool odd = f == F_SIN || f == F_TAN || f == F_ASIN || f == F_ATAN || f == F_SINH || f == F_TANH;
        if (x.exact && x.p == 0 && odd) return from_ratio(0, 1);  // sin 0 = 0 exactly, not 1e-20
        if (x.exact && x.p == 0 && (f == F_COS || f == F_EXP || f == F_COSH)) return from_ratio(1, 1);
        if (x.exact && x.p == 1 && x.q == 1 && (f == F_LN || f == F_LOG)) return from_ratio(0, 1);
        return float_result(func_value(nd->sub, x.x, base.x, b >= 0), x, base);
    }
    case M_FACT: return v_factorial(real_part(eval(t, a, pt, pm)));
    case M_FLOOR:
    case M_CEIL: {
        mval x = real_part(eval(t, a, pt, pm));
        if (x.bad || x.inf) return (mval){.bad = true};
        if (x.exact) {
            __int128 f = x.p / x.q;
            if (x.p % x.q && x.p < 0) f--;
            if (nd->op == M_CEIL && x.p % x.q) f++;
            return from_ratio(f, 1);
        }
        return from_float(nd->op == M_FLOOR ? floorl(x.x) : ceill(x.x));
    }
    case M_BINOM: return v_binom(real_part(eval(t, a, pt, pm)), real_part(eval(t, b, pt, pm)));
    default: return (mval){.bad = true};  // collections and relations are not numbers
    }
}

// ---- comparison of scalars ----

static bool float_literal(const mtree *t, int n) {
    while (n >= 0 && (t->nd[n].op == M_NEG || t->nd[n].op == M_PCT)) n = t->nd[n].kid;
    return n >= 0 && t->nd[n].op == M_NUM && (t->nd[n].flags & NF_DECIMAL);
}

// An integer literal, maybe negated, maybe with a percent sign: its value in *v.
static bool int_literal(const mtree *t, int n, bool *pct, mval *v) {
    bool neg = false;
    *pct = false;
    if (n >= 0 && t->nd[n].op == M_PCT) *pct = true, n = t->nd[n].kid;
    if (n >= 0 && t->nd[n].op == M_NEG && !*pct) neg = true, n = t->nd[n].kid;  // -5 yes, -5\% no (as math-verify)
    if (n < 0 || t->nd[n].op != M_NUM || !(t->nd[n].flags & NF_INTLIT) || !(t->nd[n].flags & NF_EXACT)) return false;
    *v = from_ratio(neg ? -t->nd[n].p : t->nd[n].p, 1);
    return true;
}

typedef struct side {
    const mtree *t;
    int n, pm;
} side;

// A number literal, maybe negated (*neg): its M_NUM node, or -1.
static int plain_literal(const mtree *t, int n, bool *neg) {
    *neg = false;
    while (n >= 0 && t->nd[n].op == M_NEG) *neg = !*neg, n = t->nd[n].kid;
    return n >= 0 && t->nd[n].op == M_NUM && t->nd[n].aux ? n : -1;
}

// Two literals, one too long for p/q (123456789012345678901234567890123456789012, 1e47):
// compared by their texts, exactly, not as long doubles. -2 when this does not apply.
static int literals_equal(side g, side p) {
    bool gneg, pneg;
    int a = plain_literal(g.t, g.n, &gneg), b = plain_literal(p.t, p.n, &pneg);
    if (a < 0 || b < 0 || (g.t->nd[a].flags & p.t->nd[b].flags & NF_EXACT)) return -2;
    return gneg == pneg && !strcmp(g.t->lits + g.t->nd[a].aux, p.t->lits + p.t->nd[b].aux);
}

// A rational with a finite decimal expansion (its denominator has no prime but 2 and 5).
static bool terminating(mval v) {
    __int128 q = v.q;
    while (q % 2 == 0) q /= 2;
    while (q % 5 == 0) q /= 5;
    return q == 1;
}

// -1 unknown, 0 different, 1 equal. round6 (a side is a decimal literal): math-verify's rounding
// to 6 places, so 0.333333 is 1/3 and 1.414214 is \sqrt2 -- but two finite decimals compare
// exactly (0.0000671 is not 0.0000672; math-verify says it is).
static int values_equal(mval a, mval b, bool round6) {
    if (a.bad || b.bad) return -1;
    if (a.inf || b.inf) return a.inf && b.inf && (a.x > 0) == (b.x > 0);
    if (a.exact && b.exact && (!round6 || (terminating(a) && terminating(b)))) return a.p == b.p && a.q == b.q;
    if (round6 && fabsl(a.x) < 1e12L && fabsl(b.x) < 1e12L)  // math-verify rounds to 6 decimals when one is a decimal
        return llroundl(a.x * 1e6L) == llroundl(b.x * 1e6L);
    long double d = fabsl(a.x - b.x), m = fmaxl(fabsl(a.x), fabsl(b.x));
    return d <= ABS_TOL || d <= REL_TOL * m;
}

// Complex values: the real parts and the imaginary parts.
static int cvalues_equal(cval a, cval b, bool round6) {
    if (c_bad(a) || c_bad(b)) return -1;
    int re = values_equal(a.re, b.re, round6), im = values_equal(a.im, b.im, round6);
    return re == 0 || im == 0 ? 0 : re < 0 || im < 0 ? -1 : 1;
}

static int scalar_equal(side g, side p) {
    bool gp, pp;
    mval gi, pi;
    if (int_literal(g.t, g.n, &gp, &gi) && int_literal(p.t, p.n, &pp, &pi) && gp != pp)
        if (gi.p == pi.p) return 1;  // 9\% and 9 (math-verify's rule for integers)
    int lit = literals_equal(g, p);
    if (lit != -2) return lit;
    bool vars = (g.t->nd[g.n].flags | p.t->nd[p.n].flags) & NF_VARS;
    bool round6 = float_literal(g.t, g.n) || float_literal(p.t, p.n);
    int good = 0;
    for (int pt = 0; pt < (vars ? NPOINTS : 1); pt++) {
        cval a = eval(g.t, g.n, pt, g.pm), b = eval(p.t, p.n, pt, p.pm);
        if (c_bad(a) && c_bad(b)) continue;  // both undefined here (a pole, \ln of a negative): try the others
        int r = cvalues_equal(a, b, round6);
        if (r <= 0) return r;  // one side undefined: cannot tell (\ln(x^2) against 2\ln x)
        good++;
    }
    return good ? 1 : -1;
}

// ---- collections ----

typedef struct items {
    side it[MAX_ITEMS];
    int n;
    bool overflow;
} items;

static void push(items *l, const mtree *t, int n, int pm) {
    if (l->n >= MAX_ITEMS) {
        l->overflow = true;
        return;
    }
    l->it[l->n++] = (side){t, n, pm};
}

// The elements of a collection node, each ± element twice (+ then -).
static void elements(const mtree *t, int n, items *l) {
    l->n = 0;
    l->overflow = false;
    for (int k = t->nd[n].kid; k >= 0; k = t->nd[k].next) {
        push(l, t, k, 1);
        if (t->nd[k].flags & NF_PM) push(l, t, k, -1);
    }
}

static bool is_collection(int op) { return op == M_SET || op == M_TUPLE || op == M_UNION || op == M_MATRIX; }

// A collection's elements; a scalar as a one-element set, a ± scalar as a two-element one.
static void as_items(side s, items *l) {
    if (is_collection(s.t->nd[s.n].op)) {
        elements(s.t, s.n, l);
        return;
    }
    l->n = 0;
    l->overflow = false;
    push(l, s.t, s.n, 1);
    if (s.t->nd[s.n].flags & NF_PM) push(l, s.t, s.n, -1);
}

static int compare(side g, side p, int depth);
static int compare_collections(side g, side p, int depth);
static int brackets(const mtree *t, int n);
static bool is_infinity(const mtree *t, int n);

static int ordered_equal(const items *a, const items *b, int depth) {
    if (a->n != b->n) return 0;
    int unknown = 0;
    for (int k = 0; k < a->n; k++) {
        int r = compare(a->it[k], b->it[k], depth);
        if (r == 0) return 0;
        if (r < 0) unknown = 1;
    }
    return unknown ? -1 : 1;
}

// A multiset match: every gold element pairs with an unused equal pred element.
static int unordered_equal(const items *g, const items *p, int depth) {
    if (g->n != p->n) return 0;
    bool used[MAX_ITEMS] = {0};
    int unknown = 0;
    for (int k = 0; k < g->n; k++) {
        bool found = false;
        for (int j = 0; j < p->n && !found; j++) {
            if (used[j]) continue;
            int r = compare(g->it[k], p->it[j], depth);
            if (r == 1) used[j] = found = true;
            else if (r < 0) unknown = 1;
        }
        if (!found) return unknown ? -1 : 0;
    }
    return 1;
}

static bool is_infinity(const mtree *t, int n) {
    while (n >= 0 && (t->nd[n].op == M_NEG || t->nd[n].op == M_PM)) n = t->nd[n].kid;
    return n >= 0 && t->nd[n].op == M_INF;
}

// The brackets of a two-element tuple; an infinite end is open whatever its bracket ([-\infty, 0]).
static int brackets(const mtree *t, int n) {
    const mnode *nd = &t->nd[n];
    int b = nd->sub;
    if (is_infinity(t, nd->kid)) b |= MB_LEFT_OPEN;
    if (is_infinity(t, t->nd[nd->kid].next)) b |= MB_RIGHT_OPEN;
    return b;
}

// A closed or half-open interval: brackets matter, only another interval can equal it.
static bool is_interval(const mtree *t, int n) {
    const mnode *nd = &t->nd[n];
    if (nd->op != M_TUPLE || nd->kid < 0 || t->nd[nd->kid].next < 0 || t->nd[t->nd[nd->kid].next].next >= 0)
        return false;
    return brackets(t, n) != (MB_LEFT_OPEN | MB_RIGHT_OPEN);
}

static bool is_equation(const mtree *t, int n) {
    const mnode *nd = &t->nd[n];
    if (nd->op != M_REL) return false;
    for (int k = 0; k < nd->sub && k < 10; k++)
        if (((nd->aux >> (3 * k)) & 7) != MR_EQ) return false;
    return true;
}

// Only symbols (and products, powers, quotients of them) on the left: "x = 5", "xy = 6".
static bool only_symbols(const mtree *t, int n) {
    const mnode *nd = &t->nd[n];
    if (nd->op == M_VAR || nd->op == M_TEXT) return true;
    if (nd->op != M_PROD && nd->op != M_DIV && nd->op != M_FUNC) return false;
    for (int k = nd->kid; k >= 0; k = t->nd[k].next)
        if (!only_symbols(t, k)) return false;
    return true;
}

static int last_operand(const mtree *t, int n) {
    int k = t->nd[n].kid;
    while (k >= 0 && t->nd[k].next >= 0) k = t->nd[k].next;
    return k;
}

// lhs - rhs of a one-link relation, or of first lhs - last rhs, at one point (bad when not real).
static mval rel_difference(side s, int pt) {
    const mtree *t = s.t;
    int l = t->nd[s.n].kid, r = last_operand(t, s.n);
    return real_part(c_add(eval(t, l, pt, s.pm), c_neg(eval(t, r, pt, s.pm))));
}

static int relation_op(const mtree *t, int n) {
    int links = t->nd[n].sub;
    return links ? (int)((t->nd[n].aux >> (3 * (links - 1 < 9 ? links - 1 : 9))) & 7) : 0;
}

static int flipped(int op) {
    return op == MR_LT ? MR_GT : op == MR_GT ? MR_LT : op == MR_LE ? MR_GE : op == MR_GE ? MR_LE : op;
}

// Two relations: the same when lhs - rhs agree up to a constant factor (positive for
// inequalities, after flipping a > b into b < a); chains compare operand by operand.
static int relations_equal(side g, side p, int depth) {
    const mtree *gt = g.t, *pt = p.t;
    int gl = gt->nd[g.n].sub, pl = pt->nd[p.n].sub;
    if (gl != pl) return 0;
    bool scalars = true;
    for (int k = gt->nd[g.n].kid; k >= 0; k = gt->nd[k].next) scalars &= !is_collection(gt->nd[k].op);
    for (int k = pt->nd[p.n].kid; k >= 0; k = pt->nd[k].next) scalars &= !is_collection(pt->nd[k].op);
    if (gl > 1 || !scalars) {  // chains and x \in [a, b]: the same ops between equal operands
        if (gt->nd[g.n].aux != pt->nd[p.n].aux || depth > MAX_NESTING) return 0;
        int unknown = 0;
        for (int a = gt->nd[g.n].kid, b = pt->nd[p.n].kid; a >= 0 && b >= 0; a = gt->nd[a].next, b = pt->nd[b].next) {
            int r = compare((side){gt, a, 0}, (side){pt, b, 0}, depth);
            if (r == 0) return 0;
            if (r < 0) unknown = 1;
        }
        return unknown ? -1 : 1;
    }
    int go = relation_op(gt, g.n), po = relation_op(pt, p.n), sign = 1;
    if (go != po) {
        if (flipped(go) != po) return 0;
        sign = -1;
    }
    long double ratio = 0;
    bool have_ratio = false;
    int good = 0;
    for (int k = 0; k < NPOINTS; k++) {
        mval a = rel_difference(g, k), b = rel_difference(p, k);
        if (a.bad && b.bad) continue;  // both undefined at this point
        if (a.bad || b.bad) return -1;
        good++;
        bool az = a.exact ? a.p == 0 : fabsl(a.x) <= ABS_TOL, bz = b.exact ? b.p == 0 : fabsl(b.x) <= ABS_TOL;
        if (az || bz) {
            if (az != bz) return 0;
            continue;
        }
        long double r = a.x / b.x * sign;
        if (go != MR_EQ && go != MR_NE && r <= 0) return 0;
        if (!have_ratio) ratio = r, have_ratio = true;
        else if (fabsl(r - ratio) > REL_TOL * fabsl(ratio)) return 0;
    }
    return good ? 1 : -1;
}

// An inequality in one symbol as the interval it describes: x > 3 is (3, \infty), -1 <= x < 2 is
// [-1, 2). ends[0] and ends[1] are the lower and upper bounds (-1: infinite), *open their MB_ bits.
static bool inequality_interval(const mtree *t, int n, int ends[2], int *open) {
    const mnode *nd = &t->nd[n];
    int links = nd->sub;
    if (nd->op != M_REL || links < 1 || links > 2) return false;
    int ops[2] = {(int)(nd->aux & 7), (int)((nd->aux >> 3) & 7)};
    int operand[3] = {nd->kid, -1, -1};
    for (int k = 1; k <= links; k++) operand[k] = t->nd[operand[k - 1]].next;
    bool up = ops[0] == MR_LT || ops[0] == MR_LE;  // a < x (< b): the symbol's bounds read left to right
    for (int k = 0; k < links; k++)
        if ((ops[k] == MR_LT || ops[k] == MR_LE) != up || ops[k] == MR_EQ || ops[k] == MR_NE) return false;
    int var = links == 2 ? 1 : t->nd[operand[0]].op == M_VAR ? 0 : t->nd[operand[1]].op == M_VAR ? 1 : -1;
    if (var < 0 || t->nd[operand[var]].op != M_VAR) return false;
    for (int k = 0; k <= links; k++)
        if (k != var && (t->nd[operand[k]].flags & NF_VARS)) return false;
    ends[0] = ends[1] = -1;
    *open = MB_LEFT_OPEN | MB_RIGHT_OPEN;
    for (int k = 0; k <= links; k++) {
        if (k == var) continue;
        int op = k < var ? ops[k] : ops[k - 1];  // the relation between this bound and the symbol
        bool strict = op == MR_LT || op == MR_GT;
        bool lower = (k < var) == up;  // a < x: a is a lower bound; x < b: b is an upper one
        ends[lower ? 0 : 1] = operand[k];
        if (!strict) *open &= ~(lower ? MB_LEFT_OPEN : MB_RIGHT_OPEN);
    }
    return true;
}

static int relation_vs_interval(side g, side p, int depth) {
    side rel = g.t->nd[g.n].op == M_REL ? g : p, other = g.t->nd[g.n].op == M_REL ? p : g;
    const mtree *ot = other.t;
    int ends[2], open;
    if (!inequality_interval(rel.t, rel.n, ends, &open)) return 0;
    const mnode *o = &ot->nd[other.n];
    if (o->op != M_TUPLE || o->kid < 0 || ot->nd[o->kid].next < 0 || ot->nd[ot->nd[o->kid].next].next >= 0) return 0;
    if (brackets(ot, other.n) != open) return 0;
    int oe[2] = {o->kid, ot->nd[o->kid].next}, unknown = 0;
    for (int k = 0; k < 2; k++) {
        int r = ends[k] < 0 ? is_infinity(ot, oe[k]) : compare((side){rel.t, ends[k], 0}, (side){ot, oe[k], 0}, depth);
        if (r == 0) return 0;
        if (r < 0) unknown = 1;
    }
    return unknown ? -1 : 1;
}

static int compare(side g, side p, int depth) {
    if (depth > TP_MATH_MAX_DEPTH) return -1;
    depth++;
    const mtree *gt = g.t, *pt = p.t;
    // Equations: "x = 5" against "5" compares 5 (either way round); two relations compare as such.
    bool geq = is_equation(gt, g.n), peq = is_equation(pt, p.n);
    bool gassign = geq && only_symbols(gt, gt->nd[g.n].kid);
    if (peq && !geq) p.n = last_operand(pt, p.n), peq = false;
    else if (gassign && !peq) g.n = last_operand(gt, g.n), geq = false;
    int gop = gt->nd[g.n].op, pop = pt->nd[p.n].op;
    if (gop == M_REL && pop == M_REL) return relations_equal(g, p, depth);
    if (gop == M_REL || pop == M_REL) return relation_vs_interval(g, p, depth);
    // A lone ± answer is the set of its two values.
    bool gcol = is_collection(gop) || (gt->nd[g.n].flags & NF_PM && g.pm == 0);
    bool pcol = is_collection(pop) || (pt->nd[p.n].flags & NF_PM && p.pm == 0);
    if (!gcol && !pcol) {
        if (g.pm == 0) g.pm = 1;
        if (p.pm == 0) p.pm = 1;
        return scalar_equal(g, p);
    }
    return compare_collections(g, p, depth);
}

// Collections, in a function of their own: only they need the item lists on the stack.
static int compare_collections(side g, side p, int depth) {
    if (depth > MAX_NESTING) return -1;
    const mtree *gt = g.t, *pt = p.t;
    int gop = gt->nd[g.n].op, pop = pt->nd[p.n].op;
    items la, lb, *a = &la, *b = &lb;
    if (gop == M_MATRIX || pop == M_MATRIX) {
        if (gop != pop || gt->nd[g.n].aux != pt->nd[p.n].aux) return 0;
        elements(gt, g.n, a), elements(pt, p.n, b);
        return ordered_equal(a, b, depth);
    }
    if (gop == M_UNION || pop == M_UNION) {
        if (gop != pop) return 0;
        elements(gt, g.n, a), elements(pt, p.n, b);
        return unordered_equal(a, b, depth);
    }
    bool gint = is_interval(gt, g.n), pint = is_interval(pt, p.n);
    if (gint || pint) {
        if (!(gint && pint) || brackets(gt, g.n) != brackets(pt, p.n)) return 0;
        elements(gt, g.n, a), elements(pt, p.n, b);
        return ordered_equal(a, b, depth);
    }
    // Sets, tuples and scalars.
    as_items(g, a);
    as_items(p, b);
    if (a->overflow || b->overflow) return -1;
    // A gold tuple fixes the order of a pred list (math-verify's rule), not of a pred set: \{2,1\}
    // is \{1,2\}, so against (1,2) both compare as sets (math-verify's order-bound "\{1,2\} = (1,2)
    // but \{2,1\} != (1,2)" depends on how the set is written). A gold set or list binds no order.
    bool pset = pop == M_SET && !(pt->nd[p.n].flags & NF_BRACED);
    if (gop == M_TUPLE && (pop == M_TUPLE || pset)) return ordered_equal(a, b, depth);
    if (pop == M_TUPLE && gop != M_SET) return ordered_equal(a, b, depth);
    return unordered_equal(a, b, depth);
}

int tp_math_compare_trees(const mtree *gold, const mtree *pred) {
    return compare((side){gold, gold->root, 0}, (side){pred, pred->root, 0}, 0);
}
