"""Numeric precision policies: which dtype each part of training and rollout uses.

A policy names five dtypes (master weights, compute, gradient reduction, rollout, logits) plus the TF32 switch.
The attention resolver decides on the *compute* dtype (what the attention kernel really sees), not on the
master dtype, so fp32 master weights with bf16 autocast keep flash attention.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepscaler.precision.probe import EnvironmentProbe, probe_environment

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: importing deepscaler.precision stays free of torch (the
# CLI's subcommand modules import it at their top, and `deepscaler --help` must not load torch).

DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
_DTYPE_ALIASES = {
    "fp32": "float32", "float": "float32", "float32": "float32", "torch.float32": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16", "torch.bfloat16": "bfloat16",
    "fp16": "float16", "half": "float16", "float16": "float16", "torch.float16": "float16",
    "fp64": "float64", "double": "float64", "float64": "float64", "torch.float64": "float64",
}


def canonical_dtype(dtype: Any) -> str:
    """'bf16' / torch.bfloat16 / 'torch.bfloat16' -> 'bfloat16'. Raises ValueError naming the valid spellings."""
    key = str(dtype).lower()
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPE_ALIASES.values()))}")
    return _DTYPE_ALIASES[key]


def to_torch_dtype(dtype: Any) -> torch.dtype:
    """Canonical dtype name -> torch.dtype (imports torch lazily)."""
    import torch

    return getattr(torch, canonical_dtype(dtype))


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which dtype each stage uses. Frozen; derive variants with ``policy.replace(...)``."""

    name: str
    """Preset name (``bf16-mixed``, ``fp16-mixed``, ``fp32``, ``fp32-fast``) or a custom label."""
    param_dtype: str = "float32"
    """Master weights and optimizer state dtype (what the model is loaded in for training)."""
    compute_dtype: str = "float32"
    """dtype of matmuls and attention in the trainer forward (autocast / FSDP ``param_dtype``)."""
    reduce_dtype: str = "float32"
    """dtype of gradient all-reduce (FSDP ``reduce_dtype``)."""
    rollout_dtype: str = "float32"
    """dtype vLLM runs the rollout model in (``vllm.LLM(dtype=...)``)."""
    logits_dtype: str = "float32"
    """dtype of the LM head output used for log-probs; float32 keeps log-softmax exact (fp32 LM head)."""
    fp32_lm_head: bool = True
    """Run the LM head matmul itself in float32 (not only upcast its output); reduces rollout/trainer mismatch."""
    allow_tf32: bool = False
    """Allow TF32 tensor-core matmuls for float32 compute. Only ``fp32-fast`` sets it: TF32 attention has ~1e-3
    relative error, worse than fp16 attention, so it is never switched on silently."""
    loss_scaling: bool = False
    """Use a dynamic loss/grad scaler (needed for float16 compute: its max is 65504)."""
    description: str = ""
    """One-line explanation shown by ``deepscaler doctor``."""

    def __post_init__(self) -> None:
        for field_name in ("param_dtype", "compute_dtype", "reduce_dtype", "rollout_dtype", "logits_dtype"):
            object.__setattr__(self, field_name, canonical_dtype(getattr(self, field_name)))

    def replace(self, **changes: Any) -> PrecisionPolicy:
        """A copy with some fields changed (e.g. ``rollout_dtype="float32"`` for an fp32 rollout engine)."""
        return dataclasses.replace(self, **changes)

    @property
    def is_mixed(self) -> bool:
        """True when the forward runs in a lower dtype than the master weights."""
        return self.compute_dtype != self.param_dtype

    def precision_class(self, engine: str = "trainer") -> str:
        """'fp32' | 'tf32' | 'bf16' | 'fp16': the accuracy class of attention for ``engine`` (sets self-check
        tolerances). Rollout ignores ``allow_tf32`` (vLLM owns its matmul flags)."""
        dtype = self.compute_dtype if engine == "trainer" else self.rollout_dtype
        if dtype == "bfloat16":
            return "bf16"
        if dtype == "float16":
            return "fp16"
        return "tf32" if (self.allow_tf32 and engine == "trainer") else "fp32"

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in the compute dtype when mixed, else a no-op context."""
        import torch

        if not self.is_mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=to_torch_dtype(self.compute_dtype))

    def apply_matmul_flags(self) -> None:
        """Set PyTorch's float32 matmul precision from ``allow_tf32`` (explicitly both ways, so a previous
        fp32-fast run in the same process cannot leak TF32 into an exact one)."""
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.set_float32_matmul_precision("high" if self.allow_tf32 else "highest")

    def fsdp_mixed_precision_kwargs(self) -> dict[str, torch.dtype]:
        """kwargs for FSDP2 ``MixedPrecisionPolicy`` (param_dtype, reduce_dtype)."""
        return {"param_dtype": to_torch_dtype(self.compute_dtype), "reduce_dtype": to_torch_dtype(self.reduce_dtype)}


@dataclass(frozen=True)
class MatmulFlags:
    """PyTorch's process-wide float32 matmul settings: what ``apply_matmul_flags`` sets and what an in-process
    vLLM worker resets (it calls ``torch.set_float32_matmul_precision("highest")`` when it starts)."""

    float32_matmul_precision: str
    cuda_matmul_allow_tf32: bool
    cudnn_allow_tf32: bool

    @classmethod
    def capture(cls) -> MatmulFlags:
        import torch

        return cls(torch.get_float32_matmul_precision(), bool(torch.backends.cuda.matmul.allow_tf32),
                   bool(torch.backends.cudnn.allow_tf32))

    def apply(self) -> None:
        import torch

        # set_float32_matmul_precision also sets cuda.matmul.allow_tf32, so the explicit flags go last
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_allow_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32


PRESETS: dict[str, PrecisionPolicy] = {
    "bf16-mixed": PrecisionPolicy(
        name="bf16-mixed", param_dtype="float32", compute_dtype="bfloat16", reduce_dtype="float32",
        rollout_dtype="bfloat16", logits_dtype="float32",
        description="fp32 master weights, bf16 compute (autocast/FSDP), fp32 grad reduce, bf16 rollout; "
                    "GPU default on sm80+"),
    "fp16-mixed": PrecisionPolicy(
        name="fp16-mixed", param_dtype="float32", compute_dtype="float16", reduce_dtype="float32",
        rollout_dtype="float16", logits_dtype="float32", loss_scaling=True,
        description="fp32 master weights, fp16 compute with loss scaling, fp16 rollout: 8x finer mantissa than "
                    "bf16, smaller rollout/trainer mismatch (arXiv 2510.26788); overflow above 65504"),
    "fp32": PrecisionPolicy(
        name="fp32", description="float32 everywhere, TF32 off: exact reference numerics, CPU default"),
    "fp32-fast": PrecisionPolicy(
        name="fp32-fast", allow_tf32=True,
        description="float32 storage with TF32 matmuls (only when asked for): ~1e-3 relative attention error, "
                    "worse than fp16"),
}


def get_policy(name: str | PrecisionPolicy) -> PrecisionPolicy:
    """The preset called ``name`` (a PrecisionPolicy passes through). Raises ValueError listing the presets."""
    if isinstance(name, PrecisionPolicy):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown precision preset {name!r}; choose one of {sorted(PRESETS)} "
                         "(config field: precision)")
    return PRESETS[key]


def default_policy_name(probe: EnvironmentProbe | None = None) -> tuple[str, str]:
    """(preset name, reason) for the device in ``probe`` (probed when None)."""
    if probe is None:
        probe = probe_environment()
    if probe.device_type == "cuda":
        cc = probe.compute_capability
        if probe.bf16_supported:
            return "bf16-mixed", f"CUDA GPU {probe.gpu_name or ''} (sm{_cc(cc)}) supports bf16".replace("  ", " ")
        return "fp16-mixed", (f"CUDA GPU sm{_cc(cc)} has no bf16 tensor cores (needs sm80+); fp16 with loss "
                              "scaling instead")
    return "fp32", f"device {probe.device_type}: no fast 16-bit attention kernels, float32 is exact and fastest"


def _cc(cc: tuple[int, int] | None) -> str:
    return f"{cc[0]}{cc[1]}" if cc else "?"
