"""Outcome advantages computed within groups of responses to the same prompt (GRPO family).

Every estimator takes one scalar reward per response and a group id per response and returns one scalar
advantage per response; :func:`broadcast_to_tokens` spreads it over the response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from deepscaler.algorithms.registry import lookup

GroupIds = torch.Tensor | Sequence[Hashable]
AdvantageEstimator = Callable[..., torch.Tensor]


def group_index(group_ids: GroupIds, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids (prompt UUIDs, ints, a tensor) to dense indices.

    Args:
        group_ids: ``[N]`` ids; equal ids mean "responses to the same prompt". Any hashable values.
    Returns:
        ``(index [N] int64, num_groups)`` with groups numbered in order of first appearance.
    """
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(gid, len(dense)) for gid in group_ids]
    return torch.tensor(index, dtype=torch.long, device=device), len(dense)


def group_mean_std(rewards: torch.Tensor, group_ids: GroupIds) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response mean and Bessel-corrected (N−1) std of its group's rewards.

    Singleton groups get mean 0 and std 1 (verl's convention, so a lone response keeps its raw reward).

    Args:
        rewards: ``[N]`` scalar reward per response.
        group_ids: ``[N]`` group id per response.
    Returns:
        ``(mean [N], std [N])`` in the dtype of ``rewards``.
    """
    if rewards.ndim != 1:
        raise ValueError(f"`rewards` must be 1-D [N] (one scalar per response), got shape {tuple(rewards.shape)}")
    index, num_groups = group_index(group_ids, rewards.device)
    if index.numel() != rewards.numel():
        raise ValueError(f"`group_ids` has {index.numel()} entries but `rewards` has {rewards.numel()}")
    values = rewards.to(torch.float64)  # group statistics in float64: cheap and order-independent enough
    counts = torch.zeros(num_groups, dtype=torch.float64, device=rewards.device).index_add_(
        0, index, torch.ones_like(values))
    sums = torch.zeros_like(counts).index_add_(0, index, values)
    means = sums / counts
    squared = torch.zeros_like(counts).index_add_(0, index, (values - means[index]) ** 2)
    stds = torch.sqrt(squared / (counts - 1).clamp(min=1))
    singleton = counts == 1
    means = torch.where(singleton, torch.zeros_like(means), means)
    stds = torch.where(singleton, torch.ones_like(stds), stds)
    return means[index].to(rewards.dtype), stds[index].to(rewards.dtype)


def grpo_advantages(rewards: torch.Tensor, group_ids: GroupIds, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: ``A_i = (r_i − mean_g) / (std_g + eps)`` with the Bessel-corrected group std.

    Example (n=8, one correct): mean 0.125, std 0.354 → A = +2.47 for the correct one, −0.354 otherwise.

    Args:
        rewards: ``[N]`` scalar rewards. group_ids: ``[N]`` group ids. eps: added to the std.
    Returns:
        ``[N]`` advantages (0 for every member of a group whose rewards are all equal).
    """
    mean, std = group_mean_std(rewards, group_ids)
    return (rewards - mean) / (std + eps)


def drgrpo_advantages(rewards: torch.Tensor, group_ids: GroupIds, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO: ``A_i = r_i − mean_g`` (no division by the std, which biases towards easy/hard groups).

    Args:
        rewards: ``[N]``. group_ids: ``[N]``. eps: unused, accepted for a uniform signature.
    Returns:
        ``[N]`` advantages.
    """
    mean, _ = group_mean_std(rewards, group_ids)
    return rewards - mean


def rloo_advantages(rewards: torch.Tensor, group_ids: GroupIds, eps: float = 1e-6) -> torch.Tensor:
    """RLOO: ``A_i = r_i − mean of the other responses of the group`` = ``n/(n−1)·(r_i − mean_g)``.

    Singleton groups have no baseline: their advantage is the raw reward.

    Args:
        rewards: ``[N]``. group_ids: ``[N]``. eps: unused.
    Returns:
        ``[N]`` advantages.
    """
    index, num_groups = group_index(group_ids, rewards.device)
    counts = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, index, torch.ones_like(rewards))[index]
    mean, _ = group_mean_std(rewards, group_ids)
    return torch.where(counts > 1, (rewards - mean) * counts / (counts - 1).clamp(min=1), rewards)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "dr_grpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as ``name`` (``grpo``, ``drgrpo``|``dr_grpo``, ``rloo``); ``ValueError`` lists valid names."""
    return lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator", "advantage_estimator")


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Spread one advantage per response over its tokens.

    Args:
        advantages: ``[B]``. response_mask: ``[B, R]`` (1 on response tokens).
    Returns:
        ``[B, R]`` = ``advantages[:, None] * response_mask``.
    """
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)
