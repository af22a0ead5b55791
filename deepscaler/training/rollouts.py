"""Phase 1-3 of a GRPO step: draw prompts, generate ``rollout.n`` samples each in the engine, score them; with
dynamic sampling (DAPO) keep drawing until enough groups carry signal. Also the rows written to rollouts.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscaler.algorithms import filter_constant_groups
from deepscaler.rollout import SamplingSettings
from deepscaler.training.checkpoint import TrainerState
from deepscaler.training.distributed import all_gather, all_sum
from deepscaler.training.metrics import Timer, group_solve_rates, response_metrics, summarize
from deepscaler.training.run import Run
from deepscaler.training.stream import derive_seed


@dataclass
class Rollouts:
    """Samples of one RL step, prompt-major (the n samples of prompt 0, then of prompt 1, ...)."""

    problems: list[Any]
    group_ids: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float]] | None
    texts: list[str]
    truncated: list[bool]
    rewards: list[float] = field(default_factory=list)
    sampled_tokens: int = 0
    """Prompt + response tokens this rank sampled to obtain these rollouts, including the groups dynamic
    sampling dropped (the numerator of the step's throughput)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    def select(self, keep: list[int]) -> Rollouts:
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return Rollouts(pick(self.problems), pick(self.group_ids), pick(self.prompt_ids), pick(self.response_ids),
                        pick(self.rollout_logprobs) if self.rollout_logprobs is not None else None,
                        pick(self.texts), pick(self.truncated), pick(self.rewards), self.sampled_tokens)

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        joined = Rollouts([], [], [], [], [], [], [], [])
        for part in parts:
            for name in ("problems", "group_ids", "prompt_ids", "response_ids", "texts", "truncated", "rewards"):
                getattr(joined, name).extend(getattr(part, name))
            if part.rollout_logprobs is None or joined.rollout_logprobs is None:
                joined.rollout_logprobs = None
            else:
                joined.rollout_logprobs.extend(part.rollout_logprobs)
            joined.sampled_tokens += part.sampled_tokens
        return joined


def collect_rollouts(run: Run, state: TrainerState, step: int, timer: Timer) -> tuple[Rollouts, dict[str, float]]:
    """Sample prompt batches, generate and score; with dynamic sampling drop groups whose rewards are all equal
    and refill until ``train_batch_size`` groups remain or ``max_rollout_batches`` batches were drawn.

    With data parallelism every rank draws the same prompts and generates its own slice of them, each prompt with
    the seed a single process would give it; group ids are global, and the metrics cover all ranks."""
    cfg = run.config
    batch_size, n = cfg.data.train_batch_size, cfg.rollout.n
    start, end = run.dist.shard(batch_size)
    rounds = cfg.algorithm.max_rollout_batches if cfg.algorithm.dynamic_sampling else 1
    sampled: list[Rollouts] = []
    kept: list[Rollouts] = []
    kept_groups = 0
    for round_index in range(rounds):
        indices = run.stream.take(batch_size)
        state.consumed_prompts += batch_size
        seed = derive_seed(cfg.trainer.seed, "rollout", step, round_index)
        settings = SamplingSettings(n=n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    top_k=cfg.rollout.top_k, max_tokens=cfg.data.max_response_length,
                                    min_tokens=cfg.rollout.min_tokens, logprobs=True,
                                    prompt_seeds=[seed + position * n for position in range(start, end)])
        indices = indices[start:end]
        with timer("rollout"):
            groups = run.engine.generate([run.train.prompt_ids[i] for i in indices], settings)
        rollouts = to_rollouts(groups, [run.train.problems[i] for i in indices],
                               group_offset=round_index * batch_size + start)
        with timer("reward"):
            rollouts.rewards = [float(r) for r in run.reward_fn(rollouts.texts, rollouts.problems)]
        sampled.append(rollouts)
        if not cfg.algorithm.dynamic_sampling:
            kept.append(rollouts)
            break
        verdict = filter_constant_groups(torch.tensor(rollouts.rewards), rollouts.group_ids)
        kept.append(rollouts.select([i for i, k in enumerate(verdict.keep.tolist()) if k]))
        kept_groups += int(all_sum(run.dist, [verdict.num_groups - verdict.num_dropped_groups])[0])
        if kept_groups >= batch_size:
            break
    everything = Rollouts.concat(sampled)
    batch = Rollouts.concat(kept)
    if cfg.algorithm.dynamic_sampling and kept_groups > batch_size:  # keep exactly the first train_batch_size groups
        every_rank = [g for ids in all_gather(run.dist, sorted(set(batch.group_ids))) for g in ids]
        first = set(sorted(every_rank)[:batch_size])  # global ids: round-major, then prompt position
        batch = batch.select([i for i, g in enumerate(batch.group_ids) if g in first])
    batch.sampled_tokens = everything.sampled_tokens  # throughput is per device, as verl reports it

    # metrics over every rank's samples (rank order keeps each group's samples together)
    columns = all_gather(run.dist, (everything.rewards, [len(r) for r in everything.response_ids],
                                    everything.truncated, [len(p) for p in everything.prompt_ids],
                                    len(set(batch.group_ids))))
    rewards, lengths, truncated, prompt_lengths = ([x for column in columns for x in column[k]] for k in range(4))
    metrics: dict[str, float] = {}
    metrics.update(summarize(rewards, "reward", ("mean", "max", "min", "std")))
    metrics.update(group_solve_rates(rewards, n))
    metrics.update(response_metrics(lengths, truncated))
    metrics.update(summarize([float(x) for x in prompt_lengths], "prompt_length"))
    if cfg.algorithm.dynamic_sampling:
        metrics["batch/rollout_batches"] = float(len(sampled))
        metrics["batch/groups_kept"] = float(sum(column[4] for column in columns))
    return batch, metrics


def to_rollouts(groups: list[list[Any]], problems: list[Any], group_offset: int = 0) -> Rollouts:
    """Flatten the engine's per-prompt completion lists (prompt-major) into a Rollouts."""
    out = Rollouts([], [], [], [], [], [], [])
    for index, (completions, problem) in enumerate(zip(groups, problems, strict=True)):
        for completion in completions:
            out.problems.append(problem)
            out.group_ids.append(group_offset + index)
            out.prompt_ids.append(list(completion.prompt_token_ids))
            out.response_ids.append(list(completion.token_ids))
            out.texts.append(completion.text)
            out.truncated.append(completion.finish_reason == "length")
            out.sampled_tokens += len(completion.prompt_token_ids) + len(completion.token_ids)
            if completion.logprobs is None or out.rollout_logprobs is None:
                out.rollout_logprobs = None
            else:
                out.rollout_logprobs.append(list(completion.logprobs))
    return out


def write_rollout_samples(path: Path, step: int, batch: Rollouts, limit: int = 8) -> None:
    """Append a few (problem, response, reward) rows of this step to rollouts.jsonl for inspection."""
    with path.open("a") as handle:
        for i in range(min(limit, len(batch))):
            handle.write(json.dumps({"step": step, "problem": getattr(batch.problems[i], "problem", ""),
                                     "response": batch.texts[i], "reward": batch.rewards[i],
                                     "truncated": batch.truncated[i]}) + "\n")
