// mathans_impl.h — inside the math answers module: the expression tree that
// mathans_parse.c builds from an answer and mathans_equal.c evaluates and compares.
//
// A tree lives in a fixed arena (no allocation per answer): nodes are indices, children are
// a first-child / next-sibling list, so sums and products of any length are one node and
// the tree is never deeper than the parser's nesting limit (evaluation recursion is bounded).
#ifndef TP_MATHANS_IMPL_H
#define TP_MATHANS_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { TP_MATH_MAX_NODES = 1024 };

typedef enum mop {
    M_NUM,     // p/q exactly (NF_EXACT), or x when the literal does not fit; aux: its text in lits
    M_VAR,     // a symbol; aux is the hash of its lowercased name (math-verify lowercases too)
    M_IMAG,    // the imaginary unit: the symbol i (or I), alone, not subscripted
    M_TEXT,    // \text{word}: a symbol named by the word (units are dropped before this)
    M_PI_CONST, M_EULER, M_INF,
    M_SUM,     // children added
    M_PROD,    // children multiplied
    M_NEG,     // -kid
    M_PM,      // ±kid: + or - by the evaluation's sign choice
    M_DIV,     // kid / kid->next
    M_POW,     // kid ^ kid->next
    M_ROOT,    // kid ^ (1 / kid->next)
    M_FUNC,    // sub: function id; kid (argument), kid->next (log base) when present
    M_FACT,    // kid!
    M_PCT,     // kid % (kid / 100)
    M_ABS, M_FLOOR, M_CEIL,
    M_BINOM,   // binom(kid, kid->next)
    M_SET,     // \{a, b\} (NF_BRACED) or a bare list "a, b": unordered
    M_TUPLE,   // (a, b, c) or an interval (a, b]: sub holds the brackets (MB_*)
    M_UNION,   // kids united (intervals, sets)
    M_MATRIX,  // aux = columns; kids row-major
    M_REL,     // a chain a op b op c: kids are the operands, aux the ops (3 bits each, first low)
} mop;

// M_FUNC's sub.
enum { F_SIN = 1, F_COS, F_TAN, F_COT, F_SEC, F_CSC, F_ASIN, F_ACOS, F_ATAN, F_SINH, F_COSH, F_TANH, F_LN,
       F_LOG, F_EXP, F_SQRT };
enum { MB_LEFT_OPEN = 1, MB_RIGHT_OPEN = 2 };  // M_TUPLE: '(' and ')'; '[' / ']' when clear
enum { MR_EQ = 1, MR_LT, MR_LE, MR_GT, MR_GE, MR_NE };
// Node flags; NF_VARS and NF_PM hold for the whole subtree. NF_EXACT: an M_NUM is p/q (else x).
// NF_BRACED: an M_SET written with \{ \} (a set, not a bare list).
enum { NF_DECIMAL = 1, NF_VARS = 2, NF_PM = 4, NF_INTLIT = 8, NF_EXACT = 16, NF_BRACED = 32 };

typedef struct mnode {
    uint8_t op, sub, depth, flags;
    int32_t kid, next;  // first child, next sibling; -1 for none
    uint32_t aux;
    long double x;      // M_NUM without NF_EXACT
    __int128 p, q;      // M_NUM when exact (q > 0, reduced)
} mnode;

// lits holds every number literal's value as text, NUL-terminated: its significant digits and
// a power of ten ("1.50e3" is "15e2", "0.05" is "5e-2", "000" is "0e0"), so that two literals
// too long for p/q still compare exactly. An M_NUM's aux is the offset of its text (0: none).
typedef struct mtree {
    mnode nd[TP_MATH_MAX_NODES];
    int n, root;
    size_t nlits;
    char lits[3 * TP_MATH_MAX_LEN];
} mtree;

// |a| and |b|'s greatest common divisor (0 when both are 0).
static inline __int128 tp_math_gcd(__int128 a, __int128 b) {
    if (a < 0) a = -a;
    if (b < 0) b = -b;
    while (b) {
        __int128 r = a % b;
        a = b, b = r;
    }
    return a;
}

// Parses an answer (already free of \boxed) into t. Returns 0, or -1 when the text is not
// an answer this parser understands (or is too long, too deep, too big).
int tp_math_parse(const char *s, size_t len, mtree *t);

// Gold against pred: 1 the same, 0 different, -1 cannot tell (mathans_equal.c).
int tp_math_compare_trees(const mtree *gold, const mtree *pred);

// Lowercased letters and digits of a "word" answer (\text{Evelyn}, (A), east), or 0 when
// the answer holds anything else; w gets up to cap-1 bytes, NUL-terminated.
size_t tp_math_word(const char *s, size_t len, char *w, size_t cap);

#endif
