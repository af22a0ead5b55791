"""logprob_mismatch: exact values on constructed inputs, masking, thresholds."""

from __future__ import annotations

import math

import pytest
import torch

from deepscaler.precision import assess_mismatch, logprob_mismatch

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread


def test_identical_logprobs_give_zero_mismatch():
    logp = torch.log(torch.rand(3, 5) * 0.9 + 0.05)
    metrics = logprob_mismatch(logp, logp.clone(), torch.ones(3, 5, dtype=torch.bool))
    assert metrics["rollout/num_tokens"] == 15
    for key in ("logprob_diff_mean", "logprob_diff_max", "prob_diff_mean", "kl_k1", "kl_k3"):
        assert metrics[f"rollout/{key}"] == 0.0


def test_known_shift_and_masked_garbage():
    rollout = torch.log(torch.tensor([[0.5, 0.25, 0.1, 0.9]]))
    delta = torch.tensor([[0.1, -0.2, 0.0, 7.0]])  # last token masked out: must not count
    mask = torch.tensor([[1, 1, 1, 0]])
    metrics = logprob_mismatch(rollout + delta, rollout, mask)
    d = [0.1, -0.2, 0.0]
    assert metrics["rollout/num_tokens"] == 3
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(sum(abs(x) for x in d) / 3)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.2)
    assert metrics["rollout/kl_k1"] == pytest.approx(-sum(d) / 3)
    assert metrics["rollout/kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in d) / 3)
    probs = [0.5, 0.25, 0.1]
    assert metrics["rollout/prob_diff_mean"] == pytest.approx(
        sum(abs(p * math.exp(x) - p) for p, x in zip(probs, d, strict=True)) / 3)


def test_k3_is_nonnegative_and_empty_mask_is_zero():
    a, b = torch.randn(4, 6) - 2, torch.randn(4, 6) - 2
    assert logprob_mismatch(a, b, torch.ones(4, 6))["rollout/kl_k3"] >= 0
    empty = logprob_mismatch(a, b, torch.zeros(4, 6))
    assert empty["rollout/num_tokens"] == 0 and empty["rollout/kl_k3"] == 0.0


def test_shape_mismatch_names_the_inputs():
    with pytest.raises(ValueError, match="same \\(B, T\\) shape"):
        logprob_mismatch(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_assess_uses_verl_thresholds():
    assert assess_mismatch({"rollout/prob_diff_mean": 0.001})[0] == "ok"
    assert assess_mismatch({"rollout/prob_diff_mean": 0.007})[0] == "warn"
    level, reason = assess_mismatch({"rollout/prob_diff_mean": 0.02})
    assert level == "alarm" and "fp16-mixed" in reason
