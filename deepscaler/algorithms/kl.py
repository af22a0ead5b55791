"""Per-token estimators of KL(π_θ ‖ π_ref) from the log-probs of the sampled tokens (Schulman's k1/k2/k3).

All take ``logprobs`` and ``ref_logprobs`` of the same shape (``[B, R]`` or ``[N]``) and return that shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepscaler.algorithms.registry import lookup

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOW_VAR_KL_CLAMP = 10.0


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
    """k3 (verl ``low_var_kl``, DeepScaleR's choice): with ``δ = logp_ref − logp``, ``exp(δ) − δ − 1`` clamped to
    ``[−10, 10]`` (the clamp guards against exp overflow when the policy drifts far from the reference)."""
    delta = ref_logprobs - logprobs
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
