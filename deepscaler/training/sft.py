"""Supervised warm-up (the "cold start"): next-token cross-entropy on the response tokens only.

Used by the CPU demo to teach a freshly initialised model the answer format and the reasoning trace before
GRPO. Deliberately small: right-padded batches of (prompt, response) token ids, AdamW with linear warm-up
and cosine decay, loss masked to the response (and its EOS) so the prompt is context only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class SFTConfig:
    """Hyperparameters of the supervised warm-up."""

    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per step."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (after warm-up)."""
    warmup_steps: int = 20
    """Linear warm-up steps from 0 to the peak learning rate; cosine decay to 10 % of it afterwards."""
    schedule_steps: int | None = None
    """Length of the cosine schedule (default: ``steps``). Longer than ``steps`` stops training while the
    learning rate is still high: a partly converged model whose samples still vary, which RL can sharpen."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    seed: int = 0
    """Seed of the batch order."""
    log_every: int = 20
    """Report the mean loss every this many steps through ``on_log``."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"SFTConfig.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class SFTExample:
    """One training pair in token ids: the rendered prompt and the response to imitate (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]


def collate(examples: Sequence[SFTExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch and mask the loss to response tokens.

    Returns:
        ``input_ids [B, T]``, ``attention_mask [B, T]`` and ``labels [B, T]`` where labels are the input ids
        on response positions and -100 (ignored by the loss) on prompt and padding positions.
    """
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = example.prompt_ids + example.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, len(example.prompt_ids): len(ids)] = torch.tensor(example.response_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def learning_rate_at(step: int, config: SFTConfig) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak (``step`` counts from 0)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    total = config.schedule_steps or config.steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_sft(model: torch.nn.Module, examples: Sequence[SFTExample], config: SFTConfig, pad_token_id: int,
              on_log: Callable[[dict], None] | None = None) -> list[dict]:
    """Run ``config.steps`` optimizer steps of response-only cross-entropy on ``examples`` (in place).

    Batches are drawn by cycling through shuffled epochs of ``examples``.

    Returns:
        One record per ``log_every`` steps: ``{"step", "loss", "learning_rate", "elapsed_s"}``.
    """
    if not examples:
        raise ValueError("train_sft needs at least one example")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(config.seed)
    order: list[int] = []
    history: list[dict] = []
    window: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        batch_indices = []
        while len(batch_indices) < config.batch_size:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch_indices.append(order.pop())
        batch = collate([examples[i] for i in batch_indices], pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            record = {"step": step + 1, "loss": sum(window) / len(window),
                      "learning_rate": optimizer.param_groups[0]["lr"],
                      "elapsed_s": time.perf_counter() - start}
            history.append(record)
            window = []
            if on_log is not None:
                on_log(record)
    model.eval()
    return history
