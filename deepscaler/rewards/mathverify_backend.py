"""math-verify behind guards: the symbolic step of the default grader, and math-verify alone (baseline).

math-verify is imported lazily (it pulls SymPy and ANTLR, ~0.4 s), its own ``signal.alarm`` timeouts are
switched off (they fail outside the main thread) and the caller bounds the time instead
(:mod:`deepscaler.rewards.timeouts`, :mod:`deepscaler.rewards.pool`).

Guards against its known false positives (each has a case in ``benchmarks/data/grader_cases.jsonl``):

* only the boxed answer is parsed (no anchorless search, no last-number fallback, no number pulled out
  of an unparsable expression);
* units are stripped by our normaliser, not by math-verify's, which eats single-letter variables (4t → 4);
* only the first parse of each side is compared, so a subset of a multi-answer gold does not pass;
* floats are compared at 12 decimals, not 6 (0.5000004 ≠ 1/2);
* an equation only unwraps to its right side when its left side names a quantity (``x=3``, ``|AB|=1``),
  not when it relates unknowns (``7 = 11a+c`` ≠ ``11a+c``).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

_MAX_SYMBOLIC_CHARS = 400
_COSTLY = [
    re.compile(r"\^\s*\{[^{}]*\^"),  # power towers 2^{3^{4}}
    re.compile(r"\^\s*\{?\s*\d{4,}"),  # huge integer exponents
    re.compile(r"\d{3,}\s*!|\\binom\s*\{\s*\d{4,}"),  # huge factorials / binomials
]


def too_costly(answer: str) -> bool:
    """Answers we never hand to SymPy: long, towers of powers, huge exponents or factorials."""
    return len(answer) > _MAX_SYMBOLIC_CHARS or answer.count("^") > 8 or any(p.search(answer) for p in _COSTLY)


@functools.lru_cache(maxsize=1)
def _mv() -> Any:
    import math_verify  # heavy: loaded on first use (rewards import light)
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, NormalizationConfig

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # unparsable answers are simply unequal
    guarded = [
        LatexExtractionConfig(
            try_extract_without_anchor=False,
            boxed_match_priority=0,
            normalization_config=NormalizationConfig(
                basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
            ),
        )
    ]
    readme_gold = [LatexExtractionConfig(), ExprExtractionConfig()]
    readme_pred = [
        LatexExtractionConfig(
            boxed_match_priority=0,
            normalization_config=NormalizationConfig(
                basic_latex=True, units=True, malformed_operators=False, nits=False, boxed="all", equations=False
            ),
        ),
        ExprExtractionConfig(),
    ]
    return math_verify, guarded, readme_gold, readme_pred


def warm_up() -> None:
    """Import math-verify and run one comparison (so the first real call is not slow)."""
    symbolic_equal("x+1", "1+x")


@functools.lru_cache(maxsize=65536)
def _parse_guarded(answer: str) -> Any:
    math_verify, guarded, _, _ = _mv()
    parsed = math_verify.parse("\\boxed{" + answer + "}", guarded, fallback_mode="no_fallback",
                               parsing_timeout=None)
    return parsed[0] if parsed else None


def _imaginary_unit(pred: Any, gold: Any) -> tuple[Any, Any]:
    """Read a lone symbol ``i`` as the imaginary unit when nothing else is symbolic (1/i, e^{iπ})."""
    import sympy  # heavy: loaded on first use (rewards import light)

    symbols = set()
    for expr in (pred, gold):
        symbols |= getattr(expr, "free_symbols", set())
    if len(symbols) == 1 and str(next(iter(symbols))) == "i":
        symbol_i = next(iter(symbols))
        pred, gold = (e.subs(symbol_i, sympy.I) if hasattr(e, "subs") else e for e in (pred, gold))
    return pred, gold


def _names_a_quantity(lhs: Any) -> bool:
    """``x``, ``(p, q)``, ``|AB|``, ``NO/BO``: no numbers and no sums, so ``lhs = value`` is an assignment."""
    import sympy  # heavy: loaded on first use (rewards import light)

    if isinstance(lhs, sympy.Tuple) or isinstance(lhs, tuple):
        return all(_names_a_quantity(item) for item in lhs)
    if not isinstance(lhs, sympy.Basic) or not lhs.free_symbols:
        return False
    return not lhs.atoms(sympy.Number) - {sympy.Integer(-1)} and not lhs.atoms(sympy.Add)


def _unwrap_assignment(expr: Any) -> Any:
    import sympy  # heavy: loaded on first use (rewards import light)

    if isinstance(expr, sympy.Eq) and _names_a_quantity(expr.lhs):
        return expr.rhs
    return expr


def symbolic_equal(pred: str, gold: str) -> bool:
    """math-verify comparison of two bare answers with the guards listed in the module docstring."""
    if too_costly(pred) or too_costly(gold):
        return False
    import sympy  # heavy: loaded on first use (rewards import light)

    math_verify = _mv()[0]
    gold_expr, pred_expr = _parse_guarded(gold), _parse_guarded(pred)
    if gold_expr is None or pred_expr is None:
        return False
    if isinstance(gold_expr, sympy.Eq) != isinstance(pred_expr, sympy.Eq):
        gold_expr, pred_expr = _unwrap_assignment(gold_expr), _unwrap_assignment(pred_expr)
        if isinstance(gold_expr, sympy.Eq) != isinstance(pred_expr, sympy.Eq):
            return False  # an equation among unknowns is not one of its sides
    pred_expr, gold_expr = _imaginary_unit(pred_expr, gold_expr)
    return bool(
        math_verify.verify(gold_expr, pred_expr, float_rounding=12, allow_set_relation_comp=True,
                           timeout_seconds=None)
    )


def math_verify_alone(pred_text: str, gold: str) -> bool:
    """math-verify as its README recommends for rewards: gold boxed, prediction parsed by math-verify.

    ``pred_text`` is a bare answer (wrapped in ``\\boxed{}``, as math-verify's README does for a gold answer)
    or a solution text, from which math-verify extracts the answer itself.
    """
    math_verify, _, readme_gold, readme_pred = _mv()
    if "\\boxed" not in pred_text and "\\fbox" not in pred_text and len(pred_text) < 200:
        pred_text = "\\boxed{" + pred_text + "}"
    gold_parsed = math_verify.parse("\\boxed{" + gold + "}", readme_gold, parsing_timeout=None)
    pred_parsed = math_verify.parse(pred_text, readme_pred, parsing_timeout=None)
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def clear_caches() -> None:
    """Forget parsed answers (benchmarks time cold parsing)."""
    _parse_guarded.cache_clear()
