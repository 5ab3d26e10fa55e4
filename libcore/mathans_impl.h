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
    M_NUM,     // p/q exactly (NF_EXACT), or x when the literal does not fit
    M_VAR,     // a symbol; aux is the hash of its lowercased name (math-verify lowercases too)
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
    M_SET,     // \{a, b\} or a bare list "a, b": unordered
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
enum { NF_DECIMAL = 1, NF_VARS = 2, NF_PM = 4, NF_INTLIT = 8, NF_EXACT = 16 };

typedef struct mnode {
    uint8_t op, sub, depth, flags;
    int32_t kid, next;  // first child, next sibling; -1 for none
    uint32_t aux;
    long double x;      // M_NUM without NF_EXACT
    __int128 p, q;      // M_NUM when exact (q > 0, reduced)
} mnode;

typedef struct mtree {
    mnode nd[TP_MATH_MAX_NODES];
    int n, root;
} mtree;

// Parses an answer (already free of \boxed) into t. Returns 0, or -1 when the text is not
// an answer this parser understands (or is too long, too deep, too big).
int tp_math_parse(const char *s, size_t len, mtree *t);

// Gold against pred: 1 the same, 0 different, -1 cannot tell (mathans_equal.c).
int tp_math_compare_trees(const mtree *gold, const mtree *pred);

// Lowercased letters and digits of a "word" answer (\text{Evelyn}, (A), east), or 0 when
// the answer holds anything else; w gets up to cap-1 bytes, NUL-terminated.
size_t tp_math_word(const char *s, size_t len, char *w, size_t cap);

#endif
