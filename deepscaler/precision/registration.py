"""deepscaler's attention kernel as a transformers attention backend: its name, and its registration on first use."""

from __future__ import annotations

OUR_KERNEL = "deepscaler_flash"
"""The name under which deepscaler's Triton kernel is registered in transformers' AttentionInterface."""


def ensure_backend_registered(backend: str) -> None:
    """Make sure transformers knows ``backend``; registers deepscaler's Triton kernel on first use."""
    if backend != OUR_KERNEL:
        return
    from transformers import AttentionInterface  # local: importing transformers costs seconds at start-up

    if OUR_KERNEL in AttentionInterface():
        return
    from deepscaler.kernels import register_transformers_attention  # local: imports Triton where installed

    register_transformers_attention()
    if OUR_KERNEL not in AttentionInterface():
        raise RuntimeError(f"attention backend {OUR_KERNEL!r} was chosen but deepscaler.kernels did not register "
                           "it with transformers' AttentionInterface; set attention_backend='sdpa' to bypass")
