"""RL math as small pure functions, each selectable by name through a registry.

Per-token tensors are ``[B, R]`` (sequences × response tokens, right padded) with a ``response_mask``.
The trainer calls :func:`compute_policy_loss` once per micro-batch with a mini-batch-global
:class:`LossNormalizer` and sums the gradients (and the returned metric shares, :func:`sum_metrics`).
"""

from deepscaler.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    drgrpo_advantages,
    get_advantage_estimator,
    group_index,
    group_mean_std,
    grpo_advantages,
    rloo_advantages,
)
from deepscaler.algorithms.filters import (
    GroupFilterResult,
    filter_constant_groups,
    overlong_filter_mask,
    overlong_reward_penalty,
)
from deepscaler.algorithms.kl import KL_ESTIMATORS, get_kl_estimator, kl_abs, kl_k1, kl_k2, kl_k3
from deepscaler.algorithms.logprobs import entropy_from_logits, logprobs_from_logits, temperature_scale
from deepscaler.algorithms.policy_loss import (
    LOSS_AGGREGATIONS,
    LossNormalizer,
    PolicyLossConfig,
    aggregate_loss,
    compute_policy_loss,
    get_loss_aggregation,
    ppo_clip_loss,
    sum_metrics,
    truncated_importance_weights,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "GroupFilterResult",
    "LossNormalizer",
    "PolicyLossConfig",
    "aggregate_loss",
    "broadcast_to_tokens",
    "compute_policy_loss",
    "drgrpo_advantages",
    "entropy_from_logits",
    "filter_constant_groups",
    "get_advantage_estimator",
    "get_kl_estimator",
    "get_loss_aggregation",
    "group_index",
    "group_mean_std",
    "grpo_advantages",
    "kl_abs",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "logprobs_from_logits",
    "overlong_filter_mask",
    "overlong_reward_penalty",
    "ppo_clip_loss",
    "rloo_advantages",
    "sum_metrics",
    "temperature_scale",
    "truncated_importance_weights",
]
