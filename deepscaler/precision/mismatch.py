"""Rollout-vs-trainer log-prob mismatch metrics (pure functions, logged by the trainer every step).

The rollout engine samples tokens with its own kernels and precision; the trainer recomputes the same tokens'
log-probs. Their gap is the off-policy error that truncated importance sampling corrects. Conventions follow
verl (``training/rollout_probs_diff_mean``: below 0.005 normal, above 0.01 a precision problem).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROB_DIFF_WARN = 0.005
"""Mean |p_trainer - p_rollout| above this is unusual (verl FAQ)."""
PROB_DIFF_ALARM = 0.01
"""Mean |p_trainer - p_rollout| above this means a precision/kernel problem (verl FAQ)."""


def logprob_mismatch(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mismatch statistics over the tokens where ``mask`` is set.

    Shapes: all three (B, T); ``mask`` bool or 0/1 (response tokens). Samples come from the rollout policy, so
    with log-ratio ``r = trainer_logp - rollout_logp`` the estimators of KL(rollout || trainer) are
    ``k1 = -r`` (unbiased, noisy) and ``k3 = exp(r) - 1 - r`` (unbiased, >= 0, low variance).

    Returns floats: ``rollout/logprob_diff_mean`` and ``_max`` (|r|), ``rollout/prob_diff_mean`` and ``_max``
    (|p_t - p_r|, verl's metric), ``rollout/kl_k1``, ``rollout/kl_k3``, ``rollout/num_tokens``. All zero when
    the mask is empty.
    """
    import torch  # local: importing deepscaler.precision stays free of torch (see the package docstring)

    if trainer_logp.shape != rollout_logp.shape or trainer_logp.shape != mask.shape:
        raise ValueError(f"trainer_logp {tuple(trainer_logp.shape)}, rollout_logp {tuple(rollout_logp.shape)} and "
                         f"mask {tuple(mask.shape)} must have the same (B, T) shape")
    selected = mask.bool()
    count = int(selected.sum())
    keys = ("logprob_diff_mean", "logprob_diff_max", "prob_diff_mean", "prob_diff_max", "kl_k1", "kl_k3")
    if count == 0:
        return {**{f"rollout/{k}": 0.0 for k in keys}, "rollout/num_tokens": 0.0}
    trainer = trainer_logp.detach().double()[selected]
    rollout = rollout_logp.detach().double()[selected]
    log_ratio = trainer - rollout
    prob_diff = (trainer.exp() - rollout.exp()).abs()
    metrics = {
        "logprob_diff_mean": log_ratio.abs().mean(),
        "logprob_diff_max": log_ratio.abs().max(),
        "prob_diff_mean": prob_diff.mean(),
        "prob_diff_max": prob_diff.max(),
        "kl_k1": (-log_ratio).mean(),
        "kl_k3": (torch.expm1(log_ratio) - log_ratio).mean(),
    }
    return {**{f"rollout/{k}": float(v) for k, v in metrics.items()}, "rollout/num_tokens": float(count)}


def assess_mismatch(metrics: dict[str, float]) -> tuple[str, str]:
    """('ok' | 'warn' | 'alarm', reason) from ``rollout/prob_diff_mean`` and verl's thresholds."""
    value = metrics.get("rollout/prob_diff_mean", 0.0)
    if value > PROB_DIFF_ALARM:
        return "alarm", (f"mean |p_trainer - p_rollout| = {value:.4f} > {PROB_DIFF_ALARM}: precision or kernel "
                         "mismatch (try fp16-mixed, an fp32 LM head, or the same attention kernel on both sides)")
    if value > PROB_DIFF_WARN:
        return "warn", f"mean |p_trainer - p_rollout| = {value:.4f} > {PROB_DIFF_WARN} (verl's normal range)"
    return "ok", f"mean |p_trainer - p_rollout| = {value:.4f} <= {PROB_DIFF_WARN}"
