import pytest
import torch

from deepscaler.algorithms import filter_constant_groups, overlong_filter_mask, overlong_reward_penalty

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread


def test_dynamic_sampling_drops_constant_groups_and_counts_them():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5])
    groups = ["none1", "none1", "mixed", "mixed", "all", "mixed", "none2", "none2", "single"]
    # none1 {0,0} and none2 {0,0}: solve_none; mixed {1,1,0}: kept; all {1}: a singleton, solve_all;
    # single {0.5}: constant (singleton) but neither solved nor unsolved.
    result = filter_constant_groups(rewards, groups)
    assert result.keep.tolist() == [False, False, True, True, False, True, False, False, False]
    assert result.num_groups == 5 and result.num_dropped_groups == 4
    assert result.solve_none == 2 and result.solve_all == 1


def test_dynamic_sampling_tolerance():
    result = filter_constant_groups(torch.tensor([1.0, 1.0 + 1e-9, 0.2, 0.3]), [0, 0, 1, 1], tol=1e-6)
    assert result.keep.tolist() == [False, False, True, True]


def test_overlong_filter_zeroes_truncated_rows():
    mask = torch.ones(3, 4)
    out = overlong_filter_mask(mask, torch.tensor([False, True, False]))
    assert out.sum(-1).tolist() == [4.0, 0.0, 4.0]


def test_overlong_reward_penalty_dapo_shape():
    lengths = torch.tensor([10, 60, 70, 90, 100, 130])
    # Lmax 100, buffer 40 → zone starts at 60; linear to −factor at 100; −factor beyond
    out = overlong_reward_penalty(lengths, 100, 40, penalty_factor=0.5)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.125, -0.375, -0.5, -0.5])
    with pytest.raises(ValueError, match="overlong_buffer_length"):
        overlong_reward_penalty(lengths, 100, 0)
