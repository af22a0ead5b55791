"""DeepScaleR's original grading rules, re-implemented for comparison and as a selectable grader.

Behaviour follows DeepScaleR's reward code (agentica-project/rllm at DeepScaleR's commit 95ef74f): an answer
is correct when the Hendrycks MATH normalisation ("mathd") makes the strings equal, **or** the PRM800K-style "sympy" check
accepts it. Quirks are kept on purpose (unreduced fractions rejected, integers compared strictly, braces
dropped, no wall-clock bound of its own). Select it with ``RewardConfig(grader="deepscaler")``; the caller
still bounds its time.
"""

from __future__ import annotations

import re

from deepscaler.rewards.extraction import THINK_CLOSE, THINK_OPEN

# ---------------------------------------------------------------------------------------------------------
# Extraction (DeepScaleR's own: last \boxed, \fbox located but rejected, no joining of boxes)
# ---------------------------------------------------------------------------------------------------------


def deepscaler_extract(solution: str) -> str | None:
    """Last ``\\boxed{…}`` of a solution the way DeepScaleR reads it, or None (its format error)."""
    start = solution.rfind("\\boxed")
    if start < 0:
        start = solution.rfind("\\fbox")
        if start < 0:
            return None
    depth, end = 0, None
    for i in range(start, len(solution)):
        if solution[i] == "{":
            depth += 1
        elif solution[i] == "}":
            depth -= 1
            if depth == 0:
                end = i
                break
    if end is None:
        return None
    span = solution[start: end + 1]
    prefix = "\\boxed{"
    if not span.startswith(prefix) or not span.endswith("}"):
        return None
    return span[len(prefix): -1]


def deepscaler_solution(response: str) -> str | None:
    """Text DeepScaleR grades: after the first ``</think>``, before a second; None without both tags."""
    if THINK_OPEN not in response or THINK_CLOSE not in response:
        return None
    return response.split(THINK_CLOSE)[1]


# ---------------------------------------------------------------------------------------------------------
# "mathd": Hendrycks MATH normalisation + string equality
# ---------------------------------------------------------------------------------------------------------


def _braced_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``."""
    pieces = text.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if piece.startswith("{"):
            out += piece
            continue
        if len(piece) < 2:
            return text
        first, second = piece[0], piece[1]
        if second != "{":
            out += "{" + first + "}{" + second + "}" + piece[2:]
        else:
            out += "{" + first + "}" + second + piece[2:]
    return out


def _slash_to_frac(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def _drop_right_units(text: str) -> str:
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("several \\text{ units")
    return parts[0]


def _braced_sqrt(text: str) -> str:
    if "\\sqrt" not in text:
        return text
    pieces = text.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        if piece and piece[0] != "{":
            out += "\\sqrt{" + piece[0] + "}" + piece[1:]
        else:
            out += "\\sqrt" + piece
    return out


def _hendrycks_strip(text: str) -> str:
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = _drop_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _braced_sqrt(text)
    text = text.replace(" ", "")
    text = _braced_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


def mathd_normalize(answer: str) -> str:
    """Hendrycks MATH answer normalisation (any exception leaves the text-unwrapped answer as is)."""
    answer = answer.strip()
    match = re.search(r"^\\text\{(?P<text>.+?)\}$", answer)
    if match is not None:
        answer = match.group("text").strip()
    try:
        return _hendrycks_strip(answer)
    except Exception:
        return answer


def grade_mathd(given: str, gold: str) -> bool:
    return mathd_normalize(given) == mathd_normalize(gold)


# ---------------------------------------------------------------------------------------------------------
# "sympy": PRM800K-style normalisation, element splitting and guarded simplify(a - b) == 0
# ---------------------------------------------------------------------------------------------------------

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
          "year", "foot", "feet", "inch", "yard")
_BRACKETS = "()[]"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _near_int(value: float) -> bool:
    try:
        return abs(value - int(round(value))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _drop_thousands_commas(text: str) -> str:
    pattern = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
    while True:
        updated = pattern.sub(r"\1\3\4", text)
        if updated == text:
            return updated
        text = updated


def _str_is_int(text: str) -> bool:
    try:
        return _near_int(float(_drop_thousands_commas(text)))
    except ValueError:
        return False


def _is_frac(text: str) -> bool:
    return bool(re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", text))


def _latex_to_text(expr: str) -> str:
    from pylatexenc import latex2text  # heavy: loaded on first use (rewards import light)

    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    expr = latex2text.LatexNodes2Text().latex_to_text(expr)
    for symbol, name in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        expr = expr.replace(symbol, name)
    return expr.strip()


def sympy_normalize(expr: str | None) -> str | None:
    """PRM800K ``_normalize``: units, $ and % removed, LaTeX to text, spaces/braces dropped, lower case."""
    if expr is None:
        return None
    match = re.search(r"^\\text\{(?P<text>.+?)\}$", expr)
    if match is not None:
        expr = match.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNITS:
        expr = re.sub(f"{unit}(es)?(s)? *(\\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    if _is_float(expr) and _near_int(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", r"\1+\2", expr)  # mixed number 7 3/4 -> 7+3/4
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _allow_eval(expr: str) -> bool:
    """PRM800K's guard against text and expensive expressions (no wall-clock bound exists upstream)."""
    letters = {ch for ch in expr.replace("sqrt", "").replace("frac", "") if ch.isalpha()}
    if len(letters) > 2:
        return False
    if "^{" in expr or "^(" in expr:
        return False
    return not (re.search(r"\^[0-9]+\^", expr) or re.search(r"\^[0-9][0-9]+", expr))


def _sympy_equal(gold: str, given: str) -> bool:
    import sympy  # heavy: loaded on first use (rewards import light)
    from sympy.parsing import sympy_parser

    expr = f"({gold})-({given})"
    if not _allow_eval(expr):
        return False
    try:
        transformations = sympy_parser.standard_transformations + (
            sympy_parser.implicit_multiplication_application,
        )
        diff = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations)
        return sympy.simplify(diff) == 0
    except Exception:
        return False


def _split_elements(expr: str) -> list[str]:
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS
            and all(ch not in expr[1:-1] for ch in _BRACKETS)):
        return [element.strip() for element in expr[1:-1].split(",")]
    return [expr]


def grade_sympy(given: str, gold: str) -> bool:
    gold_norm, given_norm = sympy_normalize(gold), sympy_normalize(given)
    if gold_norm is None or given_norm is None:
        return False
    if gold_norm == given_norm:
        return True
    if not given_norm:
        return False
    gold_elements, given_elements = _split_elements(gold_norm), _split_elements(given_norm)
    if len(gold_elements) > 1 and (gold_norm[0] != given_norm[0] or gold_norm[-1] != given_norm[-1]):
        return False
    if len(gold_elements) != len(given_elements):
        return False
    for gold_element, given_element in zip(gold_elements, given_elements, strict=False):
        if _is_frac(gold_element) and _is_frac(given_element):
            ok = gold_element == given_element  # unreduced fractions are not accepted
        elif _str_is_int(gold_element) != _str_is_int(given_element):
            ok = False  # an integer gold needs an integer answer, no simplification
        else:
            ok = _sympy_equal(gold_element, given_element)
        if not ok:
            return False
    return True


def deepscaler_equal(given: str, gold: str) -> bool:
    """DeepScaleR's decision for one gold: mathd OR sympy."""
    return grade_mathd(given, gold) or grade_sympy(given, gold)


def deepscaler_gold_list(gold: object) -> list[str]:
    """Gold answers as DeepScaleR reads them: ``str()`` of each item, boxed golds unboxed."""
    items = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    out = []
    for item in items:
        text = str(item)
        if "\\boxed" in text:
            boxed = deepscaler_extract(text)
            if boxed is None:
                continue
            text = boxed
        out.append(text)
    return out


def deepscaler_is_correct(response: str, gold: object, *, require_think: bool = True) -> bool | None:
    """DeepScaleR's reward decision: True/False, or None for its format error (no tags or no box)."""
    solution = deepscaler_solution(response) if require_think else response
    if solution is None:
        return None
    answer = deepscaler_extract(solution)
    if answer is None:
        return None
    return any(deepscaler_equal(answer, truth) for truth in deepscaler_gold_list(gold))
