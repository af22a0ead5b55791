"""Batch geometry: the derived counts users otherwise work out by hand (verl's most common confusion), printed
at start-up and by ``deepscaler train --dry-run``."""

from __future__ import annotations

from dataclasses import dataclass

from deepscaler.training.config import TrainConfig


@dataclass(frozen=True)
class BatchGeometry:
    """What one RL step does, in units."""

    prompts_per_step: int
    samples_per_prompt: int
    sequences_per_step: int
    prompts_per_update: int
    sequences_per_update: int
    updates_per_step: int
    """Optimizer steps per RL step (mini-batches x ppo_epochs)."""
    max_sequence_length: int
    """max_prompt_length + max_response_length = the engine's max_model_len."""
    tokens_per_micro_batch: int
    max_generated_tokens_per_step: int
    min_micro_batches_per_update: int
    """Lower bound when every sequence hits the length limit: ceil(sequences x max length / token budget)."""
    train_problems: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    data_parallel_ranks: int = 1
    """torchrun processes; each generates and trains on prompts_per_step / ranks prompts."""

    def lines(self) -> list[str]:
        g = self
        out = [
            f"batch geometry: {g.prompts_per_step} prompts x {g.samples_per_prompt} samples = "
            f"{g.sequences_per_step} sequences per RL step",
            f"  updates per step: {g.updates_per_step} (mini-batch {g.prompts_per_update} prompts = "
            f"{g.sequences_per_update} sequences)",
            f"  micro-batches: <= {g.tokens_per_micro_batch} tokens each (>= "
            f"{g.min_micro_batches_per_update} per update at full length)",
            f"  max sequence {g.max_sequence_length} tokens; up to {g.max_generated_tokens_per_step:,} generated "
            "tokens per step",
        ]
        if g.data_parallel_ranks > 1:
            out.append(f"  data parallel: {g.data_parallel_ranks} ranks x {g.prompts_per_step // g.data_parallel_ranks} "
                       f"prompts per step, {g.prompts_per_update // g.data_parallel_ranks} per update")
        if g.train_problems is not None:
            out.append(f"  training problems: {g.train_problems:,}; {g.steps_per_epoch} steps per epoch; "
                       f"total steps: {g.total_steps}")
        return out


def batch_geometry(config: TrainConfig, train_problems: int | None = None, data_parallel_ranks: int = 1) -> BatchGeometry:
    """Derived counts of ``config`` (``train_problems`` = usable training prompts, if known)."""
    d, r, a = config.data, config.rollout, config.algorithm
    mini_batches = d.train_batch_size // a.ppo_mini_batch_size
    sequence = d.max_prompt_length + d.max_response_length
    per_update = a.ppo_mini_batch_size * r.n
    steps_per_epoch = total = None
    if train_problems is not None:
        steps_per_epoch = train_problems // d.train_batch_size
        total = config.trainer.total_steps or config.trainer.total_epochs * steps_per_epoch
    elif config.trainer.total_steps:
        total = config.trainer.total_steps
    return BatchGeometry(
        prompts_per_step=d.train_batch_size,
        samples_per_prompt=r.n,
        sequences_per_step=d.train_batch_size * r.n,
        prompts_per_update=a.ppo_mini_batch_size,
        sequences_per_update=per_update,
        updates_per_step=mini_batches * a.ppo_epochs,
        max_sequence_length=sequence,
        tokens_per_micro_batch=a.max_tokens_per_micro_batch,
        max_generated_tokens_per_step=d.train_batch_size * r.n * d.max_response_length,
        min_micro_batches_per_update=-(-per_update * sequence // a.max_tokens_per_micro_batch),
        train_problems=train_problems,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        data_parallel_ranks=data_parallel_ranks,
    )
