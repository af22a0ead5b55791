"""Run an attention backend on random inputs and compare it with a float64 reference.

The backend is called exactly as transformers calls it (through ``AttentionInterface``), with the model's head
dim and GQA ratio, in two layouts: a causal batch, and one packed row of several documents (block-diagonal
causal: position ids for flash-style kernels, a materialised mask for eager/sdpa/flex). The reference is
computed in float64 from the *same rounded inputs*, so the error measures the kernel and its output rounding,
not input quantisation.

Tolerances (relative Frobenius error ||out - ref|| / ||ref||), per precision class, with the published H100
measurements they are set against:
- fp32 1e-5: exact kernels measure 2e-7..5.5e-7 (SDPA EFFICIENT 5.4e-7, split-precision Triton bf16x6 2.1e-7);
  1e-5 still admits a bf16x3 kernel (5.5e-6) but fails anything that rounds through TF32 (1.3e-3).
- tf32 5e-3: TF32 attention measures 1.3e-3 (flex/Triton tf32), MATH+TF32 3.9e-4; about 4x headroom.
- fp16 2e-3: fp16 attention measures 2.6e-4, dominated by rounding the output to fp16 (unit roundoff 4.9e-4);
  a kernel with a real bug (wrong scale, dropped block) is off by >= 1e-2.
- bf16 1e-2: bf16 attention measures 2.1e-3 (output rounding, unit roundoff 3.9e-3); about 5x headroom.
Any non-finite output fails regardless of tolerance; the output memory is poisoned with NaN first (allocate,
fill, free, so the caching allocator hands the same block to the kernel) to catch unwritten elements.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

from deepscaler.precision.policy import PrecisionPolicy, get_policy, to_torch_dtype
from deepscaler.precision.registration import ensure_backend_registered

# torch and transformers are imported inside the functions that use them: importing deepscaler.precision stays
# free of torch (see the package docstring).

logger = logging.getLogger("deepscaler.precision")

PRECISION_TOLERANCES = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 2e-3, "bf16": 1e-2}
# Backends that take packed sequences as position ids (cu_seqlens derived inside) rather than a dense mask.
POSITION_ID_PACKING = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "deepscaler_flash")
VLLM_NAMES_HINT = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION", "CPU_ATTN", "XFORMERS")


class SelfCheckError(RuntimeError):
    """An attention backend produced wrong or non-finite output."""


@dataclass
class SelfCheckCase:
    """One layout checked against float64."""

    name: str
    """'causal' or 'packed'."""
    rel_err: float
    """||out - ref||_F / ||ref||_F (nan when the backend raised or produced non-finite values)."""
    max_abs_err: float
    """max |out - ref|."""
    finite: bool
    """All outputs finite."""
    passed: bool
    """finite and rel_err <= tolerance."""
    error: str = ""
    """Exception text when the backend raised."""


@dataclass
class SelfCheckResult:
    """Outcome of ``self_check`` for one backend."""

    backend: str
    """Backend checked."""
    precision_class: str
    """'fp32' | 'tf32' | 'fp16' | 'bf16'."""
    dtype: str
    """Input/compute dtype used."""
    tolerance: float
    """Relative-error threshold for the class."""
    device: str
    """Device it ran on."""
    cases: list[SelfCheckCase] = field(default_factory=list)
    """Per-layout results."""
    skipped: str = ""
    """Non-empty when the check could not run here (reason)."""

    @property
    def passed(self) -> bool:
        return not self.skipped and bool(self.cases) and all(c.passed for c in self.cases)

    def summary(self) -> str:
        if self.skipped:
            return f"self-check {self.backend} [{self.dtype}]: skipped ({self.skipped})"
        parts = [f"{c.name} rel={c.rel_err:.1e}" + ("" if c.finite else " NON-FINITE") + (f" error={c.error}"
                 if c.error else "") for c in self.cases]
        verdict = "PASS" if self.passed else "FAIL"
        return (f"self-check {self.backend} [{self.dtype}, {self.precision_class} tol {self.tolerance:.0e}] on "
                f"{self.device}: {verdict} ({', '.join(parts)})")

    def raise_if_failed(self) -> None:
        """Raise SelfCheckError naming the backend when a case failed (skips do not raise)."""
        if not self.skipped and not self.passed:
            raise SelfCheckError(f"attention backend {self.backend!r} failed its numerical self-check: "
                                 f"{self.summary()}. Choose another backend (attention_backend=...) or precision.")


# ----------------------------------------------------------------------------------------------- inputs
def make_inputs(batch: int, seq_len: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype, device,
                seed: int = 0):
    """Random q (B, H, S, D), k and v (B, Hkv, S, D) in ``dtype``; scaled like post-RoPE activations."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(batch, num_heads, seq_len, head_dim)] + [(batch, num_kv_heads, seq_len, head_dim)] * 2
    return tuple(torch.randn(s, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
                 for s in shapes)


def segment_ids_for(lengths: list[int], device):
    """(1, S) int tensor: document index per packed position."""
    import torch

    return torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)]).view(1, -1).to(device)


def allowed_mask(segment_ids, batch: int, seq_len: int, device):
    """(B, 1, S, S) bool: causal and (when packed) same document."""
    import torch

    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    mask = causal.view(1, 1, seq_len, seq_len).expand(batch, 1, seq_len, seq_len)
    if segment_ids is not None:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        mask = mask & same
    return mask


def reference_attention(q, k, v, allowed):
    """float64 attention with K/V heads repeated; returns (B, S, H, D) like transformers' attention functions."""

    q, k, v = (t.double() for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)


def attention_function(backend: str):
    """The callable transformers would use for ``backend`` (eager is Qwen2's reference implementation)."""
    if backend == "eager":
        from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

        return eager_attention_forward
    from transformers import AttentionInterface

    interface = AttentionInterface()
    if backend not in interface:
        raise KeyError(f"attention backend {backend!r} is not registered in transformers' AttentionInterface")
    return interface[backend]


def run_backend(backend: str, q, k, v, segment_ids=None, poison: bool = True):
    """Call ``backend`` the way a transformers attention layer does; returns (B, S, H, D)."""
    import torch

    batch, num_heads, seq_len, head_dim = q.shape
    module = torch.nn.Module()
    module.is_causal, module.layer_idx, module.training = True, 0, False
    module.num_key_value_groups = num_heads // k.shape[1]
    module.config = SimpleNamespace(_attn_implementation=backend)
    kwargs = {}
    if backend in POSITION_ID_PACKING:
        mask = None
        if segment_ids is not None:
            starts = torch.ones_like(segment_ids, dtype=torch.bool)
            starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            index = torch.arange(seq_len, device=q.device).expand_as(segment_ids)
            first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
            kwargs["position_ids"] = index - first
    elif backend == "sdpa" and segment_ids is None:
        mask = None  # is_causal path: what a model without padding runs
    else:
        allowed = allowed_mask(segment_ids, batch, seq_len, q.device)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, torch.finfo(q.dtype).min)
    if poison:
        _poison_allocator(q.numel() * q.element_size() * 2, q.device)
    out, _ = attention_function(backend)(module, q, k, v, mask, scaling=head_dim ** -0.5, dropout=0.0, **kwargs)
    return out


def _poison_allocator(nbytes: int, device) -> None:
    """Fill and free a NaN block so the kernel's output allocation likely reuses NaN memory."""
    import torch

    block = torch.full((max(1, nbytes // 4),), float("nan"), dtype=torch.float32, device=device)
    del block


# ---------------------------------------------------------------------------------------------- checks
def compare(out, ref) -> tuple[float, float, bool]:
    """(relative Frobenius error, max abs error, all finite) of ``out`` against float64 ``ref``."""
    import torch

    out64 = out.double()
    finite = bool(torch.isfinite(out64).all())
    if not finite:
        return float("nan"), float("nan"), False
    diff = out64 - ref
    return float(diff.norm() / ref.norm()), float(diff.abs().max()), True


def self_check(backend: str, policy: PrecisionPolicy | str, head_dim: int, num_heads: int, num_kv_heads: int,
               device: str = "cpu", seq_len: int = 128, batch: int = 2, seed: int = 0,
               engine: str = "trainer") -> SelfCheckResult:
    """Check ``backend`` in ``policy``'s compute dtype against float64 (causal batch + packed documents).

    Never raises for a numerical failure: it logs an ERROR naming the backend and returns a failed result
    (call ``raise_if_failed()`` to stop). vLLM backends are not kernel-checked here (they need a KV cache and
    scheduler metadata); their numerics are covered end-to-end by ``logprob_mismatch``.
    """
    import torch

    policy = get_policy(policy)
    klass = policy.precision_class(engine)
    dtype_name = policy.compute_dtype if engine == "trainer" else policy.rollout_dtype
    result = SelfCheckResult(backend, klass, dtype_name, PRECISION_TOLERANCES[klass], str(device))
    if engine == "rollout" or backend.upper() == backend:
        result.skipped = ("vLLM backends are checked end-to-end (rollout vs trainer logprob_mismatch), not "
                          "kernel-by-kernel")
        return result
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    dtype = to_torch_dtype(dtype_name)
    lengths = [max(1, seq_len // 4), max(1, seq_len // 2)]
    lengths.append(seq_len - sum(lengths))
    layouts = [("causal", batch, None), ("packed", 1, segment_ids_for(lengths, device))]
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = policy.allow_tf32
    try:
        for index, (name, rows, segments) in enumerate(layouts):
            q, k, v = make_inputs(rows, seq_len, num_heads, num_kv_heads, head_dim, dtype, device, seed + index)
            ref = reference_attention(q, k, v, allowed_mask(segments, rows, seq_len, device))
            try:
                with torch.no_grad():
                    out = run_backend(backend, q, k, v, segments)
            except Exception as exc:  # a kernel refusing the input is a failed check, reported with its text
                result.cases.append(SelfCheckCase(name, float("nan"), float("nan"), False, False,
                                                  f"{type(exc).__name__}: {exc}"[:300]))
                continue
            rel, max_abs, finite = compare(out, ref)
            result.cases.append(SelfCheckCase(name, rel, max_abs, finite, finite and rel <= result.tolerance))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    if not result.passed:
        logger.error("ATTENTION SELF-CHECK FAILED for backend %r: %s", backend, result.summary())
    return result


_MACHINE_CHECKS: dict[tuple, SelfCheckResult] = {}


def machine_self_check(backend: str, policy: PrecisionPolicy | str, geometry) -> SelfCheckResult:
    """``self_check`` of a trainer backend on this process's device (CUDA when available, else CPU), with the
    model's head geometry; run once per (backend, precision, geometry) per process and cached, because the
    resolver asks it for every model it loads. deepscaler's own kernel is registered with transformers first.

    ``geometry``: anything with ``num_heads``, ``num_kv_heads`` and ``head_dim`` (a ``ModelGeometry``).
    """
    import torch

    policy = get_policy(policy)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (backend, policy.name, policy.compute_dtype, geometry.num_heads, geometry.num_kv_heads,
           geometry.head_dim, device)
    if key not in _MACHINE_CHECKS:
        if backend == "deepscaler_flash":
            ensure_backend_registered(backend)
        _MACHINE_CHECKS[key] = self_check(backend, policy, geometry.head_dim, geometry.num_heads,
                                          geometry.num_kv_heads, device=device)
        logger.info("%s", _MACHINE_CHECKS[key].summary())
    return _MACHINE_CHECKS[key]
