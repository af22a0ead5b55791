"""One typed record per math problem, and the checks that turn raw rows into it.

Every source (DeepScaleR JSON lists, JSONL, Parquet, ``datasets`` tables) yields rows as dicts; this module
finds the problem and answer columns, validates each row and normalises the gold answers to a list of
strings (alternatives, any of which counts as correct). A malformed row raises a ``ValueError`` naming the
file, the row and the field, and saying how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepscaler.rewards import extract_boxed

# The instruction DeepScaleR appends to every problem (after one space); also stripped from chat-format rows.
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

PROBLEM_KEYS = ("problem", "question", "prompt", "query", "Problem", "Question")
ANSWER_KEYS = ("answer", "final_answer", "ground_truth", "gold", "target", "Answer", "reward_model.ground_truth")
# Last resort: a worked solution whose final answer is its last \boxed{...}.
SOLUTION_KEYS = ("solution", "Solution")

_ROW_HINT = (
    "each row needs a non-empty 'problem' string and an 'answer' string/number/list; "
    "use --problem-key/--answer-key to name other columns, or drop bad rows with --skip-malformed"
)


@dataclass
class Problem:
    """A math problem with its gold answer(s)."""

    id: str
    """Stable identifier, ``<source>-<row index>``; evaluation resumes by it."""
    problem: str
    """Problem statement, without the instruction suffix."""
    answers: list[str]
    """Gold answers as strings; any one of them counts as correct (DeepScaleR's list ground truths)."""
    source: str
    """Dataset name, file stem or Hub id the problem came from."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other column of the row, plus ``answer_raw`` (the answer as stored, e.g. the float 142.0)."""

    @property
    def gold(self) -> str | list[str]:
        """The single gold string, or the list of alternatives when there are several."""
        return self.answers[0] if len(self.answers) == 1 else list(self.answers)


class RowError(ValueError):
    """A malformed row; the message names the file, the row and the field."""


def _row_error(where: str, row: int, message: str, hint: str = _ROW_HINT) -> RowError:
    return RowError(f"{where} row {row}: {message} ({hint})")


def last_boxed_content(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` with braces matched, or None if there is none."""
    return extract_boxed(text)


def number_to_answer(value: int | float) -> str:
    """A numeric gold as a string: integral floats lose the ``.0`` (AMC's 142.0 → "142"), others use repr.

    "142" is what a model writes and what both DeepScaleR graders accept for 142.0; the original value is
    kept in ``Problem.extra['answer_raw']``.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def normalize_answers(value: Any) -> list[str]:
    """Gold answer(s) → a non-empty list of distinct, stripped strings.

    Accepts a string, an int/float, or a list/tuple of those. A string holding ``\\boxed{X}`` becomes ``X``
    (DeepScaleR unboxes boxed ground truths). Raises ``ValueError`` (message without location) otherwise.
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError("is an empty list")
    answers: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"has type {type(item).__name__} (value {item!r}); expected a string, number or list")
        text = number_to_answer(item) if not isinstance(item, str) else item
        if "\\boxed" in text:
            boxed = last_boxed_content(text)
            if boxed is not None:
                text = boxed
        text = text.strip()
        if not text:
            raise ValueError("is empty")
        if text not in answers:
            answers.append(text)
    return answers


def get_field(row: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """(present, value) for ``key``, following dots into nested dicts (``reward_model.ground_truth``)."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns hold the problem and the answer, and why."""

    problem_key: str
    answer_key: str
    answer_from_solution: bool
    reason: str


def detect_columns(first_row: Mapping[str, Any], where: str, problem_key: str | None = None,
                   answer_key: str | None = None) -> ColumnChoice:
    """Pick the problem and answer columns from the first row (explicit keys win over auto-detection)."""
    reasons = []
    if problem_key is None:
        problem_key = next((k for k in PROBLEM_KEYS if get_field(first_row, k)[0]), None)
        if problem_key is None:
            raise _row_error(where, 0, f"no problem field (looked for {', '.join(PROBLEM_KEYS)}; "
                             f"row has {', '.join(map(str, first_row))})",
                             "name the column with --problem-key / problem_key=")
        reasons.append(f"problem from '{problem_key}'")
    else:
        reasons.append(f"problem from '{problem_key}' (given)")
    from_solution = False
    if answer_key is None:
        answer_key = next((k for k in ANSWER_KEYS if get_field(first_row, k)[0]), None)
        if answer_key is None:
            answer_key = next((k for k in SOLUTION_KEYS if get_field(first_row, k)[0]), None)
            from_solution = answer_key is not None
        if answer_key is None:
            raise _row_error(where, 0, f"no answer field (looked for {', '.join(ANSWER_KEYS + SOLUTION_KEYS)}; "
                             f"row has {', '.join(map(str, first_row))})",
                             "name the column with --answer-key / answer_key=")
        reasons.append(f"answer from '{answer_key}'" + (" (last \\boxed{} of the solution)" if from_solution else ""))
    else:
        from_solution = answer_key in SOLUTION_KEYS
        reasons.append(f"answer from '{answer_key}' (given)")
    return ColumnChoice(problem_key, answer_key, from_solution, ", ".join(reasons))


def _problem_text(value: Any) -> Any:
    """The user text of a chat-format prompt (DeepScaleR parquet rows), without the instruction suffix."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, Mapping) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        if not users:
            return None
        value = users[-1]
        if isinstance(value, str) and value.endswith(" " + INSTRUCTION):
            value = value[: -len(INSTRUCTION) - 1]
    return value


def row_to_problem(row: Any, index: int, source: str, where: str, columns: ColumnChoice) -> Problem:
    """Validate one raw row and build its ``Problem``; raises ``RowError`` naming ``where``/row/field."""
    if not isinstance(row, Mapping):
        raise _row_error(where, index, f"expected an object with fields, got {type(row).__name__}")
    present, raw_problem = get_field(row, columns.problem_key)
    if not present or raw_problem is None:
        raise _row_error(where, index, f"field '{columns.problem_key}' is {'null' if present else 'missing'}")
    text = _problem_text(raw_problem)
    if not isinstance(text, str):
        raise _row_error(where, index, f"field '{columns.problem_key}' has type {type(raw_problem).__name__}, "
                         "expected a string (or a chat message list with a user turn)")
    if not text.strip():
        raise _row_error(where, index, f"field '{columns.problem_key}' is empty")
    present, raw_answer = get_field(row, columns.answer_key)
    if not present or raw_answer is None:
        raise _row_error(where, index, f"field '{columns.answer_key}' is {'null' if present else 'missing'}")
    if columns.answer_from_solution and isinstance(raw_answer, str):
        boxed = last_boxed_content(raw_answer)
        if boxed is None:
            raise _row_error(where, index, f"field '{columns.answer_key}' has no \\boxed{{}} final answer")
        raw_answer = boxed
    try:
        answers = normalize_answers(raw_answer)
    except ValueError as err:
        raise _row_error(where, index, f"field '{columns.answer_key}' {err}") from None
    top_keys = {columns.problem_key.split(".")[0], columns.answer_key.split(".")[0]}
    extra = {k: v for k, v in row.items() if k not in top_keys}
    extra["answer_raw"] = raw_answer
    extra["row"] = index
    return Problem(id=f"{source}-{index}", problem=text, answers=answers, source=source, extra=extra)


def rows_to_problems(rows: Sequence[Any], source: str, where: str, problem_key: str | None = None,
                     answer_key: str | None = None, on_malformed: str = "error") -> tuple[list[Problem], int]:
    """All rows → problems. ``on_malformed``: "error" raises on the first bad row, "skip" drops bad rows.

    Returns (problems, number of skipped rows).
    """
    if on_malformed not in ("error", "skip"):
        raise ValueError(f"on_malformed={on_malformed!r}: use 'error' or 'skip'")
    if not rows:
        return [], 0
    first = next((r for r in rows if isinstance(r, Mapping)), rows[0])
    if not isinstance(first, Mapping):
        raise _row_error(where, 0, f"expected an object with fields, got {type(first).__name__}")
    columns = detect_columns(first, where, problem_key, answer_key)
    problems, skipped = [], 0
    for index, row in enumerate(rows):
        try:
            problems.append(row_to_problem(row, index, source, where, columns))
        except RowError:
            if on_malformed == "error":
                raise
            skipped += 1
    return problems, skipped
