"""The scalar reward of one response, and batch scoring in the process pool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from enum import Enum

from deepscaler.rewards.answer import graded_answer
from deepscaler.rewards.config import RewardConfig
from deepscaler.rewards.deepscaler_rules import deepscaler_gold_list
from deepscaler.rewards.equivalence import grade_answer, grading_pool
from deepscaler.rewards.extraction import gold_answers
from deepscaler.rewards.pool import BoundedPool
from deepscaler.rewards.timeouts import GradingTimeout, can_bound_in_process, time_limit


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


def _golds_for(gold: object, grader: str) -> list[str]:
    return deepscaler_gold_list(gold) if grader == "deepscaler" else gold_answers(gold)


def judge_response(response: str, gold: object, config: RewardConfig, prompt_opens_think: bool) -> Outcome:
    """Outcome of one response without a time bound (callers bound it)."""
    answer = graded_answer(response, config, prompt_opens_think)
    if answer is None:
        return Outcome.FORMAT_ERROR
    return Outcome.CORRECT if grade_answer(answer, _golds_for(gold, config.grader), config.grader) else Outcome.INCORRECT


def _check_inputs(response: object, gold: object) -> None:
    if not isinstance(response, str):
        raise TypeError(f"math_reward: response must be a str, got {type(response).__name__}.")
    if gold is None or (isinstance(gold, (list, tuple)) and not gold_answers(gold)):
        raise ValueError(
            f"math_reward: gold {gold!r} holds no answer; pass a string, a number or a non-empty list."
        )


def judge_bounded(response: str, gold: object, config: RewardConfig, prompt_opens_think: bool) -> Outcome:
    """:func:`judge_response` under ``config.timeout_s`` (this must be the main thread)."""
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
    if can_bound_in_process():
        return outcome_value(judge_bounded(response, gold, config, prompt_opens_think), config)
    return score_responses([response], [gold], config, prompt_opens_think=prompt_opens_think)[0]


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
    return score_in_pool(grading_pool(num_workers or None), list(zip(responses, golds, opens, strict=True)), config)


def score_in_pool(pool: BoundedPool, items: list[tuple[str, object, bool]], config: RewardConfig) -> list[float]:
    """Rewards of ``(response, gold, prompt_opens_think)`` items in ``pool``, in order; an item whose worker hung
    past ``config.timeout_s + config.pool_grace_s`` or crashed gets ``config.incorrect_reward``."""
    return pool.map(_score_item, [(response, gold, config, opens) for response, gold, opens in items],
                    config.timeout_s + config.pool_grace_s, config.incorrect_reward)


def _score_item(item: tuple[str, object, RewardConfig, bool]) -> float:
    """The reward of one item, bounded in the worker by its signal timer."""
    response, gold, config, opens = item
    return outcome_value(judge_bounded(response, gold, config, opens), config)
