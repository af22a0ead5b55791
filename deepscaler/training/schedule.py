"""Learning-rate schedules (one multiplier per RL step) and the optimizer factory."""

from __future__ import annotations

import math
from functools import partial

import torch

from deepscaler.training.config import OptimConfig


def lr_multiplier(step: int, *, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 1,
                  min_lr_ratio: float = 0.0, zero_lr_first_step: bool = False) -> float:
    """Multiplier of the peak LR for the RL step with 0-based index ``step`` (within the stage).

    Linear warmup over ``warmup_steps`` (reaching 1 on the last warmup step), then constant, or cosine decay
    to ``min_lr_ratio`` at ``total_steps``. ``zero_lr_first_step`` reproduces verl's 0-warmup quirk where the
    very first step runs at lr 0 (verl's warmup scheduler with 0 warmup steps, under which DeepScaleR trained).
    """
    if zero_lr_first_step and step == 0:
        return 0.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule='{schedule}' is not 'constant' or 'cosine'")


def build_optimizer(params, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable params (fused/foreach picked by torch for the device)."""
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per RL step after the updates; its state_dict round-trips through checkpoints."""
    fn = partial(lr_multiplier, schedule=config.schedule, warmup_steps=config.warmup_steps,
                 total_steps=total_steps, min_lr_ratio=config.min_lr_ratio,
                 zero_lr_first_step=config.zero_lr_first_step)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
