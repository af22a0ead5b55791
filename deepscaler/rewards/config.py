"""Configuration of the verifiable math reward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ThinkFormat = Literal["close", "strict", "none"]
GraderName = Literal["default", "math_verify", "deepscaler"]

THINK_FORMATS: tuple[str, ...] = ("close", "strict", "none")
GRADER_NAMES: tuple[str, ...] = ("default", "math_verify", "deepscaler")


@dataclass
class RewardConfig:
    """How a response is turned into a scalar reward.

    DeepScaleR's effective reward is 1 for a correct answer and 0 for everything else; those are the
    defaults. Set ``incorrect_reward=-1.0`` / ``format_error_reward=-1.0`` for the ±1 variant its own config
    class declares.
    """

    correct_reward: float = 1.0
    """Reward when the final answer is equivalent to one of the gold answers."""

    incorrect_reward: float = 0.0
    """Reward when an answer was found but is wrong, empty, or grading ran out of time or crashed."""

    format_error_reward: float = 0.0
    """Reward when no gradable answer exists: the thinking never closed (per ``think_format``) or the
    graded text has no ``\\boxed{}``/``\\fbox{}``."""

    think_format: ThinkFormat = "close"
    """Which part of the response is graded.

    * ``"close"`` (default): the text after the first ``</think>`` (and before a second one). A response
      with no ``</think>`` is a format error when it opened ``<think>`` or the prompt opened it
      (``prompt_opens_think=True``): the thinking never finished. A response with no think tag at all from
      a prompt that did not open thinking is graded whole, so a non-thinking model is not silently scored
      0 (the DeepScaleR pitfall); set ``allow_missing_think=False`` to make that a format error too.
    * ``"strict"``: DeepScaleR's rule: both ``<think>`` and ``</think>`` must be present (the opening tag
      may come from the prompt, ``prompt_opens_think=True``), the text after the first ``</think>`` is
      graded.
    * ``"none"``: tags are ignored; the last box of the whole response is graded.
    """

    allow_missing_think: bool = True
    """``think_format="close"`` only: grade a response that has no think tag at all as a whole."""

    timeout_s: float = 5.0
    """Wall-clock bound for grading one response (all its gold answers). On expiry the response gets
    ``incorrect_reward``. In the pool, a worker that overruns it by ``pool_grace_s`` is killed."""

    pool_grace_s: float = 2.0
    """Extra seconds the pool waits beyond ``timeout_s`` before killing a stuck worker."""

    num_workers: int | None = None
    """Grading processes of the pool; None: the CPUs this process may use, at most 16; 0 grades in this process
    (main thread only)."""

    grader: GraderName = "default"
    """Equivalence rule: ``"default"`` (exact/numeric fast paths, then guarded math-verify; follows the
    project conventions), ``"math_verify"`` (math-verify alone, README reward settings) or
    ``"deepscaler"`` (DeepScaleR's mathd-or-sympy rules, :mod:`deepscaler.rewards.deepscaler_rules`)."""

    def __post_init__(self) -> None:
        if self.think_format not in THINK_FORMATS:
            raise ValueError(
                f"RewardConfig.think_format={self.think_format!r} is not one of {THINK_FORMATS}; "
                "use 'close' (grade after </think>), 'strict' (both tags) or 'none' (whole response)."
            )
        if self.grader not in GRADER_NAMES:
            raise ValueError(
                f"RewardConfig.grader={self.grader!r} is not one of {GRADER_NAMES}; "
                "use 'default', 'math_verify' or 'deepscaler'."
            )
        if not self.timeout_s > 0:
            raise ValueError(f"RewardConfig.timeout_s must be > 0 seconds, got {self.timeout_s!r}.")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"RewardConfig.num_workers must be >= 0 (or None for automatic), got {self.num_workers!r}.")
        if self.pool_grace_s < 0:
            raise ValueError(f"RewardConfig.pool_grace_s must be >= 0 seconds, got {self.pool_grace_s!r}.")
