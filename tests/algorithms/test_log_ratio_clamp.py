"""The ±20 log-ratio clamp before exp (as verl's core_algos.py) and NaN-free gradients on masked pads.

Tolerances: float64 runs the whole path in float64 (a few roundings of O(1) values: rel 1e-12); float32 does a
handful of float32 operations on O(1) values, each within half an ulp (2^-24 ≈ 6e-8): rel 1e-6 covers them.
"""

import math

import pytest
import torch

from deepscaler.algorithms import LossNormalizer, PolicyLossConfig, compute_policy_loss, kl_k3
from deepscaler.algorithms.kl import LOG_RATIO_CLAMP, clamp_log_ratio
from deepscaler.algorithms.policy_loss import ppo_clip_loss, truncated_importance_weights

DTYPES = [(torch.float64, 1e-12), (torch.float32, 1e-6)]


@pytest.mark.parametrize("dtype,rel", DTYPES)
def test_k3_far_from_reference_has_verls_value_and_a_finite_gradient(dtype, rel):
    logp = torch.tensor([-100.0, -1.0], dtype=dtype, requires_grad=True)
    ref = torch.tensor([-1.0, -1.5], dtype=dtype)
    value = kl_k3(logp, ref)
    assert value.tolist() == pytest.approx([10.0, math.exp(-0.5) - 0.5], rel=rel)
    value.sum().backward()
    # d/dlogp (e^δ − δ − 1) with δ = ref − logp is 1 − e^δ; δ = 99 lies beyond the clamp: gradient 0
    assert logp.grad.tolist() == pytest.approx([0.0, 1.0 - math.exp(-0.5)], rel=rel, abs=0.0)
    assert torch.isfinite(logp.grad).all()


@pytest.mark.parametrize("dtype,rel", DTYPES)
def test_ppo_loss_at_log_ratio_95_is_finite_with_zero_gradient_there(dtype, rel):
    logp = torch.tensor([[0.0, -1.0]], dtype=dtype, requires_grad=True)
    old = torch.tensor([[-95.0, -1.0]], dtype=dtype)
    mask = torch.ones(1, 2)
    loss, _ = compute_policy_loss(logp, old, torch.tensor([1.0], dtype=dtype), mask,
                                  LossNormalizer.from_response_mask(mask), PolicyLossConfig())
    # token 0: ratio e^20 clipped to 1.2 → −1.2; token 1: ratio 1 → −1; token mean −1.1
    assert loss.item() == pytest.approx(-1.1, rel=rel)
    loss.backward()
    assert logp.grad.tolist() == [[0.0, pytest.approx(-0.5, rel=rel)]]


@pytest.mark.parametrize("dtype,rel", DTYPES)
def test_large_finite_ratio_with_negative_advantage_is_bounded_as_verl(dtype, rel):
    logp = torch.tensor([[25.0]], dtype=dtype, requires_grad=True)
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 1, dtype=dtype), torch.tensor([-1.0], dtype=dtype))
    assert loss.item() == pytest.approx(math.exp(LOG_RATIO_CLAMP), rel=rel)  # 4.85e8, not e^25 = 7.2e10
    loss.sum().backward()
    assert logp.grad.item() == 0.0


@pytest.mark.parametrize("dtype,rel", DTYPES)
def test_values_below_the_clamp_are_unchanged(dtype, rel):
    torch.manual_seed(0)
    delta = (torch.rand(1000, dtype=torch.float64) * 39.0 - 19.5).to(dtype)
    assert torch.equal(clamp_log_ratio(delta), delta)
    logp, ref = torch.zeros(1000, dtype=dtype), delta
    expected = (torch.exp(delta) - delta - 1).clamp(-10, 10)
    assert torch.equal(kl_k3(logp, ref), expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype,rel", DTYPES)
def test_masked_pads_cannot_make_the_gradient_nan(dtype, rel, bad):
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    clean_logp = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, 0.0, 0.0]], dtype=dtype)
    old = torch.tensor([[-1.2, -0.4, bad], [-1.9, bad, -200.0]], dtype=dtype)
    ref = torch.tensor([[-1.1, -0.6, bad], [-2.5, 300.0, bad]], dtype=dtype)
    rollout = torch.tensor([[-1.2, -0.4, bad], [-1.9, bad, bad]], dtype=dtype)
    config = PolicyLossConfig(kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0)
    norm = LossNormalizer.from_response_mask(mask)

    def run(logp_pads, entropy_pads):
        logp = torch.where(mask.bool(), clean_logp, torch.tensor(logp_pads, dtype=dtype)).requires_grad_()
        entropy = torch.where(mask.bool(), torch.ones_like(clean_logp), torch.tensor(entropy_pads, dtype=dtype))
        entropy.requires_grad_()
        loss, metrics = compute_policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=dtype), mask, norm, config,
                                            ref_logprobs=ref, entropy=entropy, rollout_logprobs=rollout)
        loss.backward()
        return loss, metrics, logp.grad, entropy.grad

    reference = run(0.0, 0.0)
    dirty = run(bad, bad)
    assert torch.isfinite(dirty[2]).all() and torch.isfinite(dirty[3]).all()
    assert dirty[0].item() == pytest.approx(reference[0].item(), rel=rel)
    assert torch.equal(dirty[2], reference[2]) and torch.equal(dirty[3], reference[3])
    assert (dirty[2][~mask.bool()] == 0).all()
    assert all(math.isfinite(v) for v in dirty[1].values())


def test_tis_weights_of_an_overflowing_ratio_stay_at_the_cap():
    weights = truncated_importance_weights(torch.tensor([0.0, 0.0]), torch.tensor([-1000.0, 0.0]), cap=2.0)
    assert weights.tolist() == [2.0, 1.0]
