"""Sample-level filters and reward shaping applied between reward scoring and the actor update.

* dynamic sampling (DAPO): drop groups whose rewards are all equal (zero advantage, no signal);
* overlong filtering: mask responses cut at the length limit out of the loss;
* overlong reward shaping (DAPO soft penalty): a linear penalty in the last ``buffer`` tokens before the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscaler.algorithms.advantages import GroupIds, group_index


@dataclass(frozen=True)
class GroupFilterResult:
    """What :func:`filter_constant_groups` kept and why."""

    keep: torch.Tensor
    """``[N]`` bool: response belongs to a group with reward variance."""
    num_groups: int
    """Groups in the input."""
    num_dropped_groups: int
    """Groups whose rewards were all equal (solve_none + solve_all + other constant groups)."""
    solve_none: int
    """Groups whose rewards all equal the minimum possible (``<= low``): no response solved the prompt."""
    solve_all: int
    """Groups whose rewards all equal ``>= high``: every response solved it."""


def filter_constant_groups(rewards: torch.Tensor, group_ids: GroupIds, tol: float = 0.0,
                           low: float = 0.0, high: float = 1.0) -> GroupFilterResult:
    """Dynamic sampling: mark the responses of groups whose rewards span more than ``tol``.

    Refilling the batch with more prompts is the caller's job (generate more, filter, concatenate).
    Singleton groups count as constant (their GRPO advantage is the raw reward, not a comparison) and are
    dropped too.

    Args:
        rewards: ``[N]`` scalar rewards. group_ids: ``[N]`` ids. tol: max−min spread still considered equal.
        low, high: reward values that define the solve_none / solve_all counts (binary reward: 0 and 1).
    Returns:
        :class:`GroupFilterResult` with ``keep`` ``[N]``.
    """
    index, num_groups = group_index(group_ids, rewards.device)
    values = rewards.to(torch.float64)
    inf = torch.full((num_groups,), float("inf"), dtype=torch.float64, device=rewards.device)
    group_max = (-inf).scatter_reduce(0, index, values, reduce="amax")
    group_min = inf.scatter_reduce(0, index, values, reduce="amin")
    constant = (group_max - group_min) <= tol
    return GroupFilterResult(
        keep=~constant[index],
        num_groups=num_groups,
        num_dropped_groups=int(constant.sum()),
        solve_none=int((constant & (group_max <= low)).sum()),
        solve_all=int((constant & (group_min >= high)).sum()),
    )


def overlong_filter_mask(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Overlong filtering (DAPO / rllm ``mask_truncated_samples``): truncated responses do not train.

    Args:
        response_mask: ``[B, R]``. truncated: ``[B]`` bool, True where the response hit the length limit
            (``finish_reason == "length"``).
    Returns:
        ``[B, R]`` mask with the truncated rows zeroed (same dtype as ``response_mask``). Build the
        :class:`~deepscaler.algorithms.policy_loss.LossNormalizer` from this mask.
    """
    return response_mask * (~truncated.bool()).unsqueeze(-1).to(response_mask.dtype)


def overlong_reward_penalty(response_lengths: torch.Tensor, max_response_length: int, buffer_length: int,
                            penalty_factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment, added to the task reward.

    ``0`` if ``L <= Lmax − buffer``; ``(Lmax − buffer − L) / buffer · factor`` inside the buffer (linear from 0
    to −factor); ``−factor`` beyond ``Lmax``.

    Args:
        response_lengths: ``[N]`` response token counts. max_response_length: Lmax. buffer_length: the soft
            zone (0 < buffer <= Lmax). penalty_factor: the penalty at Lmax.
    Returns:
        ``[N]`` float penalties (<= 0).
    """
    if not 0 < buffer_length <= max_response_length:
        raise ValueError(f"`overlong_buffer_length` must be in (0, max_response_length={max_response_length}] "
                         f"(got {buffer_length})")
    lengths = response_lengths.to(torch.float64)
    start = max_response_length - buffer_length
    penalty = ((start - lengths) / buffer_length).clamp(min=-1.0, max=0.0) * penalty_factor
    return penalty.to(torch.get_default_dtype())
