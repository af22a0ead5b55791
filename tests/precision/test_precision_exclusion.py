"""Backends excluded after a kernel fault (``resolve_attention(..., exclude=)``) are never chosen: auto takes the
next compatible one and says why the excluded one lost; an explicit request of it falls back (or errors)."""

from __future__ import annotations

import pytest

from deepscaler.precision import QWEN2_1_5B, AttentionBackendError, EnvironmentProbe, resolve_attention

H100 = EnvironmentProbe(device_type="cuda", gpu_name="NVIDIA H100", compute_capability=(9, 0),
                        torch_version="2.11.0", transformers_version="5.19.0", vllm_version="0.32.0",
                        triton_version="3.6.0", flash_attn_version="2.8.3")
WHY = "kernel_fault at step 7 (update), see 20261204T180000.json"


@pytest.mark.parametrize("engine", ["trainer", "rollout"])
def test_auto_skips_an_excluded_backend_and_says_why(engine):
    first = resolve_attention(engine, QWEN2_1_5B, "bf16-mixed", env=H100)
    second = resolve_attention(engine, QWEN2_1_5B, "bf16-mixed", env=H100, exclude={first.backend: WHY})
    assert second.backend not in (None, first.backend)
    assert dict(second.rejected)[first.backend] == f"excluded: {WHY}"


def test_an_explicit_request_of_an_excluded_backend_falls_back_or_errors():
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", request="flash_attention_2", env=H100,
                                 exclude={"flash_attention_2": WHY})
    assert decision.fell_back and decision.backend != "flash_attention_2" and WHY in decision.reason
    with pytest.raises(AttentionBackendError, match="excluded"):
        resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", request="flash_attention_2", env=H100,
                          on_incompatible="error", exclude={"flash_attention_2": WHY})
