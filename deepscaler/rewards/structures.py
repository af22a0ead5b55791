"""Answer structures: splitting tuples, sets, intervals and bare lists into their elements, and evaluating
explicit set operations (``\\cup``, ``\\cap``, ``\\setminus``) over finite sets and intervals with numeric ends.
Used by :func:`deepscaler.rewards.normalize.compare_answers`, which compares the elements pairwise."""

from __future__ import annotations

import re

from deepscaler.rewards.numeric import THOUSANDS_NUMBER, scalar_value


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
    if THOUSANDS_NUMBER.match(text):
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


_SET_OPERATOR = re.compile(r"\\(cup|cap|setminus|backslash)(?![a-zA-Z])")


def evaluate_set_operations(text: str) -> str:
    """``\\{1,2\\} \\cup \\{3\\}`` → ``\\{1, 2, 3\\}``: a left-to-right chain of ``\\cup``, ``\\cap`` and
    ``\\setminus`` over explicit finite sets of numbers, or ``\\cap`` of two intervals with numeric ends, is
    replaced by its result. Anything else (unions of intervals, symbolic sets) is returned unchanged."""
    if not _SET_OPERATOR.search(text) or len(text) > 500:
        return text
    pieces = _SET_OPERATOR.split(text)
    operands, operators = [p.strip() for p in pieces[0::2]], pieces[1::2]
    structures = [split_structure(p) for p in operands]
    if all(opening == "{" for opening, _, _ in structures):
        return _finite_set_chain(structures, operators) or text
    if operators == ["cap"] and all(o in "([" and c in ")]" and len(items) == 2 for o, c, items in structures):
        return _interval_intersection(structures) or text
    return text


def _element_key(item: str) -> tuple | None:
    value = scalar_value(item)
    if value is None or value[1]:
        return None
    num = value[0]
    return ("exact", num.exact) if num.exact is not None else ("approx", round(num.approx, 12))


def _finite_set_chain(structures: list[tuple[str, str, list[str]]], operators: list[str]) -> str | None:
    sets: list[dict[tuple, str]] = []
    for _, _, items in structures:
        members: dict[tuple, str] = {}
        for item in items:
            if not item:
                continue
            key = _element_key(item)
            if key is None:
                return None
            members.setdefault(key, item)
        sets.append(members)
    result = dict(sets[0])
    for operator, members in zip(operators, sets[1:], strict=True):
        if operator == "cup":
            result.update({k: v for k, v in members.items() if k not in result})
        elif operator == "cap":
            result = {k: v for k, v in result.items() if k in members}
        else:
            result = {k: v for k, v in result.items() if k not in members}
    if not result:
        return "\\emptyset"
    return "\\{" + ", ".join(result.values()) + "\\}"


def _interval_intersection(structures: list[tuple[str, str, list[str]]]) -> str | None:
    ends = []
    for opening, closing, (low, high) in structures:
        low_value, high_value = _endpoint(low), _endpoint(high)
        if low_value is None or high_value is None:
            return None
        ends.append(((low_value, opening == "(", low), (high_value, closing == ")", high)))
    # the larger lower end (open wins a tie), the smaller upper end (open wins a tie)
    low = max((e[0] for e in ends), key=lambda end: (end[0], end[1]))
    high = min((e[1] for e in ends), key=lambda end: (end[0], -end[1]))
    if low[0] > high[0] or (low[0] == high[0] and (low[1] or high[1])):
        return "\\emptyset"
    return f"{'(' if low[1] else '['}{low[2]}, {high[2]}{')' if high[1] else ']'}"


def _endpoint(item: str) -> float | None:
    compact = item.replace(" ", "")
    if compact in ("\\infty", "+\\infty"):
        return float("inf")
    if compact == "-\\infty":
        return float("-inf")
    value = scalar_value(item)
    return None if value is None or value[1] else value[0].approx
