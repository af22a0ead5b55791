"""Fast, exact answer comparison without SymPy: string normalisation and a small numeric evaluator.

The fast path decides most real answers (integers, decimals, fractions, radicals, π, percent, tuples and
intervals of those, text and multiple-choice answers) in microseconds. It returns ``None`` ("undecided")
whenever it is not sure, and the caller then asks math-verify. Conventions follow
``grading_anchors.md`` §5: value over form, approximations are not exact values (except 15+ significant
digit float renderings), percent only when a side carries ``%``, bracket type matters, unordered lists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

# ---------------------------------------------------------------------------------------------------------
# String normalisation
# ---------------------------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|metres?|centimeters?|millimeters?|kilometers?|inch(?:es)?|in|ft|feet|foot|yards?|"
    "miles?|mi|mph|kg|g|grams?|kilograms?|pounds?|lbs?|ounces?|oz|liters?|litres?|l|ml|gallons?|seconds?|"
    "sec|s|minutes?|min|hours?|hrs?|h|days?|weeks?|months?|years?|dollars?|cents?|euros?|degrees?|deg|"
    "radians?|rad|units?|square|sq|cubic|squared|cubed|per|people|persons?|students?|ways|points?|"
    "times|percent|steps?|coins?|marbles?|apples?|pages?|cookies?|eggs?|boxes|balls?|books?"
)
_UNIT_SUFFIX_TEXT = re.compile(
    r"\s*\\(?:text|textrm|mbox|mathrm|operatorname)\s*\{(?!\s*[aApP]\.?\s*[mM]\.?\s*\})\s*(?:[a-zA-Z][a-zA-Z ./]*)(?:\^?\{?[23]\}?)?\s*\}"
    r"(?:\s*\^\{?[23]\}?)?\s*$"
)
_UNIT_SUFFIX_WORDS = re.compile(rf"(?<=[\d}}])\s+(?:(?:{_UNIT_WORDS})\b\.?\s*)+(?:\^\{{?[23]\}}?)?\s*$")
_PERCENT = re.compile(r"\\?%|\\text\{\s*percent\s*\}|\s+percent$")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}
_SIMPLE_SUBS = [
    (re.compile(r"\\(?:displaystyle|textstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"(?<!\\)\\!"), ""),
    (re.compile(r"(?<!\\)\\(?:,|;|:|quad|qquad)|~"), " "),
    (re.compile(r"(?<!\\)\\ "), " "),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°"), ""),
    (re.compile(r"\\\$|\$"), ""),
    (re.compile(r"\\varnothing|\\emptyset|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\mathbb\s*\{?\s*R\s*\}?"), r"(-\\infty,\\infty)"),
    (re.compile(r"\\le(?![a-zA-Z])"), r"\\leq"),
    (re.compile(r"\\ge(?![a-zA-Z])"), r"\\geq"),
    (re.compile(r"\\neq?(?![a-zA-Z])"), r"\\neq"),
]
_WRAPPERS = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox|boxed)\s*\{(.*)\}$", re.S)


def strip_wrappers(text: str) -> str:
    """Remove whole-answer wrappers: ``$…$``, ``\\text{…}``, ``\\boxed{…}``, a trailing period."""
    text = text.strip()
    for _ in range(4):
        before = text
        text = text.strip().rstrip(".").strip()
        if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
            text = text.strip("$").strip()
        match = _WRAPPERS.match(text)
        if match and _balanced(match.group(1)):
            text = match.group(1).strip()
        if text == before:
            break
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return False
    return depth == 0


def normalize_answer(text: str) -> str:
    """Canonical LaTeX-ish string of an answer: decorations, units and spacing removed.

    Keeps ``%`` (its meaning is decided by :func:`compare_answers`) and all mathematical content.
    """
    text = strip_wrappers(text)
    for pattern, repl in _SIMPLE_SUBS:
        text = pattern.sub(repl, text)
    text = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", text)
    text = re.sub(r"\s*\\text\{\s*(?:and|or)\s*\}\s*|\s+(?:and|or)\s+", ", ", text)  # "1 and 2" lists  # "x \in [1,2]" states the interval
    for _ in range(2):
        stripped = _UNIT_SUFFIX_TEXT.sub("", text)
        stripped = _UNIT_SUFFIX_WORDS.sub("", stripped) if re.search(r"\d", stripped) else stripped
        if stripped.strip() and stripped != text:
            text = stripped
    text = strip_wrappers(text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


def comparison_key(text: str) -> str:
    """A whitespace-free, wrapper-free key: two answers with the same key are equal."""
    key = normalize_answer(text)
    key = re.sub(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", key)
    return key.replace(" ", "").replace("{,}", ",")


# ---------------------------------------------------------------------------------------------------------
# Multiple choice and text answers
# ---------------------------------------------------------------------------------------------------------

_CHOICE = re.compile(r"^\(?([A-E])\)?(?:[\s:.)]+(.*))?$", re.S)


def choice_letter(text: str) -> tuple[str, str] | None:
    """``(letter, rest)`` for ``B``, ``(B)``, ``\\text{(B)}``, ``\\textbf{(C) }12``, ``\\mathrm{(D)}``."""
    plain = re.sub(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", text).strip()
    plain = strip_wrappers(plain).strip()
    match = _CHOICE.match(plain)
    if not match:
        return None
    letter, rest = match.group(1), (match.group(2) or "").strip()
    if not rest and not plain.startswith("(") and len(plain) != 1:
        return None
    if rest and not plain.startswith("("):
        return None  # "A 5" is not a choice, "(A) 5" is
    return letter, rest


_TIME = re.compile(r"^(\d{1,2}:\d{2})\s*((?:[ap])\.?\s*m\.?)?$", re.I)


def text_key(text: str) -> str | None:
    """Lower-case letters-only key of a word answer ("Evelyn", "\\text{yes}", "4:30 p.m."), else None."""
    plain = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", text).strip()
    time_of_day = _TIME.match(plain)
    if time_of_day:
        return time_of_day.group(1) + re.sub(r"[^apm]", "", (time_of_day.group(2) or "").lower())
    if "\\" in plain or not re.search(r"[A-Za-z]{3,}", plain):
        return None
    if re.search(r"[=<>^_+*/]", plain):
        return None
    return re.sub(r"[^a-z0-9:]", "", plain.lower())


# ---------------------------------------------------------------------------------------------------------
# Numeric evaluator
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    """A number read from an answer: exact rational when known, always a float approximation.

    ``sig_digits`` is set when a decimal literal took part (the smallest count among them): such a value
    is an approximation unless it is a float rendering (>= 15 significant digits).
    """

    exact: Fraction | None
    approx: float
    sig_digits: int | None = None


_MAX_EXACT_EXPONENT = 256
_MAX_EXACT_BITS = 4096


class _NotNumeric(Exception):
    pass


def _combine_sig(a: Num, b: Num) -> int | None:
    digits = [d for d in (a.sig_digits, b.sig_digits) if d is not None]
    return min(digits) if digits else None


def _num(exact: Fraction | None, approx: float | None = None, sig: int | None = None) -> Num:
    if exact is not None:
        if exact.numerator.bit_length() > _MAX_EXACT_BITS or exact.denominator.bit_length() > _MAX_EXACT_BITS:
            raise _NotNumeric("number too large for the fast path")
        try:
            approx = float(exact)
        except OverflowError as exc:
            raise _NotNumeric from exc
    if approx is None or math.isnan(approx):
        raise _NotNumeric
    return Num(exact, approx, sig)


def _exact_sqrt(value: Fraction) -> Fraction | None:
    if value < 0:
        return None
    num_root, den_root = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if num_root * num_root == value.numerator and den_root * den_root == value.denominator:
        return Fraction(num_root, den_root)
    return None


_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:\\overline\{(\d+)\})?(?:[eE]([+-]?\d+))?")


class _Parser:
    """Recursive-descent evaluator for numeric LaTeX: + - * / ^, \\frac, \\sqrt, \\pi, \\infty, (…)."""

    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def parse(self) -> Num:
        value = self.expr()
        if self.i != len(self.s):
            raise _NotNumeric(f"unparsed tail {self.s[self.i:]!r}")
        return value

    def peek(self, token: str) -> bool:
        return self.s.startswith(token, self.i)

    def take(self, token: str) -> bool:
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def expr(self) -> Num:
        value = self.term()
        while True:
            if self.take("+"):
                value = _add(value, self.term())
            elif self.take("-"):
                value = _add(value, _neg(self.term()))
            else:
                return value

    def term(self) -> Num:
        value = self.unary()
        while True:
            if self.take("\\cdot") or self.take("\\times") or self.take("*"):
                value = _mul(value, self.unary())
            elif self.take("/") or self.take("\\div"):
                value = _div(value, self.unary())
            elif self.i < len(self.s) and (self.s[self.i] in "({" or self.peek("\\frac")
                                          or self.peek("\\sqrt") or self.peek("\\pi")):
                value = _mul(value, self.power())  # implicit product: 2\sqrt{3}, 3\pi, 2(5)
            else:
                return value

    def unary(self) -> Num:
        if self.take("-"):
            return _neg(self.unary())
        if self.take("+"):
            return self.unary()
        return self.power()

    def power(self) -> Num:
        base = self.atom()
        if self.take("^"):
            exponent = self.group() if self.peek("{") else self.digit_or_atom()
            return _pow(base, exponent)
        return base

    def group(self) -> Num:
        if not self.take("{"):
            return self.digit_or_atom()
        value = self.expr()
        if not self.take("}"):
            raise _NotNumeric("unclosed brace")
        return value

    def digit_or_atom(self) -> Num:
        if self.i < len(self.s) and self.s[self.i].isdigit():  # \frac12, 2^3
            self.i += 1
            return _num(Fraction(int(self.s[self.i - 1])))
        return self.atom()

    def atom(self) -> Num:
        if self.take("("):
            value = self.expr()
            if not self.take(")"):
                raise _NotNumeric("unclosed parenthesis")
            return value
        if self.peek("{"):
            return self.group()
        if self.take("\\frac"):
            numerator = self.group()
            return _div(numerator, self.group())
        if self.take("\\sqrt"):
            if self.take("["):
                index = self.expr()
                if not self.take("]"):
                    raise _NotNumeric("unclosed root index")
                radicand = self.group()
                if index.exact is None or index.exact.denominator != 1 or index.exact <= 0:
                    raise _NotNumeric("root index")
                return _pow(radicand, _num(Fraction(1, index.exact.numerator)))
            return _sqrt(self.group())
        if self.take("\\pi"):
            return _num(None, math.pi)
        if self.take("\\infty") or self.take("\\inf"):
            return Num(None, math.inf)
        match = _NUMBER.match(self.s, self.i)
        if match:
            self.i = match.end()
            return _number_literal(match)
        raise _NotNumeric(f"unexpected {self.s[self.i:self.i + 8]!r}")


def _number_literal(match: re.Match[str]) -> Num:
    digits, repeating, exponent = match.group(1), match.group(2), match.group(3)
    int_part, _, frac_part = digits.partition(".")
    value = Fraction(int(int_part or "0")) + (Fraction(int(frac_part), 10 ** len(frac_part)) if frac_part else 0)
    sig: int | None = None
    if repeating:
        value += Fraction(int(repeating), (10 ** len(repeating) - 1) * 10 ** len(frac_part))
    elif frac_part:
        significant = (int_part.lstrip("0") + frac_part).lstrip("0")
        sig = max(len(significant), 1)
    if exponent:
        power = int(exponent)
        if abs(power) > 400:
            raise _NotNumeric("exponent")
        value *= Fraction(10) ** power
    return _num(value, sig=sig)


def _neg(a: Num) -> Num:
    return Num(-a.exact if a.exact is not None else None, -a.approx, a.sig_digits)


def _add(a: Num, b: Num) -> Num:
    if a.exact is not None and b.exact is not None:
        return _num(a.exact + b.exact, sig=_combine_sig(a, b))
    return _num(None, a.approx + b.approx, _combine_sig(a, b))


def _mul(a: Num, b: Num) -> Num:
    if a.exact is not None and b.exact is not None:
        return _num(a.exact * b.exact, sig=_combine_sig(a, b))
    return _num(None, a.approx * b.approx, _combine_sig(a, b))


def _div(a: Num, b: Num) -> Num:
    if b.approx == 0 or (b.exact is not None and b.exact == 0):
        raise _NotNumeric("division by zero")
    if a.exact is not None and b.exact is not None:
        return _num(a.exact / b.exact, sig=_combine_sig(a, b))
    return _num(None, a.approx / b.approx, _combine_sig(a, b))


def _sqrt(a: Num) -> Num:
    if a.approx < 0:
        raise _NotNumeric("square root of a negative number")
    if a.exact is not None:
        root = _exact_sqrt(a.exact)
        if root is not None:
            return _num(root, sig=a.sig_digits)
    return _num(None, math.sqrt(a.approx), a.sig_digits)


def _pow(base: Num, exponent: Num) -> Num:
    sig = _combine_sig(base, exponent)
    if base.exact is not None and exponent.exact is not None:
        e = exponent.exact
        if e.denominator == 1 and abs(e.numerator) <= _MAX_EXACT_EXPONENT:
            if base.exact == 0 and e < 0:
                raise _NotNumeric("zero to a negative power")
            return _num(base.exact ** int(e), sig=sig)
        if e.denominator == 2 and abs(e.numerator) <= _MAX_EXACT_EXPONENT:
            root = _exact_sqrt(base.exact)
            if root is not None:
                return _num(root ** e.numerator, sig=sig)
    if base.approx < 0 and (exponent.exact is None or exponent.exact.denominator != 1):
        raise _NotNumeric("fractional power of a negative number")
    try:
        return _num(None, float(base.approx) ** float(exponent.approx), sig)
    except (OverflowError, ZeroDivisionError) as exc:
        raise _NotNumeric from exc


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:(?:,|\{,\}|,\\!|\\,|\\!| )\d{3})+(?:\.\d+)?$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_BASE_NUMBER = re.compile(r"^([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?$")
_COMPLEX = re.compile(r"^(.*?)([+-])\s*([^+-]*?)\s*\\?i$")
_SCI = re.compile(r"^(.*?)\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")


def parse_number(text: str) -> Num | None:
    """Value of a purely numeric answer (already normalised, no ``%``), or ``None`` if it is not one."""
    text = text.strip()
    if not text or len(text) > 200:
        return None
    if _THOUSANDS.match(text):
        text = re.sub(r",\\!|\{,\}|,|\\,|\\!| ", "", text)
    based = _BASE_NUMBER.match(text)
    if based:
        digits, base = based.group(1), int(based.group(2))
        if not 2 <= base <= 36:
            return None
        try:
            return _num(Fraction(int(digits, base)))  # 52_8 is forty-two
        except ValueError:
            return None
    lowered = text.lower()
    if lowered in _NUMBER_WORDS:
        return _num(Fraction(_NUMBER_WORDS[lowered]))
    mixed = _MIXED.match(text.replace(" ", ""))
    if mixed:
        sign, whole, num, den = mixed.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(whole)) + Fraction(int(num), int(den))
        return _num(-value if sign else value)
    text = text.replace(" ", "")
    sci = _SCI.match(text)
    if sci and sci.group(1):
        mantissa = parse_number(sci.group(1))
        power = int(sci.group(2))
        if mantissa is None or abs(power) > 400:
            return None
        return _mul(mantissa, _num(Fraction(10) ** power))
    try:
        return _Parser(text).parse()
    except (_NotNumeric, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


# ---------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------

_FLOAT_RENDERING_DIGITS = 15


def compare_numbers(pred: Num, gold: Num) -> bool | None:
    """True/False when decidable exactly; None when both are closed forms agreeing numerically."""
    if math.isinf(pred.approx) or math.isinf(gold.approx):
        return pred.approx == gold.approx
    if pred.exact is not None and gold.exact is not None:
        if pred.exact == gold.exact:
            return True
        return _is_float_rendering(pred, gold) or _is_float_rendering(gold, pred)
    if not math.isclose(pred.approx, gold.approx, rel_tol=1e-9, abs_tol=1e-12):
        return False
    if _is_float_rendering(pred, gold) or _is_float_rendering(gold, pred):
        return True
    return None  # agree to 1e-9: only a symbolic check can tell (0.5\sqrt{2} vs \frac{\sqrt2}{2})


def _is_float_rendering(decimal: Num, other: Num) -> bool:
    """``decimal`` is a 15+ significant digit rendering of ``other`` (1/12 vs 0.0833333333333333)."""
    if decimal.sig_digits is None or decimal.sig_digits < _FLOAT_RENDERING_DIGITS:
        return False
    return math.isclose(decimal.approx, other.approx, rel_tol=5e-15, abs_tol=0.0)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def split_structure(text: str) -> tuple[str, str, list[str]]:
    """``(open, close, elements)``: brackets are ``""`` for a bare list, ``{``/``}`` for ``\\{…\\}``."""
    text = text.strip()
    if _THOUSANDS.match(text):
        return "", "", [text]  # 1,000 is one number; "32, 349" (comma then space) stays a list
    if text.startswith("\\{") and text.endswith("\\}"):
        inner = text[2:-2]
        if _balanced_brackets(inner):
            return "{", "}", _split_top_level(inner)
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _balanced_brackets(text[1:-1]):
        return text[0], text[-1], _split_top_level(text[1:-1])
    pm = re.match(r"^(.*?)\\pm(.+)$", text)
    if pm and "," not in text:
        centre = pm.group(1).strip() or "0"
        return "", "", [f"{centre}-({pm.group(2)})", f"{centre}+({pm.group(2)})"]
    return "", "", _split_top_level(text)


def _balanced_brackets(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _percent_candidates(text: str) -> tuple[str, bool]:
    stripped, count = _PERCENT.subn("", text)
    return stripped.strip(), count > 0


def _scalar_values(text: str) -> tuple[Num, bool] | None:
    stripped, has_percent = _percent_candidates(text)
    value = parse_number(stripped)
    return (value, has_percent) if value is not None else None


def _compare_scalars(pred: tuple[Num, bool], gold: tuple[Num, bool]) -> bool | None:
    (p, p_pct), (g, g_pct) = pred, gold
    if p_pct == g_pct:
        return compare_numbers(p, g)
    # Exactly one side carries %: the bare number or the fraction both count (grading_anchors §5.3).
    percent_side, other = (p, g) if p_pct else (g, p)
    first = compare_numbers(other, percent_side)
    if first:
        return True
    second = compare_numbers(other, _div(percent_side, _num(Fraction(100))))
    if second:
        return True
    return None if None in (first, second) else False


_VARIABLE_LETTERS = re.compile(r"(?<!\\)\b[a-zA-Z]|(?<=\d)[a-zA-Z]")
_RELATION = re.compile(r"=|<|>|\\leq|\\geq|\\neq|\\in\b|\\to\b|\\approx|\\sim")


def _has_free_letters(text: str) -> bool:
    without_commands = re.sub(r"\\[a-zA-Z]+", " ", text)
    return bool(re.search(r"[a-df-hj-zA-Z]", without_commands))  # e and i may be constants


def compare_answers(pred: str, gold: str) -> bool | None:
    """Fast decision on two bare answers: True/False, or None to defer to a symbolic grader."""
    if comparison_key(pred) == comparison_key(gold):
        return True
    gold_choice = choice_letter(gold)
    if gold_choice and not gold_choice[1]:
        pred_choice = choice_letter(pred)
        return pred_choice is not None and pred_choice[0] == gold_choice[0]
    pred_choice = choice_letter(pred)
    if pred_choice and pred_choice[1]:
        pred = pred_choice[1]  # "(C) 12" states the value 12
    p_norm, g_norm = normalize_answer(pred), normalize_answer(gold)
    if not p_norm:
        return False
    if comparison_key(p_norm) == comparison_key(g_norm):
        return True
    p_text, g_text = text_key(p_norm), text_key(g_norm)
    if p_text is not None and g_text is not None:
        return p_text == g_text
    p_norm, g_norm = _unwrap_numeric_assignment(p_norm), _unwrap_numeric_assignment(g_norm)
    p_complex, g_complex = complex_parts(p_norm), complex_parts(g_norm)
    if p_complex is not None and g_complex is not None:
        real, imag = compare_numbers(p_complex[0], g_complex[0]), compare_numbers(p_complex[1], g_complex[1])
        return False if False in (real, imag) else (True if real and imag else None)
    kinds = {_kind(p_norm), _kind(g_norm)}
    if len(kinds) == 2 and "other" not in kinds and kinds != {"tuple", "matrix"}:
        return False  # a number, a matrix, a union of intervals and a word never equal each other
    return _compare_structures(p_norm, g_norm)


def _unwrap_numeric_assignment(text: str) -> str:
    """``x = 5`` states the number 5 (an assignment of a number to one named unknown)."""
    match = re.match(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*([^=<>]+)$", text)
    if match and parse_number(match.group(1)) is not None:
        return match.group(1).strip()
    return text


def complex_parts(text: str) -> tuple[Num, Num] | None:
    """``(real, imaginary)`` of ``a + bi`` / ``bi`` / ``a - i`` with numeric parts, else None."""
    compact = text.replace(" ", "")
    if not compact.endswith("i") or compact.endswith(r"\pi"):
        return None
    match = _COMPLEX.match(compact)
    if match:
        real_text, sign, coef_text = match.groups()
        real = parse_number(real_text) if real_text else _num(Fraction(0))
    else:
        real, sign, coef_text = _num(Fraction(0)), "+", compact[:-1]
    coef = parse_number(coef_text) if coef_text not in ("", "+", "-") else _num(Fraction(1))
    if real is None or coef is None:
        return None
    return real, (_neg(coef) if sign == "-" else coef)


def _kind(text: str) -> str:
    """Coarse shape of an answer for cheap rejections: number, complex, matrix, union, word, equation,
    tuple (numeric list) or other."""
    if "\\begin{" in text and "matrix" in text:
        return "matrix"
    if "\\cup" in text and not _RELATION.search(text):
        return "union"
    stripped, _ = _percent_candidates(text)
    if parse_number(stripped) is not None:
        return "number"
    parts = complex_parts(text)
    if parts is not None and parts[1].approx != 0:
        return "complex"
    if text_key(text) is not None:
        return "word"
    if "=" in text and _has_free_letters(text.rsplit("=", 1)[1]) and not re.search(r"[<>]|\\[lg]eq", text):
        return "equation"
    _, _, items = split_structure(text)
    if len(items) > 1 and all(_scalar_values(item) is not None for item in items):
        return "tuple"
    return "other"


def _compare_structures(pred: str, gold: str) -> bool | None:
    p_open, p_close, p_items = split_structure(pred)
    g_open, g_close, g_items = split_structure(gold)
    p_values = [_scalar_values(item) for item in p_items]
    g_values = [_scalar_values(item) for item in g_items]
    p_numeric, g_numeric = all(v is not None for v in p_values), all(v is not None for v in g_values)
    p_scalar = len(p_items) == 1 and not p_open
    g_scalar = len(g_items) == 1 and not g_open
    if p_scalar and g_scalar and p_numeric and g_numeric:
        return _compare_scalars(p_values[0], g_values[0])
    # A number never equals an expression in variables or a word (unless it states a relation).
    if g_scalar and g_numeric and not _RELATION.search(pred):
        if _has_free_letters(pred) or (not p_scalar and len(p_items) > 1):
            return False
    if p_scalar and p_numeric and not _RELATION.search(gold):
        if _has_free_letters(gold) or (not g_scalar and len(g_items) > 1):
            return False
    if not (p_numeric and g_numeric) or p_scalar != g_scalar:
        return None
    if len(p_items) != len(g_items):
        return False
    unordered = {p_open, g_open} <= {"", "{"}
    if unordered:
        return _match_unordered(p_values, g_values)
    if (p_open, p_close) != (g_open, g_close):
        if p_open and g_open:
            return False  # (1,2) vs [1,2]: bracket type matters
        return None
    results = [_compare_scalars(p, g) for p, g in zip(p_values, g_values, strict=False)]
    if False in results:
        return False
    return True if all(results) else None


def _match_unordered(pred: list, gold: list) -> bool | None:
    remaining = list(gold)
    undecided = False
    for p in pred:
        verdicts = [_compare_scalars(p, g) for g in remaining]
        if True in verdicts:
            remaining.pop(verdicts.index(True))
        elif None in verdicts:
            undecided = True
        else:
            return False
    return None if undecided else True
