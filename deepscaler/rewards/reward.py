"""The scalar reward of one response, and batch scoring in the process pool."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import Enum

from deepscaler.rewards.config import RewardConfig
from deepscaler.rewards.extraction import (
    THINK_CLOSE,
    THINK_OPEN,
    extract_final_answer,
    gold_answers,
    split_think,
)


class Outcome(str, Enum):
    """How a response was judged; mapped to a value by :class:`RewardConfig`."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    FORMAT_ERROR = "format_error"
    TIMEOUT = "timeout"


def outcome_value(outcome: Outcome, config: RewardConfig) -> float:
    if outcome is Outcome.CORRECT:
        return config.correct_reward
    if outcome is Outcome.FORMAT_ERROR:
        return config.format_error_reward
    return config.incorrect_reward


def graded_segment(response: str, config: RewardConfig, prompt_opens_think: bool) -> str | None:
    """The text whose final answer is graded, or None for a format error (see ``RewardConfig.think_format``)."""
    if config.think_format == "none":
        return response
    if config.think_format == "strict":
        split = split_think(response, prompt_opens_think, strict=True)
        return split[1] if split else None
    if THINK_CLOSE in response:
        split = split_think(response, prompt_opens_think)
        return split[1] if split else None
    if THINK_OPEN in response or prompt_opens_think or not config.allow_missing_think:
        return None  # the thinking was opened and never closed (truncated or malformed)
    return response


def _golds_for(gold: object, grader: str) -> list[str]:
    if grader == "deepscaler":
        from deepscaler.rewards.deepscaler_rules import deepscaler_gold_list

        return deepscaler_gold_list(gold)
    return gold_answers(gold)


def judge_response(response: str, gold: object, config: RewardConfig, prompt_opens_think: bool) -> Outcome:
    """Outcome of one response without a time bound (callers bound it)."""
    from deepscaler.rewards.equivalence import grade_answer

    segment = graded_segment(response, config, prompt_opens_think)
    if segment is None:
        return Outcome.FORMAT_ERROR
    golds = _golds_for(gold, config.grader)
    if config.grader == "deepscaler":
        from deepscaler.rewards.deepscaler_rules import deepscaler_extract

        answer = deepscaler_extract(segment)
    else:
        answer = extract_final_answer(segment)
    if answer is None:
        return Outcome.FORMAT_ERROR
    if config.grader == "math_verify":
        answer = segment  # math-verify alone extracts the answer from the solution text itself
    return Outcome.CORRECT if grade_answer(answer, golds, config.grader) else Outcome.INCORRECT


def _check_inputs(response: object, gold: object) -> None:
    if not isinstance(response, str):
        raise TypeError(f"math_reward: response must be a str, got {type(response).__name__}.")
    if gold is None or (isinstance(gold, (list, tuple)) and not gold_answers(gold)):
        raise ValueError(
            f"math_reward: gold {gold!r} holds no answer; pass a string, a number or a non-empty list."
        )


def judge_bounded(response: str, gold: object, config: RewardConfig, prompt_opens_think: bool) -> Outcome:
    """:func:`judge_response` under ``config.timeout_s`` (this must be the main thread)."""
    from deepscaler.rewards.timeouts import GradingTimeout, time_limit

    try:
        with time_limit(config.timeout_s):
            return judge_response(response, gold, config, prompt_opens_think)
    except GradingTimeout:
        return Outcome.TIMEOUT


def math_reward(
    response: str, gold: object, config: RewardConfig | None = None, *, prompt_opens_think: bool = False
) -> float:
    """Reward of one response against ``gold`` (a string, a number or a list of acceptable answers).

    ``config.correct_reward`` when the final boxed answer of the graded segment (``config.think_format``)
    equals a gold answer, ``config.format_error_reward`` when there is no gradable answer, and
    ``config.incorrect_reward`` otherwise, also when grading exceeds ``config.timeout_s``.
    ``prompt_opens_think=True`` says the prompt already ended in ``<think>`` (R1-distill template), so the
    response legitimately lacks it.
    """
    config = config or RewardConfig()
    _check_inputs(response, gold)
    from deepscaler.rewards.timeouts import can_bound_in_process

    if can_bound_in_process():
        return outcome_value(judge_bounded(response, gold, config, prompt_opens_think), config)
    return score_responses([response], [gold], config, prompt_opens_think=prompt_opens_think)[0]


def default_num_workers() -> int:
    """Pool size when not given: the CPUs this process may use, at most 16."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(16, available))


def score_responses(
    responses: Sequence[str],
    golds: Sequence[object],
    config: RewardConfig | None = None,
    *,
    prompt_opens_think: bool | Sequence[bool] = False,
    num_workers: int | None = None,
    timeout_s: float | None = None,
) -> list[float]:
    """Rewards of many responses, in order, graded in a reused process pool.

    Every item is bounded: a worker past ``timeout_s`` (default ``config.timeout_s``) plus
    ``config.pool_grace_s`` is killed and replaced, and a hung or crashed item gets
    ``config.incorrect_reward``. ``num_workers=0`` grades in this process (main thread only).
    """
    config = config or RewardConfig()
    if timeout_s is not None:
        from dataclasses import replace

        config = replace(config, timeout_s=timeout_s)
    num_workers = config.num_workers if num_workers is None else num_workers
    if len(responses) != len(golds):
        raise ValueError(
            f"score_responses: {len(responses)} responses but {len(golds)} golds; pass one gold per response."
        )
    opens = (
        [bool(prompt_opens_think)] * len(responses)
        if isinstance(prompt_opens_think, bool)
        else [bool(flag) for flag in prompt_opens_think]
    )
    if len(opens) != len(responses):
        raise ValueError("score_responses: prompt_opens_think must be a bool or one bool per response.")
    for response, gold in zip(responses, golds, strict=False):
        _check_inputs(response, gold)
    if not responses:
        return []
    if num_workers == 0:
        return [math_reward(r, g, config, prompt_opens_think=o) for r, g, o in zip(responses, golds, opens, strict=False)]
    from deepscaler.rewards.pool import get_pool

    pool = get_pool(num_workers or default_num_workers())
    return pool.map_rewards(list(zip(responses, golds, opens, strict=False)), config)
