"""The demo's flawed teacher: right traces always, the result + 1 boxed on a stable share of the problems,
and the real reward telling the two apart."""

from __future__ import annotations

import pytest

from deepscaler.data.arithmetic import ArithmeticProblem, ArithmeticTaskConfig, sample_problems
from deepscaler.demo.teacher import teacher_answer, teacher_is_flawed, teacher_response
from deepscaler.rewards import math_reward


def test_flawed_share_follows_the_fraction_and_is_stable():
    problems = sample_problems(4000, ArithmeticTaskConfig(), split="train", seed=0)
    for fraction in (0.0, 0.3, 0.7):
        flawed = [teacher_is_flawed(p.key, fraction) for p in problems]
        # a hash behaves like independent draws: the share is within 4 standard deviations (sd <= 0.008)
        assert abs(sum(flawed) / len(flawed) - fraction) < 0.032
        assert flawed == [teacher_is_flawed(p.key, fraction) for p in problems]
    # a larger fraction keeps every problem a smaller one flaws (the threshold moves, the hash does not)
    assert all(teacher_is_flawed(p.key, 0.7) for p in problems if teacher_is_flawed(p.key, 0.3))
    with pytest.raises(ValueError, match="flaw_fraction"):
        teacher_is_flawed("1+2", 1.5)


def test_trace_is_right_and_only_the_boxed_answer_is_flawed():
    problems = sample_problems(300, ArithmeticTaskConfig(), split="train", seed=1)
    for problem in problems:
        response = teacher_response(problem, 0.7)
        trace_part, boxed = response.split("</think>\n")
        assert trace_part == f"<think>\n{problem.trace()}"
        expected = int(problem.answer) + 1 if teacher_is_flawed(problem.key, 0.7) else int(problem.answer)
        assert boxed == f"\\boxed{{{expected}}}" and teacher_answer(problem, 0.7) == str(expected)
    assert teacher_response(ArithmeticProblem(999, "+", 1), 0.0).endswith("\\boxed{1000}")


def test_the_reward_scores_flawed_demonstrations_zero_and_the_rest_one():
    problems = sample_problems(200, ArithmeticTaskConfig(), split="test", seed=0)
    for problem in problems[:40]:
        reward = math_reward(teacher_response(problem, 0.7), problem.answer)
        assert reward == (0.0 if teacher_is_flawed(problem.key, 0.7) else 1.0)
