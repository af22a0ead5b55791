import math

import pytest
import torch

from deepscaler.algorithms import (
    KL_ESTIMATORS,
    entropy_from_logits,
    get_kl_estimator,
    kl_abs,
    kl_k1,
    kl_k2,
    kl_k3,
    logprobs_from_logits,
    temperature_scale,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread


def test_kl_estimators_hand_values():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    assert kl_k1(logp, ref).tolist() == pytest.approx([0.5, -1.0])
    assert kl_abs(logp, ref).tolist() == pytest.approx([0.5, 1.0])
    assert kl_k2(logp, ref).tolist() == pytest.approx([0.125, 0.5])
    # k3 with δ = ref − logp: δ=−0.5 → e^−0.5 + 0.5 − 1; δ=1 → e − 2
    assert kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2])


def test_k3_is_clamped_to_ten_and_nonnegative():
    out = kl_k3(torch.tensor([-30.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert out.tolist() == [10.0, 0.0]
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_kl_registry_aliases_and_error():
    assert get_kl_estimator("low_var_kl") is get_kl_estimator("k3") is kl_k3
    assert get_kl_estimator("mse") is kl_k2 and get_kl_estimator("kl") is kl_k1
    assert {"k1", "k2", "k3", "low_var_kl", "mse", "kl", "abs"} <= set(KL_ESTIMATORS)
    with pytest.raises(ValueError, match=r"kl_estimator.*'low_var_kl'"):
        get_kl_estimator("full")


def test_logprobs_entropy_and_temperature():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probs 1/4, 3/4
    assert logprobs_from_logits(logits, torch.tensor([1])).item() == pytest.approx(math.log(0.75))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(h, rel=1e-6)
    assert entropy_from_logits(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3)
    # T=0.5 doubles the logits: probs 1/10, 9/10
    scaled = temperature_scale(logits, 0.5)
    assert logprobs_from_logits(scaled, torch.tensor([0])).item() == pytest.approx(math.log(0.1))
    with pytest.raises(ValueError, match="temperature"):
        temperature_scale(logits, 0.0)


def test_bf16_logits_are_upcast():
    logits = torch.randn(4, 50).bfloat16()
    assert logprobs_from_logits(logits, torch.zeros(4, dtype=torch.long)).dtype == torch.float32
    assert entropy_from_logits(logits).dtype == torch.float32
