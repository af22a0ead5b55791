"""load_causal_lm: the tiny fp32 model loads through the resolver without any flash-attention warning."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from deepscaler.precision import AttentionBackendError, AttentionDecision, get_policy
from deepscaler.precision.loading import load_causal_lm, suppress_flash_dtype_false_alarm

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

FA_WARNING = ("Flash Attention 2 only supports torch.float16 and torch.bfloat16 dtypes, but the current dype in "
              "Qwen2ForCausalLM is torch.float32.")


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """transformers' root logger does not propagate to pytest's caplog: attach a handler directly."""
    handler = _Capture()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield handler.messages
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.mark.parametrize("preset", ["fp32", "bf16-mixed"])
def test_tiny_model_loads_without_flash_attention_warnings(tiny_model_dir, transformers_log, preset):
    policy = get_policy(preset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, decision = load_causal_lm(tiny_model_dir, policy)
    assert decision.backend == "sdpa" and decision.engine == "trainer"
    assert model.config._attn_implementation == "sdpa"
    assert next(model.parameters()).dtype == torch.float32  # master weights in the policy's param dtype
    texts = transformers_log + [str(w.message) for w in caught]
    assert not [t for t in texts if "Flash Attention" in t or "FlashAttention" in t or "flash_attn" in t], texts
    ids = torch.tensor([[1, 5, 9, 12, 40, 41]])
    with torch.no_grad(), policy.autocast("cpu"):
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert logits.dtype == (torch.bfloat16 if policy.is_mixed else torch.float32)


def test_the_naive_fp32_flash_attention_load_is_what_the_resolver_avoids(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    with pytest.raises((ImportError, ValueError)):
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                             attn_implementation="flash_attention_2")


def test_incompatible_explicit_request_with_error_stops_before_loading(tiny_model_dir):
    with pytest.raises(AttentionBackendError, match="flash_attention_2"):
        load_causal_lm(tiny_model_dir, "fp32", request="flash_attention_2", on_incompatible="error")


def test_false_alarm_filter_only_for_decisions_that_prove_16bit_compute(transformers_log):
    from transformers.modeling_utils import logger as hf_logger

    mixed = AttentionDecision("trainer", "flash_attention_2", "test", compute_dtype="bfloat16",
                              notes=["master weights are float32, so transformers warns at load that flash attention "
                                     "needs fp16/bf16; ..."])
    exact = AttentionDecision("trainer", "sdpa", "test", compute_dtype="float32")
    with suppress_flash_dtype_false_alarm(mixed):
        hf_logger.warning(FA_WARNING)
        hf_logger.warning("an unrelated warning")
    with suppress_flash_dtype_false_alarm(exact):
        hf_logger.warning(FA_WARNING)
    hf_logger.warning(FA_WARNING)
    assert transformers_log.count(FA_WARNING) == 2  # filtered only inside the mixed-precision load
    assert "an unrelated warning" in transformers_log
