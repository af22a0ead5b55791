"""Validation during training: Pass@1 (mean reward over ``validation.n`` samples per problem) on each validation
set, sampled by the rollout engine with seeds derived from (seed, step)."""

from __future__ import annotations

import time

from deepscaler.rollout import SamplingSettings
from deepscaler.training.distributed import all_sum
from deepscaler.training.faults import where
from deepscaler.training.rollouts import to_rollouts
from deepscaler.training.run import Run
from deepscaler.training.stream import derive_seed


def validate_policy(run: Run, step: int) -> dict[str, float]:
    """Pass@1 and mean response length on each of ``run.val_sets``, plus ``timing_s/validation``; with data
    parallelism each rank takes a slice of the problems (same seeds per problem as one process)."""
    started = time.perf_counter()
    where.enter("validation", step)
    cfg = run.config.validation
    metrics: dict[str, float] = {}
    for name, prompts in run.val_sets.items():
        if not prompts.problems:
            continue
        start, end = run.dist.split(len(prompts.problems))
        seed = derive_seed(run.config.trainer.seed, "validation", step)
        settings = SamplingSettings(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=cfg.max_response_length or run.config.data.max_response_length,
                                    prompt_seeds=[seed + i * cfg.n for i in range(start, end)], logprobs=False)
        groups = run.engine.generate(prompts.prompt_ids[start:end], settings) if end > start else []
        rollouts = to_rollouts(groups, prompts.problems[start:end])
        rewards = [float(r) for r in run.reward_fn(rollouts.texts, rollouts.problems)] if len(rollouts) else []
        total, count, length = all_sum(run.dist, [sum(rewards), len(rewards),
                                                  sum(len(r) for r in rollouts.response_ids)])
        metrics[f"val/pass@1/{name}"] = total / count
        metrics[f"val/response_length/{name}"] = length / count
    metrics["timing_s/validation"] = time.perf_counter() - started
    return metrics


def validation_line(step: int, metrics: dict[str, float]) -> str:
    """``step 20 validation Pass@1: aime 0.287, math 0.871``."""
    parts = [f"{k.removeprefix('val/pass@1/')} {v:.3f}" for k, v in metrics.items() if k.startswith("val/pass@1/")]
    return f"step {step} validation Pass@1: " + ", ".join(parts)
