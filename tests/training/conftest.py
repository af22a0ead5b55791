"""Fixtures shared by the packing and invariance tests."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def single_thread():
    """Tiny-tensor float64 work is several times faster on one thread than with OpenMP across busy cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _rms_norm_in_input_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Qwen2RMSNorm without its float32 upcast: computed in the input's dtype (float64 here)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@torch.no_grad()
def _rotary_in_input_dtype(self, x: torch.Tensor, position_ids: torch.Tensor):
    """Qwen2RotaryEmbedding with cos/sin computed in the input's dtype instead of float32."""
    freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(device=x.device, dtype=x.dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def run_in_float64(model: torch.nn.Module) -> torch.nn.Module:
    """Make a Qwen2 model compute every step in float64.

    ``model.double()`` alone is not enough: transformers' Qwen2 computes RMSNorm and the rotary cos/sin in
    float32 whatever the weights' dtype. Float32 results depend on the CPU's vector kernels and on tensor shapes
    (a position's cos lands in a vector lane or in the scalar tail depending on the sequence length), so two
    layouts of the same tokens differed by ~5e-8 on one CPU and by 0 on another. In float64 throughout, layouts
    differ only by float64 rounding (~1e-15 relative), far below the 1e-12 the tests allow.
    (Eager attention's softmax stays float32; tests that use eager state a float32 bound.)
    """
    model = model.double()
    for module in model.modules():
        if isinstance(module, Qwen2RMSNorm):
            module.forward = types.MethodType(_rms_norm_in_input_dtype, module)
        elif isinstance(module, Qwen2RotaryEmbedding):
            module.forward = types.MethodType(_rotary_in_input_dtype, module)
    return model


@pytest.fixture(scope="module")
def model64():
    """The tiny Qwen2 model computing in float64 throughout (see run_in_float64), sdpa attention (eager's
    softmax runs in float32 even for float64)."""
    model = run_in_float64(build_tiny_model(build_tiny_tokenizer(), seed=0)).eval()
    model.config._attn_implementation = "sdpa"
    return model
