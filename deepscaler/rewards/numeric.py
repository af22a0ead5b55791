"""Exact numeric reading of answer strings: the fast path's evaluator and its number comparisons.

:func:`parse_number` turns an already normalised answer (see :mod:`deepscaler.rewards.normalize`) into a
:class:`Num` — an exact rational when the value is one (integers, decimals, fractions, repeating decimals,
perfect-square radicals, number words, ``52_8`` base notation, scientific notation) and always a float
approximation (radicals, ``\\pi``). :func:`compare_numbers` and :func:`compare_scalars` decide equality
with the conventions of :mod:`deepscaler.rewards.normalize`: approximations are not exact values except 15+
significant digit float renderings, and percent counts only when a side carries ``%``. Anything not
surely numeric raises internally and comes back as ``None`` ("undecided").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

_PERCENT = re.compile(r"\\?%|\\text\{\s*percent\s*\}|\s+percent$")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}


# ---------------------------------------------------------------------------------------------------------
# Evaluator
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


THOUSANDS_NUMBER = re.compile(r"^[+-]?\d{1,3}(?:(?:,|\{,\}|,\\!|\\,|\\!| )\d{3})+(?:\.\d+)?$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_BASE_NUMBER = re.compile(r"^([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?$")
_COMPLEX = re.compile(r"^(.*?)([+-])\s*([^+-]*?)\s*\\?i$")
_SCI = re.compile(r"^(.*?)\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")


def parse_number(text: str) -> Num | None:
    """Value of a purely numeric answer (already normalised, no ``%``), or ``None`` if it is not one."""
    text = text.strip()
    if not text or len(text) > 200:
        return None
    if THOUSANDS_NUMBER.match(text):
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


def strip_percent(text: str) -> tuple[str, bool]:
    """``(text without its percent sign or word, whether it had one)``."""
    stripped, count = _PERCENT.subn("", text)
    return stripped.strip(), count > 0


def scalar_value(text: str) -> tuple[Num, bool] | None:
    """``(value, carries percent)`` of a single numeric answer, or None when it is not a number."""
    stripped, has_percent = strip_percent(text)
    value = parse_number(stripped)
    return (value, has_percent) if value is not None else None


def compare_scalars(pred: tuple[Num, bool], gold: tuple[Num, bool]) -> bool | None:
    """Compare two :func:`scalar_value` results: True/False when decidable, None to defer."""
    (p, p_pct), (g, g_pct) = pred, gold
    if p_pct == g_pct:
        return compare_numbers(p, g)
    # Exactly one side carries %: the bare number or the fraction both count (the percent convention).
    percent_side, other = (p, g) if p_pct else (g, p)
    first = compare_numbers(other, percent_side)
    if first:
        return True
    second = compare_numbers(other, _div(percent_side, _num(Fraction(100))))
    if second:
        return True
    return None if None in (first, second) else False


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
