#!/usr/bin/env python3
"""Builds tests/fixtures/mathans/pairs.jsonl: (pred, gold) answer pairs and math-verify's verdicts.

The golds are the reference answers of MATH-500, GSM8K (after ####), AIME 2024 and AMC 2023
(/work/shared/data, or $THINKPIPE_DATA); the preds are the gold itself, another MATH-500
problem's answer, a random one-character edit of the gold, and rewritings of it: equivalent
ones (\\dfrac, 0.5 for \\frac12, thousands separators, reordered sets, units, "x = ...",
degrees, percentages, scientific notation, \\pm expanded, spacing, sympy's own LaTeX of the
gold) and wrong ones (off by one, a changed digit, a dropped set element, reordered tuples,
swapped fractions, decimals rounded to 3 places). A few hundred pairs hold a whole reference
solution as pred (kind "solution", or "solution-wrong" with a wrong gold): there the C side
extracts the answer first (tp_math_verify). Then collections (collection_pairs, with a generator of
its own so the pairs above do not change): the list, tuple, set and interval golds rewritten ("and" /
"or" lists, reordered sets and tuples, other brackets, a braced set against a tuple), synthetic golds
of those kinds built from the numeric golds, and "a and b" against the gold a*b or a+b.
Rewritings that need a computer algebra system
(expanded and factored polynomials, decimals of irrational numbers) come from sympy, which
math-verify uses. Identical (pred, gold) pairs are kept once. Fixed seed: the output is the
same on every run.

How math-verify (the oracle, tests/ref/requirements.txt) is called: both bare answers are
wrapped as "\\boxed{...}" -- its extraction then takes exactly the answer, nested braces and
all, which is what a bare answer means ("$...$" breaks on answers that hold a "$" or "\\$").
Whole solution texts are parsed as they are. The verdict is
    verify(parse(gold_wrapped), parse(pred_wrapped))      (gold first: verify is not symmetric)
with math-verify's defaults (float_rounding=6, strict=True).

    ~/.cache/thinkpipe-ref-venv/bin/python tests/ref/make_mathans_corpus.py
"""
import json
import os
import random
import re
import sys
from fractions import Fraction

from math_verify import parse, verify

DATA = os.environ.get("THINKPIPE_DATA", "/work/shared/data")
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mathans", "pairs.jsonl")
SEED = 20240817


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def golds():
    out = []
    for r in read_jsonl(f"{DATA}/math500/test.jsonl"):
        out.append(("math500", r["answer"], r["solution"]))
    for r in read_jsonl(f"{DATA}/gsm8k/test.jsonl"):
        out.append(("gsm8k", r["answer"].split("####")[-1].strip(), r["answer"]))
    for r in read_jsonl(f"{DATA}/aime24/test.jsonl"):
        out.append(("aime24", str(r["answer"]), r["solution"]))
    for r in read_jsonl(f"{DATA}/amc23/test.jsonl"):
        a = r["answer"]
        a = str(int(a)) if isinstance(a, float) and a == int(a) else str(a)
        out.append(("amc23", a, None))
    return out


INT_RE = re.compile(r"-?\d+")
DEC_RE = re.compile(r"-?\d*\.\d+")
FRAC_RE = re.compile(r"(-?)\\[dt]?frac\s*\{(\d+)\}\s*\{(\d+)\}")
COMMA_INT_RE = re.compile(r"-?\d{1,3}(,\d{3})+")


def as_fraction(g):
    """The value of a plain number gold, or None."""
    s = g.strip()
    if COMMA_INT_RE.fullmatch(s):
        s = s.replace(",", "")
    if INT_RE.fullmatch(s) or DEC_RE.fullmatch(s):
        return Fraction(s)
    m = FRAC_RE.fullmatch(s)
    if m:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return -v if m.group(1) else v
    return None


def latex_frac(v, cmd="\\frac"):
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{cmd}{{{v.numerator}}}{{{v.denominator}}}"


def decimal_of(v):
    """Terminating decimal of v, or None."""
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    s = f"{float(v):.10f}".rstrip("0").rstrip(".")
    return s if Fraction(s) == v else None


def thousands(n):
    return f"{n:,}"


def top_level_split(s):
    """s split at commas outside (), [], {} -- None when it has no such comma."""
    parts, depth, cur = [], 0, ""
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return parts if len(parts) > 1 else None


def change_digit(g, rng):
    digits = [i for i, c in enumerate(g) if c.isdigit()]
    if not digits:
        return None
    i = rng.choice(digits)
    new = str((int(g[i]) + rng.choice([1, 2, 3, 7])) % 10)
    out = g[:i] + new + g[i + 1:]
    return out if out != g else None


def numeric_rewrites(g, v, rng):
    eq, ne = [], []
    if v.denominator == 1:
        n = int(v)
        eq.append(("int-spaces", f" {n} "))
        if abs(n) >= 1000:
            eq.append(("thousands", thousands(n)))
        eq.append(("int-decimal", f"{n}.0"))
        eq.append(("assign", f"x = {n}"))
        eq.append(("units-text", f"{n}\\text{{ cm}}"))
        eq.append(("units-mathrm", f"{n} \\mathrm{{cm}}"))
        eq.append(("dollars", f"\\${n}"))
        eq.append(("degrees", f"{n}^\\circ"))
        eq.append(("boxed-text", f"{n} \\text{{ apples}}"))
        ne.append(("off-by-one", str(n + 1)))
        ne.append(("off-by-one", str(n - 1)))
        if n != 0:
            ne.append(("negated", str(-n)))
        ne.append(("times-ten", str(n * 10)))
        ne.append(("digit", change_digit(str(n), rng)))
        ne.append(("assign-wrong", f"y = {n + 2}"))
        if abs(n) >= 1000:
            ne.append(("thousands-wrong", thousands(n + 1000)))
        ne.append(("near-decimal", f"{n}.01"))
        ne.append(("fraction-wrong", f"\\frac{{{n}}}{{2}}" if n % 2 else f"\\frac{{{n + 1}}}{{2}}"))
        eq.append(("percent", f"{n}\\%"))
        z = len(str(abs(n))) - len(str(abs(n)).rstrip("0"))
        if abs(n) >= 1000 and z >= 2:
            mant = str(abs(n)).rstrip("0")
            k = len(str(abs(n))) - 1
            m = (mant[0] + "." + mant[1:]) if len(mant) > 1 else mant
            sign = "-" if n < 0 else ""
            eq.append(("sci-times", f"{sign}{m} \\times 10^{{{k}}}"))
            ne.append(("sci-wrong", f"{sign}{m} \\times 10^{{{k - 1}}}"))
            if rng.random() < 0.3:
                eq.append(("e-notation", f"{sign}{m}e{k}"))
    else:
        eq.append(("frac", latex_frac(v)))
        eq.append(("dfrac", latex_frac(v, "\\dfrac")))
        eq.append(("tfrac", latex_frac(v, "\\tfrac")))
        eq.append(("slash", f"{v.numerator}/{v.denominator}"))
        d = decimal_of(v)
        if d:
            eq.append(("decimal", d))
            pct = decimal_of(v * 100)
            if pct and v > 0:
                eq.append(("percent-of-fraction", f"{pct}\\%"))
        if abs(v) > 1:
            w = int(abs(v))
            r = abs(v) - w
            sign = "-" if v < 0 else ""
            if v > 0:
                eq.append(("mixed", f"{w}\\frac{{{r.numerator}}}{{{r.denominator}}}"))
            ne.append(("mixed-wrong", f"{sign}{w + 1}\\frac{{{r.numerator}}}{{{r.denominator}}}"))
        if v.denominator < 10 and v.numerator < 10 and v > 0:
            eq.append(("frac-nobraces", f"\\frac{v.numerator}{v.denominator}"))
        if v != 0:
            ne.append(("reciprocal", latex_frac(1 / v)) if abs(v) != 1 else ("negated", latex_frac(-v)))
        ne.append(("numerator+1", latex_frac(Fraction(v.numerator + 1, v.denominator))))
        ne.append(("negated", latex_frac(-v)))
        ne.append(("rounded-2", f"{float(v):.2f}"))
        if d is None:
            ne.append(("rounded-3", f"{float(v):.3f}"))
            eq.append(("rounded-6", f"{float(v):.6f}"))
    return eq, ne


def general_rewrites(g, rng):
    eq, ne = [], []
    if "\\frac" in g and "\\dfrac" not in g:
        eq.append(("dfrac", g.replace("\\frac", "\\dfrac")))
    if "\\dfrac" in g:
        eq.append(("frac", g.replace("\\dfrac", "\\frac")))
    spaced = re.sub(r"\s*([+\-=,])\s*", r" \1 ", g).strip()
    if spaced != g:
        eq.append(("spaces", spaced))
    compact = re.sub(r"\s+", "", g)
    if compact != g and "\\text" not in g and not re.search(r"\\[a-zA-Z]+\s+[a-zA-Z0-9]", g):
        eq.append(("compact", compact))
    if "\\sqrt{" in g:
        eq.append(("sqrt-nobraces", re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", g)))
    if "\\left" in g:
        eq.append(("no-left-right", g.replace("\\left", "").replace("\\right", "")))
    if re.search(r"\^\\circ$", g):
        eq.append(("no-degrees", g[: -len("^\\circ")]))
    m = re.fullmatch(r"\\text\{\s*(.*?)\s*\}", g)
    if m and re.fullmatch(r"[A-Za-z ]+", m.group(1)):
        eq.append(("text-plain", m.group(1)))
        ne.append(("text-wrong", "\\text{" + m.group(1)[::-1] + "}"))
    if not re.search(r"[=<>]|\\le|\\ge", g) and len(g) < 60 and top_level_split(g) is None:
        eq.append(("assign", f"x = {g}"))
    if re.search(r"[a-z]", g) and "\\text" not in g and "=" not in g and top_level_split(g) is None \
            and "\\cup" not in g and "\\infty" not in g:
        ne.append(("plus-one", f"{g} + 1"))
        ne.append(("times-two", f"2({g})"))
    parts = top_level_split(g.strip())
    stripped = g.strip()
    if parts:
        inner_paren = stripped.startswith("(") or stripped.startswith("\\left(")
        if len(parts) >= 2 and not inner_paren and not stripped.startswith("[") and "\\{" not in stripped:
            rev = ",".join(reversed(parts))
            eq.append(("list-reordered", rev))
            ne.append(("list-dropped", ",".join(parts[:-1])))
    mt = re.fullmatch(r"\(\s*([^()]*)\)", stripped)
    if mt and top_level_split(mt.group(1)) and len(top_level_split(mt.group(1))) >= 3:
        items = top_level_split(mt.group(1))
        ne.append(("tuple-reordered", "(" + ",".join(reversed(items)) + ")"))
        eq.append(("tuple-spaces", "(" + ", ".join(x.strip() for x in items) + ")"))
    ms = re.fullmatch(r"\\\{(.*)\\\}", stripped)
    if ms and top_level_split(ms.group(1)):
        items = top_level_split(ms.group(1))
        eq.append(("set-reordered", "\\{" + ",".join(reversed(items)) + "\\}"))
        ne.append(("set-dropped", "\\{" + ",".join(items[1:]) + "\\}"))
    if "\\pi" in g:
        ne.append(("pi-dropped", g.replace("\\pi", "").strip() or "1"))
    if "\\sqrt" in g:
        ne.append(("sqrt-dropped", g.replace("\\sqrt", "")))
    mi = re.fullmatch(r"(\(|\[)(.*),(.*)(\)|\])", stripped)
    if mi and "," not in mi.group(2) and "," not in mi.group(3):
        flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
        ne.append(("interval-closed", flip[mi.group(1)] + mi.group(2) + "," + mi.group(3) + mi.group(4)))
    mp = re.fullmatch(r"(.+?)\s*\\pm\s*(.+)", stripped)
    if mp and "," not in stripped:
        eq.append(("pm-expanded", f"{mp.group(1)} + {mp.group(2)}, {mp.group(1)} - {mp.group(2)}"))
        ne.append(("pm-half", f"{mp.group(1)} + {mp.group(2)}"))
    if parts and len(parts) >= 2 and not stripped.startswith(("(", "[", "\\{", "\\left")):
        eq.append(("set-braces", "\\{" + ",".join(parts) + "\\}"))
        if len(parts) >= 3:
            eq.append(("and-list", ", ".join(p.strip() for p in parts[:-1]) + ", and " + parts[-1].strip()))
    if "matrix}" in g:
        eq.append(("matrix-bmatrix", re.sub(r"\{[pv]?matrix\}", "{bmatrix}", g)))
        nums = list(re.finditer(r"-?\d+", g))
        if nums:
            m0 = rng.choice(nums)
            ne.append(("matrix-entry", g[:m0.start()] + str(int(m0.group()) + 1) + g[m0.end():]))
    d = change_digit(g, rng)
    if d and "\\text" not in g:
        ne.append(("digit", d))
    return eq, ne


def sympy_rewrites(g):
    """Expanded/factored forms of polynomial golds and decimals of irrational constants."""
    import sympy
    eq, ne = [], []
    try:
        parsed = parse("\\boxed{" + g + "}")
        if not parsed or isinstance(parsed[0], str):
            return eq, ne
        e = parsed[0]
        t = sympy.latex(e)  # sympy's own spelling: \left( \right), \left[\begin{matrix}, \cdot, ...
        if t != g and len(t) < 200:
            eq.append(("sympy-latex", t))
        if not isinstance(e, sympy.Expr):
            return eq, ne
        if e.free_symbols and len(e.free_symbols) <= 2 and not e.has(sympy.I):
            ex = sympy.expand(e)
            fa = sympy.factor(e)
            for kind, form in (("sympy-expand", ex), ("sympy-factor", fa)):
                t = sympy.latex(form)
                if t != g and len(t) < 120:
                    eq.append((kind, t))
            x = sorted(e.free_symbols, key=str)[0]
            ne.append(("sympy-shifted", sympy.latex(sympy.expand(e.subs(x, x + 1)))))
        elif not e.free_symbols and not e.is_Rational and e.is_real:
            val = float(sympy.N(e, 30))
            if abs(val) < 1e9:
                eq.append(("irrational-6", f"{val:.6f}"))
                ne.append(("irrational-3", f"{val:.3f}"))
    except Exception:
        pass
    return eq, ne


def mutation(g, rng):
    """One random character edit (delete, swap, insert, replace): mostly a slightly wrong answer,
    sometimes a harmless one (a space), sometimes malformed LaTeX."""
    s = list(g)
    op, i = rng.randrange(4), rng.randrange(len(g))
    if op == 0 and len(s) > 1:
        del s[i]
    elif op == 1 and len(s) > 1:
        j = min(i + 1, len(s) - 1)
        s[i], s[j] = s[j], s[i]
    elif op == 2:
        s.insert(i, rng.choice(" 0123456789+-,()x{}\\"))
    else:
        s[i] = rng.choice("0123456789")
    p = "".join(s)
    return p if p != g else None


def rewrites(g, rng):
    v = as_fraction(g)
    eq, ne = [], []
    if v is not None:
        e2, n2 = numeric_rewrites(g, v, rng)
        eq += e2
        ne += n2
    e3, n3 = general_rewrites(g, rng)
    eq += e3
    ne += n3
    e4, n4 = sympy_rewrites(g)
    eq += e4
    ne += n4
    seen, out = {g}, []
    for kind, p in eq + ne:
        if p is None or p in seen:
            continue
        seen.add(p)
        out.append((kind, p))
    return out


def text_pred(source, solution):
    """A whole solution (MATH: ends with \\boxed{}; GSM8K: #### x; calculator marks removed)."""
    if source == "gsm8k":
        return re.sub(r"<<[^>]*>>", "", solution)
    return solution


# ---- collections: lists, tuples, sets, intervals ----
# MATH-500 has few collection answers, so besides rewriting those, synthetic golds are built
# from pairs and triples of the numeric golds. What they test: "and"/"or" (as words or
# \text{ and }) separate list items and never multiply them; sets and bare lists are
# unordered, tuples are not; an interval's brackets matter; a braced set against a tuple.

def split_collection(g):
    """(opener, items, closer) of a one-group collection answer, or None. opener is "" for a
    bare list, "\\{" for a set, "(" or "[" for a tuple or an interval."""
    s = g.strip()
    s = re.sub(r"\\left\s*", "", s)
    s = re.sub(r"\\right\s*", "", s)
    if s.startswith("\\{") and s.endswith("\\}"):
        items = top_level_split(s[2:-2])
        return ("\\{", items, "\\}") if items else None
    if s[:1] in "([" and s[-1:] in ")]":
        inner = s[1:-1]
        depth = 0
        for c in inner:  # the brackets must enclose the whole answer: "(0,9) \cup (9,36)" does not
            depth += c in "([{"
            depth -= c in ")]}"
            if depth < 0:
                return None
        items = top_level_split(inner)
        return (s[0], items, s[-1]) if items else None
    if "\\cup" in s or "\\in" in s or re.search(r"[=<>]", s) or COMMA_INT_RE.fullmatch(s) or ",\\!" in s:
        return None
    items = top_level_split(s)
    return ("", items, "") if items else None


def and_list(items, word):
    items = [x.strip() for x in items]
    if len(items) == 2:
        return f"{items[0]} {word} {items[1]}"
    return ", ".join(items[:-1]) + f", {word} " + items[-1]


def real_value(x):
    """The value of an answer item as a float (inf for \\infty), or None."""
    if "\\infty" in x:
        return float("-inf") if x.strip().startswith("-") else float("inf")
    try:
        import sympy
        e = parse("\\boxed{" + x + "}")[0]
        v = complex(sympy.N(e))
        return v.real if v.imag == 0 else None
    except Exception:
        return None


def increasing(a, b):
    va, vb = real_value(a), real_value(b)
    return va is not None and vb is not None and va < vb


def collection_rewrites(opener, items, closer):
    items = [x.strip() for x in items]
    rev = list(reversed(items))
    out = []  # (kind, pred)
    if opener in ("", "\\{"):  # unordered
        out.append(("and-text", and_list(items, "\\text{ and }")))
        out.append(("and-text-reordered", and_list(rev, "\\text{ and }")))
        out.append(("or-text", and_list(items, "\\text{ or }")))
        out.append(("or-word", and_list(rev, "or")))
        out.append(("set-reordered", "\\{" + ", ".join(rev) + "\\}"))
        out.append(("list-reordered", ", ".join(rev)))
        out.append(("set-as-tuple", "(" + ", ".join(rev) + ")"))
        out.append(("assign-or", " \\text{ or } ".join(f"x = {x}" for x in items)))
        if len(items) >= 2:
            out.append(("set-dropped", "\\{" + ", ".join(items[1:]) + "\\}"))
            out.append(("and-text-dropped", and_list(items[:-1], "\\text{ and }") if len(items) > 2 else items[0]))
    else:  # a tuple or an interval
        out.append(("tuple-reordered", opener + ", ".join(rev) + closer))
        out.append(("braced-vs-tuple", "\\{" + ", ".join(items) + "\\}"))
        out.append(("braced-reordered-vs-tuple", "\\{" + ", ".join(rev) + "\\}"))
        out.append(("list-vs-tuple", ", ".join(items)))
        out.append(("tuple-spaces", opener + " " + " , ".join(items) + " " + closer))
        if len(items) == 2 and increasing(items[0], items[1]):  # (8,-2) is a point: as intervals both are empty
            for o, c in (("(", ")"), ("[", ")"), ("(", "]"), ("[", "]")):
                if (o, c) != (opener, closer):
                    out.append(("interval-brackets", o + ", ".join(items) + c))
    return out


def synthetic_collections(numbers, rng, n):
    """n golds made of 2 or 3 distinct numeric golds, in each collection form."""
    out = []
    for _ in range(n):
        k = rng.choice([2, 2, 3])
        items = rng.sample(numbers, k)
        if len(set(items)) < k:
            continue
        form = rng.choice(["list", "set", "tuple", "interval"])
        if form == "interval":
            lo, hi = sorted(items[:2], key=lambda x: as_fraction(x))
            if as_fraction(lo) == as_fraction(hi):
                continue
            out.append((rng.choice("(["), [lo, hi], rng.choice(")]")))
        elif form == "tuple":
            out.append(("(", items, ")"))
        else:
            out.append(("\\{" if form == "set" else "", items, "\\}" if form == "set" else ""))
    return out


def collection_pairs(all_golds, rng):
    pairs = []
    for source, gold, _ in all_golds:
        c = split_collection(gold)
        if c:
            for kind, p in collection_rewrites(*c):
                pairs.append((source, kind, p, gold))
    numbers = sorted({g for src, g, _ in all_golds if as_fraction(g) is not None and "," not in g and len(g) < 12})
    for opener, items, closer in synthetic_collections(numbers, rng, 150):
        gold = opener + ", ".join(items) + closer
        pairs.append(("synthetic", "same", gold, gold))
        cands = collection_rewrites(opener, items, closer)
        for kind, p in rng.sample(cands, min(4, len(cands))):
            pairs.append(("synthetic", kind, p, gold))
    # "a and b" is a list, never the product a*b.
    ints = sorted({int(g) for g in numbers if INT_RE.fullmatch(g) and 4 <= int(g) <= 10**6})
    for n in rng.sample(ints, min(80, len(ints))):
        divisors = [d for d in range(2, int(n ** 0.5) + 1) if n % d == 0]
        if divisors:
            d = rng.choice(divisors)
            word = rng.choice(["\\text{ and }", "\\text{ or }", "\\mbox{ and }", "and"])
            pairs.append(("synthetic", "and-vs-product", f"{d} {word} {n // d}", str(n)))
            pairs.append(("synthetic", "and-vs-sum", f"{d} {word} {n - d}", str(n)))
    return pairs


def mathverify(gold, pred, whole_text):
    g = parse("\\boxed{" + gold + "}")
    p = parse(pred if whole_text else "\\boxed{" + pred + "}")
    return bool(verify(g, p))


def main():
    rng = random.Random(SEED)
    pairs = []
    per_source = {"math500": 14, "gsm8k": 3, "aime24": 7, "amc23": 7}
    all_golds = golds()
    math_golds = [g for src, g, _ in all_golds if src == "math500"]
    for source, gold, solution in all_golds:
        pairs.append((source, "same", gold, gold))
        if source == "math500":  # a random one-character edit: slightly wrong, or malformed
            m = mutation(gold, rng)
            if m:
                pairs.append((source, "mutation", m, gold))
        if source == "math500":  # another problem's answer: almost always wrong, tests false positives
            other = rng.choice(math_golds)
            if other != gold:
                pairs.append((source, "other-gold", other, gold))
        cands = rewrites(gold, rng)
        rng.shuffle(cands)
        # Half equivalent, half not, where both exist.
        eqk = [c for c in cands if not is_wrong_kind(c[0])]
        nek = [c for c in cands if is_wrong_kind(c[0])]
        k = per_source[source]
        take = eqk[: (k + 1) // 2] + nek[: k // 2]
        take += [c for c in eqk[(k + 1) // 2:] if c[0] == "sympy-latex"]  # always: it tests the parser most
        for kind, p in take:
            pairs.append((source, kind, p, gold))
        if solution and source in ("math500", "gsm8k", "aime24") and rng.random() < 0.25:
            text = text_pred(source, solution)
            if len(text) < 1500:
                wrong = [c for c in cands if is_wrong_kind(c[0])]
                if wrong and rng.random() < 0.4:
                    pairs.append((source, "solution-wrong", text, rng.choice(wrong)[1]))
                else:
                    pairs.append((source, "solution", text, gold))
    pairs += collection_pairs(all_golds, random.Random(SEED + 1))  # its own generator: the pairs above stay as they were
    rows, seen = [], set()
    for i, (source, kind, pred, gold) in enumerate(pairs):
        if (pred, gold) in seen:  # "-1" is a gold of several sets: one pair each
            continue
        seen.add((pred, gold))
        verdict = mathverify(gold, pred, kind.startswith("solution"))
        rows.append({"pred": pred, "gold": gold, "mathverify": verdict, "kind": kind, "source": source})
        if i % 500 == 0:
            print(f"{i}/{len(pairs)}", file=sys.stderr)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    n_true = sum(r["mathverify"] for r in rows)
    print(f"{len(rows)} pairs, {n_true} equal per math-verify -> {OUT}")


WRONG_KINDS = ("off-by-one", "negated", "times-ten", "digit", "assign-wrong", "thousands-wrong", "near-decimal",
               "fraction-wrong", "mixed-wrong", "reciprocal", "numerator+1", "rounded-2", "rounded-3",
               "text-wrong", "plus-one", "times-two", "list-dropped", "tuple-reordered", "set-dropped",
               "pi-dropped", "sqrt-dropped", "interval-closed", "sci-wrong", "pm-half", "matrix-entry",
               "sympy-shifted", "irrational-3", "braced-reordered-vs-tuple", "interval-brackets",
               "and-text-dropped", "and-vs-product", "and-vs-sum")


def is_wrong_kind(kind):
    return kind in WRONG_KINDS


if __name__ == "__main__":
    main()
