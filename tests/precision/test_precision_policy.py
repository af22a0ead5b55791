"""Precision presets and the device default."""

from __future__ import annotations

import pytest
import torch

from deepscaler.precision import EnvironmentProbe, PrecisionPolicy, default_policy_name, get_policy

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread


def test_presets_encode_master_compute_reduce_rollout_logits():
    bf16 = get_policy("bf16-mixed")
    assert (bf16.param_dtype, bf16.compute_dtype, bf16.reduce_dtype, bf16.rollout_dtype, bf16.logits_dtype) == (
        "float32", "bfloat16", "float32", "bfloat16", "float32")
    assert bf16.is_mixed and not bf16.allow_tf32
    fp16 = get_policy("fp16_mixed")
    assert fp16.compute_dtype == fp16.rollout_dtype == "float16" and fp16.loss_scaling
    exact, fast = get_policy("fp32"), get_policy("fp32-fast")
    assert not exact.is_mixed and not exact.allow_tf32 and fast.allow_tf32
    assert get_policy(bf16) is bf16


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="bf16-mixed"):
        get_policy("int8")


def test_dtype_spellings_and_replace():
    policy = PrecisionPolicy(name="custom", compute_dtype="bf16", rollout_dtype=torch.float16)
    assert policy.compute_dtype == "bfloat16" and policy.rollout_dtype == "float16"
    assert policy.replace(rollout_dtype="fp32").rollout_dtype == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        PrecisionPolicy(name="bad", compute_dtype="fp8")


def test_autocast_only_when_mixed():
    with get_policy("bf16-mixed").autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with get_policy("fp32").autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert get_policy("bf16-mixed").fsdp_mixed_precision_kwargs() == {"param_dtype": torch.bfloat16,
                                                                     "reduce_dtype": torch.float32}


def test_apply_matmul_flags_sets_both_ways():
    try:
        get_policy("fp32-fast").apply_matmul_flags()
        assert torch.get_float32_matmul_precision() == "high"
        get_policy("fp32").apply_matmul_flags()
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    finally:
        get_policy("fp32").apply_matmul_flags()


@pytest.mark.parametrize("probe, expected", [
    (EnvironmentProbe(device_type="cpu"), "fp32"),
    (EnvironmentProbe(device_type="cuda", gpu_name="NVIDIA H100", compute_capability=(9, 0)), "bf16-mixed"),
    (EnvironmentProbe(device_type="cuda", gpu_name="NVIDIA A100", compute_capability=(8, 0)), "bf16-mixed"),
    (EnvironmentProbe(device_type="cuda", gpu_name="Tesla T4", compute_capability=(7, 5)), "fp16-mixed"),
])
def test_default_policy_per_device(probe, expected):
    name, reason = default_policy_name(probe)
    assert name == expected and reason
