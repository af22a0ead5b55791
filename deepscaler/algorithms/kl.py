"""Per-token estimators of KL(π_θ ‖ π_ref) from the log-probs of the sampled tokens (Schulman's k1/k2/k3).

All take ``logprobs`` and ``ref_logprobs`` of the same shape (``[B, R]`` or ``[N]``) and return that shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepscaler.algorithms.registry import lookup

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOW_VAR_KL_CLAMP = 10.0
LOG_RATIO_CLAMP = 20.0
"""Bound on a log-ratio before ``exp`` (verl ``core_algos.py``: ``kl_penalty`` low_var_kl and the vanilla PPO loss
clamp to ±20). ``exp(20) ≈ 4.9e8`` is finite in every float dtype used here, and the clamp's zero gradient
outside the bound keeps the backward finite where the unclamped ``exp`` would give ``0 · inf = NaN``."""


def clamp_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``log_ratio`` clamped to ``[−20, 20]``, and 0 where ``mask`` is 0 (any shape; ``mask`` broadcastable).

    Masking here, before ``exp``, matters for the gradient: a NaN or ±inf on a pad position would otherwise
    flow back through ``exp`` as ``NaN · 0`` even though the loss aggregation ignores it in the forward pass."""
    if mask is not None:
        log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros((), dtype=log_ratio.dtype,
                                                                    device=log_ratio.device))
    return log_ratio.clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 (verl ``kl``): ``logp − logp_ref``. Unbiased, high variance, can be negative per token."""
    return logprobs - ref_logprobs


def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """verl ``abs``: ``|logp − logp_ref|``."""
    return (logprobs - ref_logprobs).abs()


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 (verl ``mse``): ``½ (logp − logp_ref)²``. Biased, low variance, gradient = k1's score direction."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 (verl ``low_var_kl``, DeepScaleR's choice): with ``δ = clamp(logp_ref − logp, ±20)``, ``exp(δ) − δ − 1``
    clamped to ``[−10, 10]``, as verl computes it. The value clamp bounds the term when the policy drifts far from
    the reference; the δ clamp keeps ``exp`` (and so the gradient) finite: at ``δ = 99`` the value is 10 and the
    gradient 0, not NaN."""
    delta = clamp_log_ratio(ref_logprobs - logprobs)
    return (torch.exp(delta) - delta - 1).clamp(min=-LOW_VAR_KL_CLAMP, max=LOW_VAR_KL_CLAMP)


KL_ESTIMATORS: dict[str, KLEstimator] = {
    "k1": kl_k1,
    "kl": kl_k1,
    "abs": kl_abs,
    "k2": kl_k2,
    "mse": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_k3,
}


def get_kl_estimator(name: str) -> KLEstimator:
    """The estimator registered as ``name`` (k1|kl, abs, k2|mse, k3|low_var_kl); ``ValueError`` lists names."""
    return lookup(KL_ESTIMATORS, name, "KL estimator", "kl_estimator")
