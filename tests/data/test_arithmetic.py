"""The demo's arithmetic task: correct answers, a trace that really computes them, disjoint splits, and gold
responses that the real math reward scores 1."""

from __future__ import annotations

import random
import re

import pytest

from deepscaler.data.arithmetic import (
    ArithmeticProblem,
    ArithmeticTaskConfig,
    column_trace,
    is_held_out,
    sample_problems,
)

_LINE = re.compile(r"^(\d)(?:\+10)?([+-])(\d)(?:[+-]1)?=(\d+) -> (\d+)$")


def _replay_trace(trace: str) -> str:
    """Read the answer back from the last line of a trace (independently of the generator)."""
    lines = trace.strip().split("\n")
    assert all(_LINE.match(line) for line in lines), lines
    return str(int(_LINE.match(lines[-1]).group(5)))


def test_answers_are_exact_for_random_problems():
    rng = random.Random(1)
    for _ in range(2000):
        a, b = rng.randint(0, 99_999), rng.randint(0, 99_999)
        assert ArithmeticProblem(a, "+", b).answer == str(a + b)
        high, low = max(a, b), min(a, b)
        assert ArithmeticProblem(high, "-", low).answer == str(high - low)


def test_trace_last_line_holds_the_answer_and_each_column_is_right():
    rng = random.Random(2)
    for _ in range(2000):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        problem = ArithmeticProblem(a, op, b)
        trace = problem.trace()
        assert _replay_trace(trace) == problem.answer
        # one line per column of the longer operand
        assert trace.count("\n") == max(len(str(a)), len(str(b)))


def test_trace_examples_show_carries_and_borrows():
    assert column_trace(347, "+", 589) == "7+9=16 -> 6\n4+8+1=13 -> 36\n3+5+1=9 -> 936\n"
    assert column_trace(947, "+", 89) == "7+9=16 -> 6\n4+8+1=13 -> 36\n9+0+1=10 -> 1036\n"
    assert column_trace(503, "-", 498) == "3+10-8=5 -> 5\n0+10-9-1=0 -> 05\n5-4-1=0 -> 005\n"
    assert ArithmeticProblem(503, "-", 498).gold_response().endswith("</think>\n\\boxed{5}")


def test_gold_response_format():
    problem = ArithmeticProblem(52, "-", 7)
    assert problem.problem == "What is 52 - 7?"
    assert problem.gold_response() == "<think>\n2+10-7=5 -> 5\n5-0-1=4 -> 45\n</think>\n\\boxed{45}"


def test_subtraction_refuses_negative_results():
    with pytest.raises(ValueError, match="a >= b"):
        column_trace(3, "-", 5)
    with pytest.raises(ValueError, match="op must be"):
        column_trace(3, "*", 5)


def test_splits_are_disjoint_and_follow_the_hash():
    config = ArithmeticTaskConfig()
    train = sample_problems(5000, config, split="train", seed=0)
    test = sample_problems(1000, config, split="test", seed=0)
    train_keys, test_keys = {p.key for p in train}, {p.key for p in test}
    assert len(train_keys) == 5000 and len(test_keys) == 1000  # distinct within a split
    assert not train_keys & test_keys
    assert all(is_held_out(p.a, p.op, p.b, config.held_out_fraction) for p in test)
    assert not any(is_held_out(p.a, p.op, p.b, config.held_out_fraction) for p in train)
    # another seed draws other train problems but never a held-out one
    other = sample_problems(2000, config, split="train", seed=7)
    assert not {p.key for p in other} & test_keys


def test_sampling_respects_the_config_and_is_deterministic():
    config = ArithmeticTaskConfig(min_digits=2, max_digits=2, operations=("-",))
    problems = sample_problems(300, config, split="train", seed=3)
    assert problems == sample_problems(300, config, split="train", seed=3)
    assert all(p.op == "-" and 10 <= p.b <= p.a <= 99 for p in problems)
    assert {p.op for p in sample_problems(300, ArithmeticTaskConfig(), seed=3)} == {"+", "-"}


@pytest.mark.parametrize("kwargs, message", [
    ({"min_digits": 3, "max_digits": 2}, "min_digits"),
    ({"operations": ("*",)}, "operations"),
    ({"held_out_fraction": 0.0}, "held_out_fraction"),
])
def test_bad_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTaskConfig(**kwargs)


def test_too_many_problems_for_the_space_is_an_error():
    config = ArithmeticTaskConfig(min_digits=1, max_digits=1, operations=("+",))
    with pytest.raises(ValueError, match="could not draw"):
        sample_problems(100, config, split="test")


def test_gold_responses_score_one_with_the_real_reward_and_wrong_answers_zero():
    from deepscaler.rewards import math_reward, score_responses

    problems = sample_problems(20, ArithmeticTaskConfig(), split="test", seed=0)
    for problem in problems[:5]:
        assert math_reward(problem.gold_response(), problem.answer) == 1.0
        wrong = problem.gold_response().replace(f"\\boxed{{{problem.answer}}}",
                                                f"\\boxed{{{int(problem.answer) + 1}}}")
        assert math_reward(wrong, problem.answer) == 0.0
        # the answer only inside the thinking part does not count
        assert math_reward(f"<think>\n\\boxed{{{problem.answer}}}\n</think>\n", problem.answer) == 0.0
    rewards = score_responses([p.gold_response() for p in problems], [p.answer for p in problems], num_workers=1)
    assert rewards == [1.0] * len(problems)


def test_to_problem_records_carry_the_answer():
    from deepscaler.data import Problem
    from deepscaler.data.arithmetic import to_problems

    records = to_problems(sample_problems(3, seed=0), source="arithmetic")
    assert all(isinstance(r, Problem) for r in records)
    assert records[0].answers == [sample_problems(3, seed=0)[0].answer]
    assert records[0].id == "arithmetic-" + sample_problems(3, seed=0)[0].key
