"""The demo's teacher: right reasoning, a systematically wrong final answer on most problems.

DeepScaleR starts from a model distilled from a stronger teacher and shows that RL with a verifiable reward
takes it beyond that teacher (Luo et al., 2025, "DeepScaleR: Surpassing O1-Preview with a 1.5B Model by
Scaling RL"). The demo reproduces that story at toy scale with a teacher whose demonstrations are flawed in one
systematic way: its column-by-column trace is right, but on a fixed ``flaw_fraction`` of the problems
(chosen by a stable hash) it boxes the result plus one.

Why this makes the RL gain a property of the data rather than of the warm-up: a warm-up trained to
convergence imitates the teacher's majority, so greedy decoding boxes the flawed answer and Pass@1 plateaus
low, whatever the machine's arithmetic; sampling still writes the right answer with probability about
``1 - flaw_fraction``, and the verifiable reward selects it. How far RL can go is set by how well the model
does the trace, how low the warm-up starts by the flaw.
"""

from __future__ import annotations

import hashlib

from deepscaler.data.arithmetic import ArithmeticProblem


def teacher_is_flawed(key: str, flaw_fraction: float) -> bool:
    """Whether the teacher boxes the wrong answer for the problem ``key`` (e.g. ``"347+589"``).

    A stable hash, not a random draw: the teacher is one fixed set of demonstrations, the same in every run.
    """
    if not 0.0 <= flaw_fraction <= 1.0:
        raise ValueError(f"flaw_fraction must be in [0, 1], got {flaw_fraction}")
    digest = hashlib.blake2b(f"teacher-flaw:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < flaw_fraction


def teacher_answer(problem: ArithmeticProblem, flaw_fraction: float) -> str:
    """The answer the teacher boxes: the right one, or the right one plus one on its flawed problems."""
    if teacher_is_flawed(problem.key, flaw_fraction):
        return str(int(problem.answer) + 1)
    return problem.answer


def teacher_response(problem: ArithmeticProblem, flaw_fraction: float) -> str:
    """The teacher's demonstration: the correct trace, then ``\\boxed{teacher_answer}`` (EOS not included)."""
    return f"<think>\n{problem.trace()}</think>\n\\boxed{{{teacher_answer(problem, flaw_fraction)}}}"
