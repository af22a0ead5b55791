"""Per-token log-probabilities and entropies from logits (always in float32 or wider)."""

from __future__ import annotations

import torch


def temperature_scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` so trainer log-probs match what the sampler drew from.

    Args:
        logits: ``[..., V]``. temperature: the rollout temperature (> 0).
    Returns:
        ``[..., V]`` scaled logits.
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 to compute log-probs (got {temperature}); greedy decoding "
                         "has no log-probs, use the rollout temperature")
    return logits if temperature == 1.0 else logits / temperature


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    # Softmax over a 150k vocabulary in bf16 loses ~3 digits; float32 is the floor, float64 stays float64.
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def logprobs_from_logits(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]``.

    Args:
        logits: ``[..., V]`` (already temperature-scaled). target_ids: ``[...]`` int64 token ids.
    Returns:
        ``[...]`` log-probs in float32 (or float64 if ``logits`` is float64).
    """
    logits = _upcast(logits)
    picked = logits.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Categorical entropy ``H = logsumexp(l) − Σ softmax(l)·l``.

    Args:
        logits: ``[..., V]`` (already temperature-scaled).
    Returns:
        ``[...]`` entropies (nats) in float32 or float64.
    """
    logits = _upcast(logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
