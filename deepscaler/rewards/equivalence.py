"""Answer equivalence: ``is_equivalent`` and the graders selectable by name."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from deepscaler.rewards.answer import graded_answer, looks_like_response
from deepscaler.rewards.config import GRADER_NAMES, RewardConfig
from deepscaler.rewards.deepscaler_rules import deepscaler_equal
from deepscaler.rewards.extraction import gold_answers
from deepscaler.rewards.mathverify_backend import math_verify_alone, symbolic_equal, warm_up
from deepscaler.rewards.normalize import compare_answers, normalize_answer
from deepscaler.rewards.pool import BoundedPool, get_pool
from deepscaler.rewards.timeouts import GradingTimeout, can_bound_in_process, time_limit

GRADING_MODULES = ("deepscaler.rewards.reward", "deepscaler.rewards.equivalence",
                   "deepscaler.rewards.mathverify_backend", "math_verify", "sympy")
"""What a grading worker imports once (the forkserver preloads them, so a replacement worker starts fast)."""


@functools.lru_cache(maxsize=65536)
def default_equal(pred: str, gold: str) -> bool:
    """Our grader on two bare answers: exact/numeric fast path, then guarded math-verify.

    Cached: GRPO groups repeat the same answers many times. A timeout propagates and is not cached.
    """
    fast = compare_answers(pred, gold)
    if fast is not None:
        return fast
    return symbolic_equal(normalize_answer(pred), normalize_answer(gold))


_ANSWER_GRADERS: dict[str, Callable[[str, str], bool]] = {
    "default": default_equal,
    "math_verify": math_verify_alone,
    "deepscaler": deepscaler_equal,
}


def get_answer_grader(name: str) -> Callable[[str, str], bool]:
    """The ``(pred_answer, gold_answer) -> bool`` function registered under ``name``."""
    if name not in _ANSWER_GRADERS:
        raise ValueError(f"grader={name!r} is not one of {GRADER_NAMES}; pick one of those names.")
    return _ANSWER_GRADERS[name]


def grade_answer(answer: str, golds: Sequence[str], grader: str = "default") -> bool:
    """Any-of over gold answers, without a time bound (callers bound it)."""
    if not answer.strip():
        return False
    equal = get_answer_grader(grader)
    return any(equal(answer, gold) for gold in golds)


def grading_pool(num_workers: int | None = None) -> BoundedPool:
    """The shared worker pool, its workers preloaded with the grading stack and warmed up."""
    return get_pool(num_workers, preload=GRADING_MODULES, initializer=warm_up)


def _grade_bounded(item: tuple[str, list[str], str, float]) -> bool:
    """``grade_answer`` under its time limit, in a pool worker (False on expiry)."""
    answer, golds, grader, timeout_s = item
    try:
        with time_limit(timeout_s):
            return grade_answer(answer, golds, grader)
    except GradingTimeout:
        return False


def is_equivalent(
    pred: str,
    gold: str | Sequence[str],
    *,
    grader: str = "default",
    timeout_s: float = RewardConfig.timeout_s,
) -> bool:
    """Whether ``pred`` states an answer equivalent to ``gold`` (or to any gold of a list).

    ``pred`` is a bare answer (``"\\frac{1}{2}"``, ``"x = 3"``) or a whole model response, graded as the reward
    grades it (:func:`deepscaler.rewards.answer.graded_answer`: the last ``\\boxed{}`` after ``</think>``;
    adjacent boxes form one answer; a response whose thinking never closed has none). Bounded by ``timeout_s``
    (False on expiry): a signal timer in the main thread, the worker pool elsewhere.
    """
    if not isinstance(pred, str):
        raise TypeError(f"is_equivalent: pred must be a str (answer or response), got {type(pred).__name__}.")
    golds = gold_answers(gold)
    if not golds:
        raise ValueError(f"is_equivalent: gold {gold!r} holds no answer; pass a non-empty string or list.")
    get_answer_grader(grader)  # validate the name before any work
    answer = graded_answer(pred, RewardConfig(grader=grader)) if looks_like_response(pred) else pred.strip()
    if answer is None or not answer.strip():
        return False
    item = (answer, golds, grader, timeout_s)
    if can_bound_in_process():
        return _grade_bounded(item)
    pool = grading_pool()
    return bool(pool.map(_grade_bounded, [item], timeout_s + RewardConfig.pool_grace_s, False)[0])
