"""Fast, exact answer comparison without SymPy: string normalisation and answer-structure matching.

The fast path decides most real answers (integers, decimals, fractions, radicals, π, percent, tuples and
intervals of those, text and multiple-choice answers) in microseconds. It returns ``None`` ("undecided")
whenever it is not sure, and the caller then asks math-verify. Conventions (labelled in
``benchmarks/data/grader_cases.jsonl``): value over form, approximations are not exact values (except 15+ significant
digit float renderings), percent only when a side carries ``%``, bracket type matters, unordered lists.

This module holds the LaTeX/string side (wrappers, units, choice letters, word answers) and
:func:`compare_answers`; the numeric evaluator lives in :mod:`deepscaler.rewards.numeric` and the splitting of
tuples, sets and intervals in :mod:`deepscaler.rewards.structures` (their public names are re-exported here).
"""

from __future__ import annotations

import re

from deepscaler.rewards.numeric import (
    Num,
    compare_numbers,
    compare_scalars,
    complex_parts,
    parse_number,
    scalar_value,
    strip_percent,
)
from deepscaler.rewards.structures import evaluate_set_operations, split_structure

__all__ = [
    "Num",
    "choice_letter",
    "compare_answers",
    "compare_numbers",
    "comparison_key",
    "complex_parts",
    "evaluate_set_operations",
    "normalize_answer",
    "parse_number",
    "split_structure",
    "strip_wrappers",
    "text_key",
]


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
    r"\s*\\(?:text|textrm|textnormal|mbox|mathrm|operatorname)\s*\{(?!\s*[aApP]\.?\s*[mM]\.?\s*\})\s*(?:[a-zA-Z][a-zA-Z ./]*)(?:\^?\{?[23]\}?)?\s*\}"
    r"(?:\s*\^\{?[23]\}?)?\s*$"
)
_UNIT_SUFFIX_WORDS = re.compile(rf"(?<=[\d}}])\s+(?:(?:{_UNIT_WORDS})\b\.?\s*)+(?:\^\{{?[23]\}}?)?\s*$")
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
_WRAPPERS = re.compile(r"^\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox|boxed)\s*\{(.*)\}$", re.S)


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
    return evaluate_set_operations(text)


def comparison_key(text: str) -> str:
    """A whitespace-free, wrapper-free key: two answers with the same key are equal."""
    key = normalize_answer(text)
    key = re.sub(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", key)
    return key.replace(" ", "").replace("{,}", ",")


# ---------------------------------------------------------------------------------------------------------
# Multiple choice and text answers
# ---------------------------------------------------------------------------------------------------------

_CHOICE = re.compile(r"^\(?([A-E])\)?(?:[\s:.)]+(.*))?$", re.S)


def choice_letter(text: str) -> tuple[str, str] | None:
    """``(letter, rest)`` for ``B``, ``(B)``, ``\\text{(B)}``, ``\\textbf{(C) }12``, ``\\mathrm{(D)}``."""
    plain = re.sub(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", text).strip()
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
    plain = re.sub(r"\\(?:text|textbf|textrm|textnormal|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", text).strip()
    time_of_day = _TIME.match(plain)
    if time_of_day:
        return time_of_day.group(1) + re.sub(r"[^apm]", "", (time_of_day.group(2) or "").lower())
    if "\\" in plain or not re.search(r"[A-Za-z]{3,}", plain):
        return None
    if re.search(r"[=<>^_+*/]", plain):
        return None
    return re.sub(r"[^a-z0-9:]", "", plain.lower())


# ---------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------

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

def _kind(text: str) -> str:
    """Coarse shape of an answer for cheap rejections: number, complex, matrix, union, word, equation,
    tuple (numeric list) or other."""
    if "\\begin{" in text and "matrix" in text:
        return "matrix"
    if "\\cup" in text and not _RELATION.search(text):
        return "union"
    stripped, _ = strip_percent(text)
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
    if len(items) > 1 and all(scalar_value(item) is not None for item in items):
        return "tuple"
    return "other"


def _compare_structures(pred: str, gold: str) -> bool | None:
    p_open, p_close, p_items = split_structure(pred)
    g_open, g_close, g_items = split_structure(gold)
    p_values = [scalar_value(item) for item in p_items]
    g_values = [scalar_value(item) for item in g_items]
    p_numeric, g_numeric = all(v is not None for v in p_values), all(v is not None for v in g_values)
    p_scalar = len(p_items) == 1 and not p_open
    g_scalar = len(g_items) == 1 and not g_open
    if p_scalar and g_scalar and p_numeric and g_numeric:
        return compare_scalars(p_values[0], g_values[0])
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
    results = [compare_scalars(p, g) for p, g in zip(p_values, g_values, strict=False)]
    if False in results:
        return False
    return True if all(results) else None


def _match_unordered(pred: list, gold: list) -> bool | None:
    remaining = list(gold)
    undecided = False
    for p in pred:
        verdicts = [compare_scalars(p, g) for g in remaining]
        if True in verdicts:
            remaining.pop(verdicts.index(True))
        elif None in verdicts:
            undecided = True
        else:
            return False
    return None if undecided else True
