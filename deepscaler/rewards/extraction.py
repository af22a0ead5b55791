"""Finding the graded part of a response and its final boxed answer (pure string functions)."""

from __future__ import annotations

import re
from collections.abc import Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Text allowed between two boxes for them to state one answer together ("x = \boxed{2} and x = \boxed{-3}").
_CONNECTOR_TOKENS = re.compile(
    r"\\text\{\s*(?:and|or)?\s*\}|\\quad|\\qquad|\\,|\\;|\\ |\$|\\\(|\\\)|\\\[|\\\]|"
    r"\band\b|\bor\b|[,;\s]|[a-zA-Z](?:_\{?\w+\}?)?\s*=|\\[a-zA-Z]+\s*="
)
_MAX_CONNECTOR_CHARS = 40


def split_think(
    response: str, prompt_opens_think: bool = False, *, strict: bool = False
) -> tuple[str, str] | None:
    """Split a response into ``(thinking, solution)`` at the first ``</think>``.

    ``solution`` is the text after the first ``</think>`` and before a second one, if any (DeepScaleR).
    Returns ``None`` when there is no ``</think>``, or when ``strict`` and ``<think>`` is absent both from
    the text before ``</think>`` and from the prompt (``prompt_opens_think=False``).
    """
    close_at = response.find(THINK_CLOSE)
    if close_at < 0:
        return None
    head = response[:close_at]
    open_at = head.find(THINK_OPEN)
    if strict and open_at < 0 and not prompt_opens_think:
        return None
    thinking = head[open_at + len(THINK_OPEN):] if open_at >= 0 else head
    rest = response[close_at + len(THINK_CLOSE):]
    second_close = rest.find(THINK_CLOSE)
    solution = rest if second_close < 0 else rest[:second_close]
    return thinking, solution


_UNBRACED_BOX = re.compile(r"\\boxed(?:[ \t]+|(?=[0-9+\-.]))(?=[^\s{])([^$\n]{1,200})")
_UNBRACED_END = re.compile(r"\\\]|\\\)|\\\\")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` → position after its matching ``}``, in one pass (escaped ``\\{``/``\\}`` are
    content, not structure). Linear in the text, so 10,000 nested boxes cost no more than their length."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, length = 0, len(text)
    while i < length:
        ch = text[i]
        if ch == "\\" and i + 1 < length and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i + 1
        i += 1
    return pairs


def _boxed_spans(text: str, commands: Sequence[str] = _BOX_COMMANDS) -> list[tuple[int, int, str]]:
    """All brace-matched ``\\boxed{…}``/``\\fbox{…}`` as ``(start, end, content)``, in text order, plus
    ``\\boxed 7`` without braces (TeX takes the next token; models mean the rest of the line up to ``$``, as
    the MATH reference grader reads it).

    Unclosed boxes (a truncated response) are skipped.
    """
    spans: list[tuple[int, int, str]] = []
    pattern = "|".join(re.escape(c) for c in commands)
    pairs: dict[int, int] | None = None
    for match in re.finditer(rf"(?:{pattern})\s*\{{", text):
        if pairs is None:
            pairs = _matching_braces(text)
        close = pairs.get(match.end() - 1)
        if close is not None:
            spans.append((match.start(), close, text[match.end(): close - 1]))
    if "\\boxed" in text:
        for match in _UNBRACED_BOX.finditer(text):
            content = _UNBRACED_END.split(match.group(1), maxsplit=1)[0].strip().rstrip(".,;").strip()
            if content:
                spans.append((match.start(), match.end(), content))
        spans.sort()
    # Drop boxes nested inside another box (\boxed{\boxed{5}}): the outer one is the answer.
    outer: list[tuple[int, int, str]] = []
    for span in spans:
        if outer and span[0] < outer[-1][1]:
            continue
        outer.append(span)
    return outer


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with nested braces matched, stripped.

    Returns ``None`` when the text has no complete box; ``""`` for an empty box.
    """
    spans = _boxed_spans(text)
    return spans[-1][2].strip() if spans else None


def _is_connector(between: str) -> bool:
    return len(between) <= _MAX_CONNECTOR_CHARS and not _CONNECTOR_TOKENS.sub("", between).strip()


def extract_final_answer(text: str) -> str | None:
    """The final answer of a solution text: the last box, joined with boxes right before it.

    Boxes separated only by a short connector ("and", ",", "x =") state one answer together, so
    ``x = \\boxed{2} and x = \\boxed{-3}`` gives ``"2, -3"`` (equal contents are kept once). Hedging
    ``\\boxed{2} or \\boxed{3}`` therefore gives a two-element list, which does not equal a single gold.
    """
    spans = _boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _is_connector(text[span[1]: group[0][0]]):
            break
        group.insert(0, span)
    contents: list[str] = []
    for _, _, content in group:
        content = content.strip()
        if content not in contents:
            contents.append(content)
    return ", ".join(contents)


def gold_answers(gold: object) -> list[str]:
    """Gold answer(s) as a list of strings: any-of semantics for a list.

    Numbers become strings (an AMC float ``142.0`` becomes ``"142"``), boxed golds are unboxed (dropped when
    the box cannot be read), ``$…$`` wrappers and surrounding whitespace are removed, empty golds dropped.
    """
    items = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    out: list[str] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, bool):
            text = str(item)
        elif isinstance(item, float):
            text = str(int(item)) if item.is_integer() else repr(item)
        else:
            text = str(item)
        if "\\boxed" in text or "\\fbox" in text:
            boxed = extract_boxed(text)
            if boxed is None:
                continue
            text = boxed
        text = text.strip()
        while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
            text = text[1:-1].strip()
        if text:
            out.append(text)
    return out
