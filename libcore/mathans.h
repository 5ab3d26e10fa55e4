// mathans.h — final answers of math solutions: extraction, normalisation, equivalence.
//
// One module for every program that judges an answer: cot-filter --verify now, reward and
// evaluate later. The oracle it is measured against is math-verify (PyPI); the agreement
// corpus and every disagreement live in tests/fixtures/mathans/.
//
// Every function is bounded: nesting deeper than TP_MATH_MAX_DEPTH, inputs longer than
// TP_MATH_MAX_LEN bytes or expressions the evaluator cannot finish in its work budget are
// "cannot judge" (TP_MATH_UNKNOWN), never a crash, a stack overflow or a hang.
#ifndef TP_MATHANS_H
#define TP_MATHANS_H

#include <stddef.h>

#include "error.h"

enum { TP_MATH_MAX_DEPTH = 64, TP_MATH_MAX_LEN = 4096 };

// Where a final answer is looked for, tried in the order given (--extract picks them).
typedef enum tp_extract_mode {
    TP_EXTRACT_BOXED,         // the last \boxed{...} or \fbox{...} (nested braces), also "\boxed 5"
    TP_EXTRACT_HASHES,        // GSM8K: "#### 42"
    TP_EXTRACT_ANSWER_IS,     // "The answer is 42", "the final answer is $\frac12$."
    TP_EXTRACT_ANSWER_COLON,  // "Answer: 42" / "**Answer:** 42" at a line start
    TP_EXTRACT_LAST_NUMBER,   // the last number in the text (fallback)
    TP_EXTRACT_COUNT
} tp_extract_mode;

// The default order: boxed, hashes, answer-is, answer-colon, last-number.
extern const tp_extract_mode tp_extract_default[TP_EXTRACT_COUNT];

// "boxed,hashes,answer,colon,number" (names in the order to try, comma-separated) -> modes.
// Returns the count, or -1 with err naming the unknown word.
int tp_extract_parse(const char *spec, tp_extract_mode *modes, int cap, tp_err *err);

// The answer of text[0..len): its byte span in *start/*alen (inside the braces for \boxed).
// Returns the mode that found it (>= 0), or -1 when no mode finds one.
int tp_math_extract(const char *text, size_t len, const tp_extract_mode *modes, int n_modes, size_t *start,
                    size_t *alen);

typedef enum tp_math_verdict { TP_MATH_DIFFERENT = 0, TP_MATH_EQUAL = 1, TP_MATH_UNKNOWN = -1 } tp_math_verdict;

// Is the answer pred (already extracted) the same mathematical object as gold?
// Both are LaTeX-ish strings as models and datasets write them ("\dfrac{1}{2}", "0.5",
// "x = 5", "\{1,2\}", "(1, 2]", "5\text{ cm}", "50\%"). UNKNOWN when either cannot be parsed.
tp_math_verdict tp_math_equal(const char *pred, size_t plen, const char *gold, size_t glen);
//
// The rules, in short (math-verify's where it has one):
//  - numbers are exact rationals (1,234 = 1234 but 0,100 is a list; 0.5 = \frac12 = 1/2;
//    2\frac12 = 5/2; 1.5e3 and 1.5\times10^3 = 1500); irrational values (\sqrt2, \pi, \sin 1) and
//    what overflows 124-bit integers are long doubles, equal within 1e-9 relative or 1e-12
//    absolute; an overflow from finite numbers is UNKNOWN, never equality, and so is a literal no
//    long double holds (1e99999 is not \infty); two literals compare exactly whatever their size
//    (123...012 != 123...013, 1e47 != 99...9);
//  - i is the imaginary unit: + - * / and integer powers are complex (i^2 = -1, \frac1i = -i),
//    anything else of a non-real value is UNKNOWN (\sqrt i, e^{i\pi}, relations);
//  - a decimal literal against a value with no finite decimal (1/3, \sqrt2, \pi) is equal when both
//    round to the same 6 decimals (0.333333 = 1/3); two finite decimals compare exactly;
//  - 50\% = 0.5 = \frac12, and an integer percentage equals its number (50\% = 50);
//  - units (\text{ cm}, \mathrm{kg}, "5 dollars"), degrees (^\circ), \$, \left/\right are dropped;
//    \text{Word} = Word (case-insensitive); "x = 5" = 5 (either side); relations compare as
//    relations ("y = 2x+3" matches "2y = 4x+6", "x \le 3" matches "3 \ge x"), an inequality in
//    one symbol as its interval ("x > 3" matches "(3, \infty)");
//  - sets and bare lists are unordered ({1,2} = 2,1 = 1,2; "2 \text{ and } 3" and "2 or 3" are
//    the list 2, 3, never a product), tuples ordered, except that a gold tuple fixes the order of
//    a pred list (not of a pred \{set\}); intervals need the same brackets (an infinite end is
//    open); unions are unordered; \pm a is the set {a, -a}; matrices compare by shape and entries;
//  - symbols (lowercased) are evaluated at 5 rational points chosen by their names, the same on
//    both sides, each symbol negative at some: (x+1)^2 = x^2+2x+1 exactly, x+1 != y+1, |x| != x;
//    points where both sides are undefined are skipped, one side undefined is UNKNOWN
//    (\ln(x^2) against 2\ln x).

// Extracts the answer of a whole solution text (modes, or tp_extract_default when modes is
// NULL) and compares it with gold; gold may itself be a \boxed{} solution or "#### x".
// The extracted answer is copied into pred (NUL-terminated, truncated to cap) when pred
// is not NULL; "" when none was found (then the verdict is TP_MATH_DIFFERENT).
tp_math_verdict tp_math_verify(const char *text, size_t len, const char *gold, size_t glen,
                               const tp_extract_mode *modes, int n_modes, char *pred, size_t cap);

#endif
