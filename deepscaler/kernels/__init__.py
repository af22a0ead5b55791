"""Our own kernels: an fp32-accurate flash attention in Triton (forward + backward, GQA, varlen, causal).

Importing this package imports torch only: triton, the kernels and transformers are imported on first use.

Public API:
    - :func:`is_available` -> ``(ok, reason)``: can the kernel run here (CUDA sm80+, or Triton's interpreter)?
    - :func:`flash_attention`: the differentiable op (see its docstring for shapes and precisions).
    - :func:`register_transformers_attention`: registers ``attn_implementation="deepscaler_flash"``;
      :func:`set_attention_precision` picks its dot precision for an fp32 model.
    - :data:`PRECISIONS`, :data:`FP32_ACCURATE_PRECISIONS`, :data:`ATTENTION_NAME`.
"""

from __future__ import annotations

import os

import torch

from deepscaler.kernels.flash_attention import FP32_ACCURATE_PRECISIONS, PRECISIONS, flash_attention
from deepscaler.kernels.hf_attention import (
    ATTENTION_NAME,
    register_transformers_attention,
    set_attention_precision,
)

MIN_CAPABILITY = (8, 0)


def _interpreter_requested(env: dict[str, str] | None = None) -> bool:
    value = (env if env is not None else os.environ).get("TRITON_INTERPRET", "0")
    return value.strip().lower() in ("1", "true", "on", "yes")


def is_available(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether the Triton flash kernel can run in this process, and why (or why not).

    True on an NVIDIA GPU of compute capability >= 8.0 (bf16 tensor cores are needed for the split-precision
    dots) with triton importable, or when ``TRITON_INTERPRET=1`` is set (CPU interpreter: exact but slow,
    for tests). ``env`` replaces ``os.environ`` for the interpreter check (tests force each branch with it).
    """
    try:
        import triton  # local: triton is optional; its absence is an answer here, not an import error
    except ImportError as exc:
        return False, f"triton is not importable ({exc}); install it with `pip install triton`"
    if _interpreter_requested(env):
        return True, (f"triton {triton.__version__} CPU interpreter (TRITON_INTERPRET=1): exact but slow, "
                      "for tests only")
    if not torch.cuda.is_available():
        return False, ("no CUDA GPU; the kernel needs an NVIDIA GPU with compute capability >= 8.0 "
                       "(on CPU it runs only under TRITON_INTERPRET=1, for tests)")
    if torch.version.hip is not None:
        return False, "ROCm GPU: the kernel is validated on NVIDIA sm80+ only"
    major, minor = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    if (major, minor) < MIN_CAPABILITY:
        return False, (f"{name} is sm{major}{minor}; the kernel needs sm80+ for bf16/tf32 tensor cores "
                       "(use SDPA EFFICIENT for fp32 here)")
    return True, f"triton {triton.__version__} on {name} (sm{major}{minor})"


__all__ = ["ATTENTION_NAME", "FP32_ACCURATE_PRECISIONS", "PRECISIONS", "flash_attention", "is_available",
           "register_transformers_attention", "set_attention_precision"]
