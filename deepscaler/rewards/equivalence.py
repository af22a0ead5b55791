"""Answer equivalence: ``is_equivalent`` and the graders selectable by name."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from deepscaler.rewards.config import GRADER_NAMES
from deepscaler.rewards.extraction import (
    THINK_CLOSE,
    THINK_OPEN,
    extract_final_answer,
    gold_answers,
    split_think,
)
from deepscaler.rewards.normalize import compare_answers

DEFAULT_TIMEOUT_S = 5.0


@functools.lru_cache(maxsize=65536)
def default_equal(pred: str, gold: str) -> bool:
    """Our grader on two bare answers: exact/numeric fast path, then guarded math-verify.

    Cached: GRPO groups repeat the same answers many times. A timeout propagates and is not cached.
    """
    fast = compare_answers(pred, gold)
    if fast is not None:
        return fast
    from deepscaler.rewards.mathverify_backend import symbolic_equal
    from deepscaler.rewards.normalize import normalize_answer

    return symbolic_equal(normalize_answer(pred), normalize_answer(gold))


def _math_verify_equal(pred: str, gold: str) -> bool:
    from deepscaler.rewards.mathverify_backend import math_verify_alone

    return math_verify_alone(pred, gold)


def _deepscaler_equal(pred: str, gold: str) -> bool:
    from deepscaler.rewards.deepscaler_rules import deepscaler_equal

    return deepscaler_equal(pred, gold)


_ANSWER_GRADERS: dict[str, Callable[[str, str], bool]] = {
    "default": default_equal,
    "math_verify": _math_verify_equal,
    "deepscaler": _deepscaler_equal,
}


def get_answer_grader(name: str) -> Callable[[str, str], bool]:
    """The ``(pred_answer, gold_answer) -> bool`` function registered under ``name``."""
    if name not in _ANSWER_GRADERS:
        raise ValueError(f"grader={name!r} is not one of {GRADER_NAMES}; pick one of those names.")
    return _ANSWER_GRADERS[name]


def looks_like_response(text: str) -> bool:
    """A whole model response (has a box or think tags) rather than a bare answer."""
    return any(marker in text for marker in ("\\boxed", "\\fbox", THINK_OPEN, THINK_CLOSE))


def answer_of(pred: str, grader: str = "default") -> str | None:
    """The answer to grade in ``pred``: the final boxed answer of a response, or the bare answer itself.

    For ``grader="math_verify"`` a response's text after ``</think>`` (or the whole response) is returned:
    math-verify alone extracts the answer itself, last-number fallback included. For ``"deepscaler"`` DeepScaleR's own extraction is used (last ``\\boxed``, no joining).
    """
    if not looks_like_response(pred):
        return pred.strip()
    if grader == "math_verify":  # math-verify alone: its own extraction on the text after </think>
        split = split_think(pred)
        return split[1] if split else pred
    if THINK_CLOSE in pred:
        split = split_think(pred)
        solution = split[1] if split else ""
    elif THINK_OPEN in pred:
        return None  # thinking never closed: no final answer
    else:
        solution = pred
    if grader == "deepscaler":
        from deepscaler.rewards.deepscaler_rules import deepscaler_extract

        return deepscaler_extract(solution)
    return extract_final_answer(solution)


def grade_answer(answer: str, golds: Sequence[str], grader: str = "default") -> bool:
    """Any-of over gold answers, without a time bound (callers bound it)."""
    if not answer.strip():
        return False
    equal = get_answer_grader(grader)
    return any(equal(answer, gold) for gold in golds)


def is_equivalent(
    pred: str,
    gold: str | Sequence[str],
    *,
    grader: str = "default",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Whether ``pred`` states an answer equivalent to ``gold`` (or to any gold of a list).

    ``pred`` is a bare answer (``"\\frac{1}{2}"``, ``"x = 3"``) or a whole model response, whose final
    answer is the last ``\\boxed{}`` after ``</think>`` (adjacent boxes form one answer; a response whose
    thinking never closed has none). Equivalence follows grading_anchors.md §5. Bounded by ``timeout_s``
    (False on expiry): a signal timer in the main thread, the reward process pool elsewhere.
    """
    if not isinstance(pred, str):
        raise TypeError(f"is_equivalent: pred must be a str (answer or response), got {type(pred).__name__}.")
    golds = gold_answers(gold)
    if not golds:
        raise ValueError(f"is_equivalent: gold {gold!r} holds no answer; pass a non-empty string or list.")
    answer = answer_of(pred, grader)
    if answer is None or not answer.strip():
        return False
    get_answer_grader(grader)  # validate the name before any work
    from deepscaler.rewards.timeouts import GradingTimeout, can_bound_in_process, time_limit

    if can_bound_in_process():
        try:
            with time_limit(timeout_s):
                return grade_answer(answer, golds, grader)
        except GradingTimeout:
            return False
    from deepscaler.rewards.pool import get_pool

    return bool(get_pool().map_equivalence([(answer, golds, grader)], timeout_s)[0])
