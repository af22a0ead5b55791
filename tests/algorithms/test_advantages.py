import math

import pytest
import torch

from deepscaler.algorithms import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    drgrpo_advantages,
    get_advantage_estimator,
    group_index,
    group_mean_std,
    grpo_advantages,
    rloo_advantages,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread


def test_grpo_spec_example_one_correct_of_eight():
    # Spec §4.2: n=8, one correct → μ=0.125, σ=0.354 (Bessel) → +2.47 / −0.354.
    rewards = torch.tensor([1.0] + [0.0] * 7)
    adv = grpo_advantages(rewards, ["p"] * 8)
    sigma = math.sqrt(0.125 * 0.875 * 8 / 7)
    assert sigma == pytest.approx(0.35355, abs=1e-5)
    assert adv[0].item() == pytest.approx(0.875 / (sigma + 1e-6), rel=1e-6)
    assert adv[0].item() == pytest.approx(2.47, abs=5e-3)
    assert adv[1:].tolist() == pytest.approx([-0.125 / (sigma + 1e-6)] * 7, rel=1e-6)
    assert adv[1].item() == pytest.approx(-0.354, abs=1e-3)


def test_grpo_groups_are_independent_and_interleaving_does_not_matter():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0, 5.0, 0.0])
    groups = ["a", "b", "a", "b", "a", "b"]  # a: 1,3,5 (μ3, σ2); b: 0,1,0 (μ1/3, σ=sqrt(1/3))
    adv = grpo_advantages(rewards, groups, eps=0.0)
    assert adv[[0, 2, 4]].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    sb = math.sqrt(1 / 3)
    assert adv[[1, 3, 5]].tolist() == pytest.approx([-1 / 3 / sb, 2 / 3 / sb, -1 / 3 / sb])


def test_constant_group_gets_zero_and_singleton_keeps_raw_reward():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.7]), [0, 0, 0, 1])
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    # singleton: μ=0, σ=1 → (0.7 − 0) / (1 + 1e-6)
    assert adv[3].item() == pytest.approx(0.7 / (1 + 1e-6), rel=1e-7)
    mean, std = group_mean_std(torch.tensor([2.0]), ["x"])
    assert (mean.item(), std.item()) == (0.0, 1.0)


def test_drgrpo_does_not_divide_by_std_and_rloo_uses_leave_one_out_mean():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 4.0])
    groups = torch.tensor([7, 7, 7, 7, 9])
    assert drgrpo_advantages(rewards, groups).tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 4.0])
    # RLOO: r_i − mean(others): 1 − 0 = 1, 0 − 1/3
    assert rloo_advantages(rewards, groups).tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 4.0])


def test_group_index_dense_in_first_appearance_order():
    index, count = group_index(["u2", "u1", "u2", "u3"])
    assert index.tolist() == [0, 1, 0, 2] and count == 3


def test_registry_selects_by_name_and_lists_valid_names():
    assert get_advantage_estimator("grpo") is grpo_advantages
    assert get_advantage_estimator("drgrpo") is drgrpo_advantages
    assert set(ADVANTAGE_ESTIMATORS) >= {"grpo", "drgrpo"}
    with pytest.raises(ValueError, match=r"advantage_estimator.*'grpo'.*'drgrpo'"):
        get_advantage_estimator("gae2")


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(torch.zeros(2, 3), [0, 0])
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.zeros(3), [0, 0])


def test_broadcast_to_tokens_masks_padding():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
