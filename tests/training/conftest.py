"""Fixtures shared by the packing and invariance tests."""

from __future__ import annotations

import pytest
import torch

from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def single_thread():
    """Tiny-tensor float64 work is several times faster on one thread than with OpenMP across busy cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model64():
    """The tiny Qwen2 model in float64, sdpa attention (eager's softmax runs in float32 even for float64)."""
    model = build_tiny_model(build_tiny_tokenizer(), seed=0).double().eval()
    model.config._attn_implementation = "sdpa"
    return model
