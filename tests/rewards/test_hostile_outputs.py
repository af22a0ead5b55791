"""Pathological model outputs never hang or crash the reward path, and unusual but valid answer forms grade
right (spacing commands in numbers, \\textnormal units, \\boxed without braces, ± in lists, set operations)."""

from __future__ import annotations

import time

import pytest

from deepscaler.rewards import RewardConfig, close_pool, is_equivalent, math_reward, score_responses
from deepscaler.rewards.extraction import _boxed_spans, extract_final_answer
from deepscaler.rewards.hostile import CATEGORIES, GOLDS, hostile_responses
from deepscaler.rewards.structures import evaluate_set_operations
from deepscaler.rewards.timeouts import GradingTimeout, time_limit


def test_generator_is_deterministic_and_covers_every_category():
    items = hostile_responses(1000)
    assert len(items) == 1000 and items == hostile_responses(1000)
    assert {category for category, _ in items} == set(CATEGORIES)
    assert max(len(response) for _, response in items) >= 1_000_000
    assert any(response.count("\\boxed{") >= 10_000 for _, response in items)


def test_ten_thousand_nested_boxes_are_read_in_one_pass():
    depth = 10_000
    text = "\\boxed{" * depth + "1" + "}" * depth
    (span,) = _boxed_spans(text)  # the outer box only
    assert span[0] == 0 and span[1] == len(text)
    assert extract_final_answer("\\boxed{" * depth + "1") is None  # never closed: no answer


def test_hostile_responses_through_the_pool_give_valid_rewards_and_the_pool_survives():
    items = hostile_responses(200, seed=1)
    golds = [GOLDS[i % len(GOLDS)] for i in range(len(items))]
    config = RewardConfig(timeout_s=2.0, pool_grace_s=1.0, incorrect_reward=-1.0, format_error_reward=-0.5)
    try:
        rewards = score_responses([r for _, r in items], golds, config, num_workers=2)
        assert len(rewards) == len(items)
        assert set(rewards) <= {1.0, -1.0, -0.5}
        # the pool still grades normally afterwards
        assert score_responses(["<think>x</think>\\boxed{7}", "<think>x</think>\\boxed{8}"], ["7", "7"], config,
                               num_workers=2) == [1.0, -1.0]
    finally:
        close_pool()


def test_a_swallowed_timeout_fires_again():
    """A library's bare ``except:`` that eats the first GradingTimeout must not lift the bound."""
    swallowed = []
    with pytest.raises(GradingTimeout), time_limit(0.05):
        try:
            while True:
                pass
        except BaseException as caught:  # noqa: BLE001 - what a careless library does
            swallowed.append(caught)
        deadline = time.monotonic() + 30.0  # only reached when the timer does not fire again
        while time.monotonic() < deadline:
            pass
        pytest.fail("the time limit did not fire again after its first GradingTimeout was swallowed")
    assert len(swallowed) == 1 and isinstance(swallowed[0], GradingTimeout)


@pytest.mark.parametrize("pred,gold,label", [
    (r"1\,000", "1000", True), (r"1{,}000", "1000", True), (r"12\,345\,678", "12345678", True),
    (r"5\textnormal{ cm}", "5", True), (r"\textnormal{5 inches}", "5", True), (r"7\textnormal{ cm}", "5", False),
    (r"x = \pm 2", "-2, 2", True), (r"\pm 3, 1", "-3, 1, 3", True), (r"\pm 3, 1", "3, 1", False),
    (r"\{1,2\} \cup \{3\}", r"\{1,2,3\}", True), (r"\{1,2,3\} \setminus \{2\}", r"\{1,3\}", True),
    (r"\{1,2,3\} \cap \{2,3,4\}", r"\{2,3\}", True), (r"\{1,2\} \cup \{4\}", r"\{1,2,3\}", False),
    (r"[0,2] \cap [1,3]", "[1,2]", True), (r"(0,2] \cap [1,3)", "[1,2]", True), (r"[0,2] \cap [1,3]", "(1,2)", False),
])
def test_unusual_valid_forms(pred, gold, label):
    assert is_equivalent(pred, gold) is label


def test_set_operations_evaluate_only_what_they_can():
    assert evaluate_set_operations(r"\{1,2\} \cap \{3\}") == r"\emptyset"
    assert evaluate_set_operations(r"[0,1) \cap [1,2]") == r"\emptyset"
    assert evaluate_set_operations(r"(0,1) \cup (2,3)") == r"(0,1) \cup (2,3)"  # a union of intervals stays
    assert evaluate_set_operations(r"\{a\} \cup \{b\}") == r"\{a\} \cup \{b\}"  # symbols stay


@pytest.mark.parametrize("response,gold,reward", [
    (r"<think>x</think>The answer is \boxed 7", "7", 1.0), (r"<think>x</think>Thus $\boxed 42$.", "42", 1.0),
    (r"<think>x</think>\[\boxed 5\]", "5", 1.0), (r"<think>x</think>Thus \boxed 8.", "7", 0.0),
    (r"<think>x</think>\boxed {9}", "9", 1.0),
])
def test_boxed_without_braces(response, gold, reward):
    assert math_reward(response, gold) == reward
