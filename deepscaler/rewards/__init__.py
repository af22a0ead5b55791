"""Verifiable math reward: DeepScaleR semantics with a faster, more accurate equivalence check.

Public API::

    is_equivalent(pred, gold) -> bool              # pred: bare answer or whole response; gold: str | list
    math_reward(response, gold, config=None, *, prompt_opens_think=False) -> float
    score_responses(responses, golds, config=None, *, prompt_opens_think=False, num_workers=None,
                    timeout_s=None) -> list[float]  # process pool, order kept, every item bounded
    RewardConfig(correct_reward=1.0, incorrect_reward=0.0, format_error_reward=0.0, think_format="close",
                 allow_missing_think=True, timeout_s=5.0, pool_grace_s=2.0, num_workers=None, grader="default")
    graded_answer(response, config, prompt_opens_think=False) -> str | None   # the answer that is graded
    extract_boxed(text) -> str | None               # last \\boxed{…}/\\fbox{…}, nested braces matched
    split_think(response, prompt_opens_think=False, *, strict=False) -> (thinking, solution) | None
    close_pool()                                    # stop the reused grading workers

Graders by name: ``"default"`` (string/numeric fast path, then math-verify with guards against its
known false positives), ``"math_verify"`` (math-verify alone) and ``"deepscaler"`` (DeepScaleR's
mathd-or-sympy rules, :mod:`deepscaler.rewards.deepscaler_rules`).

Importing this package is light: math-verify and SymPy load on first symbolic comparison.
"""

from deepscaler.rewards.answer import graded_answer
from deepscaler.rewards.config import GRADER_NAMES, THINK_FORMATS, RewardConfig
from deepscaler.rewards.equivalence import is_equivalent
from deepscaler.rewards.extraction import extract_boxed, extract_final_answer, gold_answers, split_think
from deepscaler.rewards.pool import close_pool
from deepscaler.rewards.reward import math_reward, score_responses

__all__ = [
    "GRADER_NAMES",
    "THINK_FORMATS",
    "RewardConfig",
    "close_pool",
    "extract_boxed",
    "extract_final_answer",
    "gold_answers",
    "graded_answer",
    "is_equivalent",
    "math_reward",
    "score_responses",
    "split_think",
]
