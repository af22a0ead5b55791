"""Extraction and reward semantics: think-tag modes, boxes, golds, reward constants, malformed inputs."""

from __future__ import annotations

import pytest

from deepscaler.rewards import (
    RewardConfig,
    extract_boxed,
    extract_final_answer,
    gold_answers,
    math_reward,
    split_think,
)


def test_extract_boxed_matches_nested_braces_and_takes_the_last_box():
    assert extract_boxed(r"so \boxed{\frac{\sqrt{3}}{2}} done") == r"\frac{\sqrt{3}}{2}"
    assert extract_boxed(r"\boxed{12} then \boxed{13}") == "13"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"\boxed{}") == ""
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"truncated \boxed{\frac{1}{2") is None
    assert extract_boxed(r"\boxed{\boxed{8}}") == r"\boxed{8}"


def test_final_answer_joins_adjacent_boxes_but_not_distant_ones():
    assert extract_final_answer(r"$x = \boxed{2}$ and $x = \boxed{-3}$.") == "2, -3"
    assert extract_final_answer(r"\boxed{5}, i.e. \boxed{5}") is not None
    far = r"first \boxed{12}. After checking the whole computation again carefully, it is \boxed{13}"
    assert extract_final_answer(far) == "13"


def test_split_think_modes():
    assert split_think("<think>a</think>b") == ("a", "b")
    assert split_think("a</think>b") == ("a", "b")
    assert split_think("a</think>b", strict=True) is None
    assert split_think("a</think>b", prompt_opens_think=True, strict=True) == ("a", "b")
    assert split_think("<think>a</think>b</think>c") == ("a", "b")
    assert split_think("<think>never closed") is None


def test_gold_answers_normalise_floats_boxes_and_lists():
    assert gold_answers(142.0) == ["142"]
    assert gold_answers(2.5) == ["2.5"]
    assert gold_answers([r"$\frac{1}{2}$", r"\boxed{3}", "", None]) == [r"\frac{1}{2}", "3"]
    assert gold_answers("9.6\n") == ["9.6"]


@pytest.mark.parametrize(
    ("response", "opens", "close", "strict", "none"),
    [
        ("<think>x</think>\\boxed{4}", False, 1.0, 1.0, 1.0),
        ("x</think>\\boxed{4}", True, 1.0, 1.0, 1.0),  # the prompt opened <think>
        ("x</think>\\boxed{4}", False, 1.0, -0.5, 1.0),  # strict DeepScaleR needs both tags
        ("The answer is \\boxed{4}", False, 1.0, -0.5, 1.0),  # non-thinking model
        ("The answer is \\boxed{4}", True, -0.5, -0.5, 1.0),  # thinking opened by the prompt never closed
        ("<think>so \\boxed{4}", False, -0.5, -0.5, 1.0),  # truncated inside the thinking
        ("<think>\\boxed{4}</think>The answer is 4.", False, -0.5, -0.5, 1.0),  # box only in thinking ("none": tags ignored)
        ("<think>x</think>\\boxed{5}", False, -1.0, -1.0, -1.0),
    ],
)
def test_think_formats(response, opens, close, strict, none):
    values = {"correct_reward": 1.0, "incorrect_reward": -1.0, "format_error_reward": -0.5}
    for think_format, expected in (("close", close), ("strict", strict), ("none", none)):
        config = RewardConfig(think_format=think_format, **values)
        assert math_reward(response, "4", config, prompt_opens_think=opens) == expected, think_format


def test_close_mode_can_require_think_tags():
    config = RewardConfig(allow_missing_think=False, format_error_reward=-1.0)
    assert math_reward("The answer is \\boxed{4}", "4", config) == -1.0


def test_list_golds_and_amc_float_golds():
    response = "<think>ok</think>So the answer is $\\boxed{142}$."
    assert math_reward(response, 142.0) == 1.0
    assert math_reward(response, [141.0, "142"]) == 1.0
    assert math_reward(response, ["141", "143"]) == 0.0
    assert math_reward("<think>ok</think>\\boxed{2.5}", 2.5) == 1.0


def test_reward_is_for_the_final_answer_only():
    assert math_reward("<think>a</think>\\boxed{2} or \\boxed{3}", "2") == 0.0  # hedging
    assert math_reward("<think>a</think>x=\\boxed{2} and x=\\boxed{-3}", "-3, 2") == 1.0
    assert math_reward("<think>a</think>\\boxed{}", "0") == 0.0
    assert math_reward("<think>a</think>The answer is 42.", "42") == 0.0  # no last-number fallback


def test_malformed_inputs():
    assert math_reward("", "1") == 0.0
    assert math_reward("<think></think>\\boxed{\\frac{1}{", "1") == 0.0
    assert math_reward("<think></think>\\boxed{}}}{{\\left(", "1") == 0.0
    assert math_reward("\x00\xff</think>\\boxed{\\\\\\}", "1") == 0.0
    with pytest.raises(TypeError, match="response must be a str"):
        math_reward(None, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gold"):
        math_reward("\\boxed{1}", [])
    with pytest.raises(ValueError, match="think_format"):
        RewardConfig(think_format="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grader"):
        RewardConfig(grader="llm")  # type: ignore[arg-type]


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, deepscaler.rewards; print('sympy' in sys.modules, 'math_verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
