"""Which part of a response is graded, and the answer taken from it: the one place that decides it, for the reward
(:func:`deepscaler.rewards.math_reward`) and for :func:`deepscaler.rewards.is_equivalent` on whole responses."""

from __future__ import annotations

from deepscaler.rewards.config import RewardConfig
from deepscaler.rewards.deepscaler_rules import deepscaler_extract
from deepscaler.rewards.extraction import THINK_CLOSE, THINK_OPEN, extract_final_answer, split_think


def graded_segment(response: str, config: RewardConfig, prompt_opens_think: bool = False) -> str | None:
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


def graded_answer(response: str, config: RewardConfig, prompt_opens_think: bool = False) -> str | None:
    """The answer to grade in ``response``, or None when it has none (a format error).

    The graded segment (:func:`graded_segment`) must hold a final boxed answer: the last ``\\boxed{}`` (adjacent
    boxes joined; DeepScaleR's own extraction for ``grader="deepscaler"``). For ``grader="math_verify"`` the whole
    segment is returned, since math-verify extracts the answer itself.
    """
    segment = graded_segment(response, config, prompt_opens_think)
    if segment is None:
        return None
    answer = deepscaler_extract(segment) if config.grader == "deepscaler" else extract_final_answer(segment)
    if answer is None:
        return None
    return segment if config.grader == "math_verify" else answer


def looks_like_response(text: str) -> bool:
    """A whole model response (has a box or think tags) rather than a bare answer."""
    return any(marker in text for marker in ("\\boxed", "\\fbox", THINK_OPEN, THINK_CLOSE))
