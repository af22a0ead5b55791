"""PPO clipped surrogate, loss aggregation over a whole mini-batch, and the per-micro-batch actor loss.

Layout: per-token tensors are ``[B, R]`` (B sequences of one micro-batch, R = longest response in it, right
padded) with a ``response_mask`` ``[B, R]`` that is 1 on tokens that train.

Invariance: the normalisers of every aggregation mode (token count, sequence count, Dr. GRPO constant) are
those of the **whole mini-batch** (all micro-batches, all data-parallel ranks), passed in as a
:class:`LossNormalizer`. Each micro-batch's loss is then its exact share of the mini-batch loss, so summing
gradients over micro-batches (gradient accumulation) gives the same gradient however the mini-batch is split
or packed. verl 0.1 instead took a per-micro-batch token mean and summed those (agentica-project/rllm#67),
which makes the effective learning rate depend on the token budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from deepscaler.algorithms.kl import clamp_log_ratio, get_kl_estimator
from deepscaler.algorithms.registry import lookup


@dataclass(frozen=True)
class LossNormalizer:
    """Global denominators of one mini-batch, shared by all its micro-batches."""

    num_tokens: float
    """Response tokens that train (mask sum) in the whole mini-batch, summed over data-parallel ranks."""
    num_sequences: float
    """Sequences with at least one training token in the whole mini-batch, summed over ranks."""
    token_sum_scale: float | None = None
    """Constant divisor of ``seq-mean-token-sum-norm`` (Dr. GRPO: the max response length); None = unused."""
    dp_size: int = 1
    """Data-parallel ranks whose gradients FSDP/DDP *average*; the loss is multiplied by it so the average
    becomes the sum of the ranks' shares. Keep 1 for a single process."""

    @classmethod
    def from_response_mask(cls, response_mask: torch.Tensor | Iterable[torch.Tensor],
                           token_sum_scale: float | None = None, dp_size: int = 1) -> LossNormalizer:
        """Count tokens and sequences of a mini-batch.

        Args:
            response_mask: ``[B, R]`` mask of the whole mini-batch, or an iterable of per-micro-batch ``[b, r]``
                masks (possibly different widths). With data parallelism, all-reduce (sum) the two counts of the
                ranks instead and build the dataclass directly.
            token_sum_scale: see the field. dp_size: see the field.
        """
        masks = [response_mask] if isinstance(response_mask, torch.Tensor) else list(response_mask)
        num_tokens = sum(float(mask.sum()) for mask in masks)
        num_sequences = sum(float((mask.sum(-1) > 0).sum()) for mask in masks)
        return cls(num_tokens, num_sequences, token_sum_scale, dp_size)


# ----------------------------------------------------------------------------------------------- aggregation
LossAggregation = Callable[[torch.Tensor, torch.Tensor, LossNormalizer], torch.Tensor]


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() instead of a product: a masked NaN/inf (e.g. exp overflow on a pad) must not leak into the sum.
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """``Σ_{i,t} m·ℓ / N_tokens`` (DAPO token-level loss, DeepScaleR). ``loss``/``mask``: ``[B, R]`` → scalar."""
    return _masked(loss, mask).sum() / max(norm.num_tokens, 1.0)


def token_sum(loss: torch.Tensor, mask: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """``Σ_{i,t} m·ℓ`` with no normalisation. ``[B, R]`` → scalar."""
    return _masked(loss, mask).sum()


def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """``Σ_i (Σ_t m·ℓ / |o_i|) / N_seqs`` (original GRPO). ``[B, R]`` → scalar; empty rows contribute 0."""
    per_seq = _masked(loss, mask).sum(-1) / mask.sum(-1).clamp(min=1).to(loss.dtype)
    return per_seq.sum() / max(norm.num_sequences, 1.0)


def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """``Σ_i Σ_t m·ℓ / N_seqs``. ``[B, R]`` → scalar."""
    return _masked(loss, mask).sum() / max(norm.num_sequences, 1.0)


def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    """Dr. GRPO: ``Σ_{i,t} m·ℓ / (N_seqs · L)`` with a constant ``L = norm.token_sum_scale`` (max response length),
    so no sequence's tokens are up- or down-weighted by its length. ``[B, R]`` → scalar."""
    if not norm.token_sum_scale:
        raise ValueError("loss_agg_mode 'seq-mean-token-sum-norm' needs LossNormalizer.token_sum_scale (set it to "
                         "the max response length, e.g. LossNormalizer.from_response_mask(m, token_sum_scale=8192))")
    return _masked(loss, mask).sum() / (max(norm.num_sequences, 1.0) * norm.token_sum_scale)


LOSS_AGGREGATIONS: dict[str, LossAggregation] = {
    "token-mean": token_mean,
    "token-sum": token_sum,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def get_loss_aggregation(name: str) -> LossAggregation:
    """The aggregation registered as ``name``; ``ValueError`` lists valid names."""
    return lookup(LOSS_AGGREGATIONS, name, "loss aggregation", "loss_agg_mode")


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, normalizer: LossNormalizer) -> torch.Tensor:
    """This micro-batch's share of the mini-batch loss under ``mode``. ``[B, R]`` → scalar."""
    return get_loss_aggregation(mode)(loss, mask, normalizer)


# ---------------------------------------------------------------------------------------------- PPO surrogate
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2,
                  dual_clip_c: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate with separate low/high clip (DAPO clip-higher).

    ``ρ = exp(clamp(logp − logp_old, ±20))``; ``ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))``; with
    ``dual_clip_c`` (> 1) negative-advantage tokens are further capped at ``−A·c``. The ±20 log-ratio clamp is
    verl's (``core_algos.py``, vanilla policy loss): identical below |20|, and beyond it a finite loss with a zero
    gradient instead of an overflowing ``exp`` whose backward gives NaN (a log-ratio that large means the
    trainer and the behaviour policy disagree, e.g. a broken weight sync).

    Args:
        logprobs, old_logprobs: ``[B, R]``. advantages: ``[B, R]`` or ``[B]`` (broadcast over tokens).
    Returns:
        ``(loss [B, R], clipped [B, R] bool)``: ``clipped`` marks tokens where the clipped branch is active
        (its gradient is zero), i.e. the ``actor/clipfrac`` numerator.
    """
    if advantages.ndim == logprobs.ndim - 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(clamp_log_ratio(logprobs - old_logprobs))
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"`dual_clip_c` must be > 1 (got {dual_clip_c}); None disables dual clipping")
        cap = -advantages * dual_clip_c
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        clipped = clipped | dual
    return loss, clipped


def truncated_importance_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS) weights correcting for the rollout engine ≠ trainer numerics.

    ``w = min(exp(logp_old_trainer − logp_rollout), C)`` per token, detached (a constant weight on the loss).

    Args:
        old_logprobs: ``[B, R]`` trainer log-probs of the behaviour policy. rollout_logprobs: ``[B, R]`` the
            engine's log-probs of the same tokens. cap: C > 0 (e.g. 2).
    Returns:
        ``[B, R]`` weights in ``(0, C]``.
    """
    if cap <= 0:
        raise ValueError(f"`tis_cap` must be > 0 (got {cap}); None disables truncated importance sampling")
    return torch.exp(clamp_log_ratio(old_logprobs - rollout_logprobs)).clamp(max=cap).detach()


# --------------------------------------------------------------------------------------------- the actor loss
@dataclass
class PolicyLossConfig:
    """Knobs of the actor loss (defaults: plain GRPO/PPO with nothing extra; DeepScaleR: kl_coef 0.001,
    entropy_coef 0.001, kl_estimator low_var_kl, token-mean)."""

    clip_ratio_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low."""
    clip_ratio_high: float = 0.2
    """ε_high: clipped above at 1 + ε_high (DAPO clip-higher uses 0.28)."""
    dual_clip_c: float | None = None
    """Dual-clip constant c > 1 for negative advantages (verl's clip_ratio_c = 3); None = off."""
    loss_agg_mode: str = "token-mean"
    """Name in LOSS_AGGREGATIONS; applied to the pg, KL and entropy terms alike."""
    kl_coef: float = 0.0
    """Coefficient of the KL-to-reference loss; 0 = off. Negative reproduces DeepScaleR's original 8K run
    (−0.001, it maximised the KL by a sign bug)."""
    kl_estimator: str = "low_var_kl"
    """Name in KL_ESTIMATORS (k1|kl, abs, k2|mse, k3|low_var_kl)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient: loss −= entropy_coef·entropy; 0 = off."""
    tis_cap: float | None = None
    """Cap C of truncated importance sampling with the rollout engine's log-probs; None = off."""

    def __post_init__(self) -> None:
        get_loss_aggregation(self.loss_agg_mode)
        get_kl_estimator(self.kl_estimator)
        if self.clip_ratio_low < 0 or self.clip_ratio_high < 0:
            raise ValueError(f"`clip_ratio_low`/`clip_ratio_high` must be >= 0 (got {self.clip_ratio_low}, "
                             f"{self.clip_ratio_high})")
        if self.clip_ratio_low >= 1:
            raise ValueError(f"`clip_ratio_low` must be < 1 (got {self.clip_ratio_low}): 1 − ε_low is a ratio floor")


def compute_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    normalizer: LossNormalizer,
    config: PolicyLossConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Actor loss of one micro-batch = its share of the mini-batch loss; call ``loss.backward()`` on each
    micro-batch and step the optimiser after the last one (no extra division by the number of micro-batches).

    ``loss = agg(pg·w) + kl_coef·agg(kl) − entropy_coef·agg(entropy)`` (× ``normalizer.dp_size``), where ``w``
    are the TIS weights (1 when ``config.tis_cap`` is None) and ``agg`` is ``config.loss_agg_mode`` with the
    mini-batch-global ``normalizer``.

    Args:
        logprobs: ``[B, R]`` current policy log-probs of the response tokens (with grad).
        old_logprobs: ``[B, R]`` behaviour-policy log-probs from the trainer (no grad).
        advantages: ``[B, R]`` or ``[B]``.
        response_mask: ``[B, R]`` 1 on tokens that train (already excluding e.g. overlong-filtered rows).
        normalizer: mini-batch-global denominators (:meth:`LossNormalizer.from_response_mask`).
        config: :class:`PolicyLossConfig`.
        ref_logprobs: ``[B, R]`` reference-policy log-probs; required when ``config.kl_coef != 0``.
        entropy: ``[B, R]`` per-token entropy of the current policy (with grad); required when
            ``config.entropy_coef != 0`` (optional otherwise, then only logged).
        rollout_logprobs: ``[B, R]`` rollout-engine log-probs; required when ``config.tis_cap`` is set.
    Returns:
        ``(loss, metrics)``. Every metric is this micro-batch's **share** (global denominators), so the
        mini-batch value is the **sum** over its micro-batches (see :func:`sum_metrics`): ``actor/pg_loss``,
        ``actor/clipfrac`` (token fraction with the clipped branch active), ``actor/approx_kl``
        (token mean of ``logp_old − logp``), ``actor/entropy`` (token mean), ``actor/kl`` (aggregated KL term),
        ``actor/loss``; with TIS also ``actor/tis_weight`` (token mean) and ``actor/tis_capped_frac``.
    """
    mask = response_mask.to(logprobs.dtype)
    aggregate = get_loss_aggregation(config.loss_agg_mode)
    # Pads are zeroed *before* any exp: the aggregation's where() hides a pad's NaN/inf from the forward pass,
    # but its backward would still multiply the pad's zero gradient by exp(NaN or inf) = NaN.
    logprobs, old_logprobs, ref_logprobs, entropy, rollout_logprobs = (
        _zero_pads(values, mask) for values in (logprobs, old_logprobs, ref_logprobs, entropy, rollout_logprobs))
    if advantages.ndim == mask.ndim:
        advantages = _zero_pads(advantages, mask)
    pg_tokens, clipped = ppo_clip_loss(logprobs, old_logprobs, advantages, config.clip_ratio_low,
                                       config.clip_ratio_high, config.dual_clip_c)
    metrics: dict[str, float] = {}
    if config.tis_cap is not None:
        if rollout_logprobs is None:
            raise ValueError("`tis_cap` is set but `rollout_logprobs` is None: pass the rollout engine's "
                             "log-probs (SamplingSettings(logprobs=True)) or set tis_cap=None")
        weights = truncated_importance_weights(old_logprobs, rollout_logprobs, config.tis_cap)
        pg_tokens = pg_tokens * weights
        metrics["actor/tis_weight"] = float(token_mean(weights, mask, normalizer))
        metrics["actor/tis_capped_frac"] = float(token_mean((weights >= config.tis_cap).to(mask.dtype), mask,
                                                            normalizer))
    pg_loss = aggregate(pg_tokens, mask, normalizer)
    loss = pg_loss
    with torch.no_grad():
        metrics["actor/pg_loss"] = float(pg_loss.detach())
        metrics["actor/clipfrac"] = float(token_mean(clipped.to(mask.dtype), mask, normalizer))
        metrics["actor/approx_kl"] = float(token_mean(old_logprobs - logprobs, mask, normalizer))

    if config.kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError(f"`kl_coef` is {config.kl_coef} but `ref_logprobs` is None: compute reference "
                             "log-probs or set kl_coef=0")
        kl_term = aggregate(get_kl_estimator(config.kl_estimator)(logprobs, ref_logprobs), mask, normalizer)
        loss = loss + config.kl_coef * kl_term
        metrics["actor/kl"] = float(kl_term.detach())
    elif ref_logprobs is not None:
        with torch.no_grad():
            kl_values = get_kl_estimator(config.kl_estimator)(logprobs, ref_logprobs)
            metrics["actor/kl"] = float(aggregate(kl_values, mask, normalizer))

    if config.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError(f"`entropy_coef` is {config.entropy_coef} but `entropy` is None: call "
                             "token_logprobs(..., compute_entropy=True) or set entropy_coef=0")
        loss = loss - config.entropy_coef * aggregate(entropy, mask, normalizer)
    if entropy is not None:
        metrics["actor/entropy"] = float(token_mean(entropy.detach(), mask, normalizer))

    metrics["actor/loss"] = float(loss.detach())
    return loss * normalizer.dp_size, metrics


def _zero_pads(values: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """``values`` with every position where ``mask`` is 0 set to 0 (None stays None). ``[B, R]`` → ``[B, R]``."""
    if values is None:
        return None
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def sum_metrics(per_micro_batch: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add up the metric shares returned by :func:`compute_policy_loss` for the micro-batches of a mini-batch."""
    total: dict[str, float] = {}
    for metrics in per_micro_batch:
        for key, value in metrics.items():
            total[key] = total.get(key, 0.0) + value
    return total
