"""The phases of a GRPO step (rollouts, log-probs, policy update, weight sync, validation) as functions over a
``Run`` (what a stage uses) and a ``Rollouts`` batch. ``loop.grpo_step`` calls them in order."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscaler.algorithms import (
    LossNormalizer,
    PolicyLossConfig,
    compute_policy_loss,
    filter_constant_groups,
    sum_metrics,
)
from deepscaler.training import checkpoint as ckpt
from deepscaler.training.config import TrainConfig
from deepscaler.training.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    all_gather,
    all_max,
    all_sum,
    full_tensors,
    plain_norm,
)
from deepscaler.training.metrics import group_solve_rates, response_metrics, summarize
from deepscaler.training.packing import (
    ModelBatch,
    pack_sequences,
    pad_responses,
    pad_sequences,
    plan_micro_batches,
    restore_order,
    token_logprobs,
)
from deepscaler.training.setup import PrecisionSetup, PromptSet, RewardFn
from deepscaler.training.stream import DataStream, derive_seed
from deepscaler.training.sync import WeightSyncError, check_sync

logger = logging.getLogger("deepscaler.train")


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

    def __len__(self) -> int:
        return len(self.response_ids)

    def select(self, keep: list[int]) -> Rollouts:
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return Rollouts(pick(self.problems), pick(self.group_ids), pick(self.prompt_ids), pick(self.response_ids),
                        pick(self.rollout_logprobs) if self.rollout_logprobs is not None else None,
                        pick(self.texts), pick(self.truncated), pick(self.rewards))

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
        return joined


@dataclass
class Run:
    """What one stage of training uses (built by ``train``; not saved)."""

    config: TrainConfig
    setup: PrecisionSetup
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    tokenizer: Any
    engine: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train: PromptSet
    stream: DataStream
    reward_fn: RewardFn
    probe: tuple[list[int], int]
    layout: str = "packed"
    """"packed" or "padded" micro-batches (see resolve_layout)."""
    sync_history: dict[str, Any] = field(default_factory=dict)
    dist: DistInfo = SINGLE_PROCESS
    """Data-parallel rank and world size (see deepscaler.training.distributed)."""


class Timer:
    """``with timer("rollout"): ...`` accumulates seconds into ``timer.seconds["rollout"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"timing_s/{name}": value for name, value in self.seconds.items()}


def collect_rollouts(run: Run, state: ckpt.TrainerState, step: int, timer: Timer) -> tuple[Rollouts, dict]:
    """Sample prompt batches, generate and score; with dynamic sampling drop groups whose rewards are all equal
    and refill until ``train_batch_size`` groups remain or ``max_rollout_batches`` batches were drawn.

    With data parallelism every rank draws the same prompts and generates its own slice of them, each prompt with
    the seed a single process would give it; group ids are global, and the metrics cover all ranks."""
    cfg = run.config
    from deepscaler.rollout import SamplingSettings

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
    # this rank's sampled tokens: throughput is per device, as verl reports it
    metrics["_sampled_tokens"] = float(sum(len(p) + len(r) for p, r in
                                           zip(everything.prompt_ids, everything.response_ids, strict=True)))
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
            if completion.logprobs is None or out.rollout_logprobs is None:
                out.rollout_logprobs = None
            else:
                out.rollout_logprobs.append(list(completion.logprobs))
    return out


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def resolve_layout(model: torch.nn.Module, request: str = "auto") -> tuple[str, str]:
    """("packed" | "padded", reason). Packing removes padding but, without a varlen attention kernel, attention
    runs over the whole pack with a block-diagonal mask: O((sum of lengths)^2) instead of O(sum of length^2)."""
    implementation = str(getattr(model.config, "_attn_implementation", None) or "eager")
    if request != "auto":
        return request, f"algorithm.sequence_layout={request}"
    if implementation in VARLEN_ATTENTION:
        return "packed", f"{implementation} attends within each packed sequence (varlen): no padding, no waste"
    return "padded", (f"{implementation} has no varlen path: a pack would attend over all its tokens, so "
                      "length-sorted padded micro-batches are cheaper")


def plan_padded_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted micro-batches whose padded size (count x longest) stays within ``max_tokens``.

    Args:
        lengths: ``[N]`` prompt+response token counts. max_tokens: budget including padding.
    Returns:
        Lists of indices into ``lengths``; every index once (restore with ``restore_order``).
    """
    plan: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > max_tokens:
            plan.append(current)
            current = []
        current.append(index)
    if current:
        plan.append(current)
    return plan


def plan_batches(run: Run, lengths: list[int]) -> list[list[int]]:
    budget = run.config.algorithm.max_tokens_per_micro_batch
    if run.layout == "packed":
        return plan_micro_batches(lengths, budget)
    return plan_padded_micro_batches(lengths, budget)


def make_batch(run: Run, prompts: list[list[int]], responses: list[list[int]]) -> ModelBatch:
    if run.layout == "packed":
        return pack_sequences(prompts, responses, device=run.setup.device)
    pad = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    return pad_sequences(prompts, responses, pad_token_id=pad, device=run.setup.device)


def sequence_logprobs(run: Run, model: torch.nn.Module, batch: Rollouts, temperature: float) -> list[torch.Tensor]:
    """Per-sequence log-probs of the response tokens (no grad), packed micro-batches within the token budget."""
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    plan = lockstep(run, plan_batches(run, lengths))
    results = []
    with torch.no_grad(), run.setup.policy.autocast(run.setup.device.type):
        for indices in plan:
            if not indices:  # this rank has run out: an empty forward keeps FSDP's all-gathers in step
                token_logprobs(model, idle_batch(run), temperature)
                results.append([])
                continue
            micro = make_batch(run, [batch.prompt_ids[i] for i in indices], [batch.response_ids[i] for i in indices])
            logprobs, _ = token_logprobs(model, micro, temperature)
            results.append([logprobs[k, : len(batch.response_ids[i])].float().cpu() for k, i in enumerate(indices)])
    return restore_order(results, plan)


def lockstep(run: Run, plan: list[list[int]]) -> list[list[int]]:
    """Pad a micro-batch plan with empty micro-batches up to the longest plan of any rank (FSDP needs every rank
    to run the same number of forwards and backwards). Unchanged for a single process."""
    return plan + [[] for _ in range(all_max(run.dist, len(plan)) - len(plan))]


def idle_batch(run: Run) -> ModelBatch:
    """A one-token prompt + one-token response: what an idle rank feeds the model to keep in step."""
    token = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    return make_batch(run, [[token]], [[token]])


def mismatch_metrics(trainer: list[torch.Tensor], rollout: list[list[float]]) -> dict[str, float]:
    """``rollout/logprob_diff`` (mean |trainer - vLLM| per token) plus deepscaler.precision's mismatch stats."""
    trainer_padded = pad_responses(trainer)
    rollout_padded = pad_responses([torch.tensor(r) for r in rollout])
    mask = pad_responses([torch.ones(len(r)) for r in rollout])
    count = mask.sum().clamp(min=1)
    metrics = {"rollout/logprob_diff": float(((trainer_padded - rollout_padded).abs() * mask).sum() / count)}
    with contextlib.suppress(ImportError):
        from deepscaler.precision import logprob_mismatch

        for key, value in logprob_mismatch(trainer_padded, rollout_padded, mask).items():
            name = key if "/" in key else f"rollout/logprob_diff_{key}"
            metrics[name] = float(value)
    return metrics


def reduce_over_ranks(run: Run, metrics: dict[str, float], count_key: str = "rollout/num_tokens") -> dict[str, float]:
    """This rank's per-token statistics made global (see :func:`combine_rank_metrics`)."""
    if not run.dist.enabled:
        return metrics
    return combine_rank_metrics(all_gather(run.dist, metrics), count_key)


def combine_rank_metrics(per_rank: list[dict[str, float]], count_key: str = "rollout/num_tokens") -> dict[str, float]:
    """Statistics of several ranks as one: ``count_key`` summed, ``*max*`` keys the maximum, the others the mean
    weighted by each rank's ``count_key`` (the mean over all ranks' tokens together). Empty dicts (ranks with
    no samples) are ignored."""
    every = [m for m in per_rank if m]
    out: dict[str, float] = {}
    for key in sorted({k for m in every for k in m}):
        values = [(m[key], m.get(count_key, 1.0)) for m in every if key in m]
        if key == count_key:
            out[key] = sum(v for v, _ in values)
        elif "max" in key:
            out[key] = max(v for v, _ in values)
        else:
            out[key] = sum(v * w for v, w in values) / (sum(w for _, w in values) or 1.0)
    return out


def split_groups(group_ids: list[int], parts: int) -> list[list[int]]:
    """Sample indices of ``parts`` mini-batches made of whole groups (as even as possible, order kept). With
    fewer groups than parts some mini-batches are empty: every data-parallel rank makes the same number of
    optimizer steps even when dynamic sampling left it fewer groups."""
    order = sorted(set(group_ids), key=group_ids.index)
    parts = max(1, parts)
    bounds = [round(k * len(order) / parts) for k in range(parts + 1)]
    members: dict[int, list[int]] = {}
    for index, group in enumerate(group_ids):
        members.setdefault(group, []).append(index)
    return [[i for g in order[bounds[k]: bounds[k + 1]] for i in members[g]] for k in range(parts)]


def update_policy(run: Run, batch: Rollouts, advantages: torch.Tensor, old_logprobs: list[torch.Tensor],
                  ref_logprobs: list[torch.Tensor] | None, train_rows: list[bool]) -> dict[str, float]:
    """ppo_epochs x mini-batches; each mini-batch: packed micro-batches (token budget), loss shares with
    mini-batch-global normalisers, summed gradients, grad clip, one optimizer step."""
    cfg, setup = run.config, run.setup
    algo = cfg.algorithm
    loss_config = PolicyLossConfig(
        clip_ratio_low=algo.clip_ratio_low, clip_ratio_high=algo.clip_ratio_high, loss_agg_mode=algo.loss_agg_mode,
        kl_coef=algo.kl_coef if run.ref_model is not None else 0.0, kl_estimator=algo.kl_estimator,
        entropy_coef=algo.entropy_coef, tis_cap=algo.tis_cap)
    use_rollout_logprobs = algo.tis_cap is not None and batch.rollout_logprobs is not None
    if algo.tis_cap is not None and batch.rollout_logprobs is None:
        raise RuntimeError("algorithm.tis_cap is set but the rollout engine returned no log-probs")
    # the optimizer's own (with FSDP: sharded) parameters, for the gradient norm and clipping
    parameters = [p for group in run.optimizer.param_groups for p in group["params"] if p.requires_grad]
    updates: list[dict[str, float]] = []
    mini_batches = split_groups(batch.group_ids, cfg.data.train_batch_size // algo.ppo_mini_batch_size)
    for _epoch in range(algo.ppo_epochs):
        for members in mini_batches:
            rows = [i for i in members if train_rows[i] and batch.response_ids[i]]
            # denominators of the whole mini-batch, over all ranks
            num_tokens, num_sequences = all_sum(run.dist, [sum(len(batch.response_ids[i]) for i in rows), len(rows)])
            if num_sequences == 0:
                continue
            normalizer = LossNormalizer(num_tokens=num_tokens, num_sequences=num_sequences,
                                        token_sum_scale=float(cfg.data.max_response_length),
                                        dp_size=run.dist.world_size)
            lengths = [len(batch.prompt_ids[i]) + len(batch.response_ids[i]) for i in rows]
            shares = []
            for micro in lockstep(run, plan_batches(run, lengths)):
                if not micro:  # idle rank: a zero-weight forward + backward keeps FSDP's collectives in step
                    with setup.policy.autocast(setup.device.type):
                        idle, _ = token_logprobs(run.model, idle_batch(run), cfg.rollout.temperature)
                    (idle.sum() * 0.0).backward()
                    continue
                ids = [rows[k] for k in micro]
                packed = make_batch(run, [batch.prompt_ids[i] for i in ids], [batch.response_ids[i] for i in ids])
                with setup.policy.autocast(setup.device.type):
                    logprobs, entropy = token_logprobs(run.model, packed, cfg.rollout.temperature, compute_entropy=True)
                def on_device(values: list[torch.Tensor], ids: list[int] = ids) -> torch.Tensor:
                    return pad_responses([values[i] for i in ids]).to(setup.device)

                loss, shares_metrics = compute_policy_loss(
                    logprobs, on_device(old_logprobs), advantages[ids].to(setup.device), packed.response_mask,
                    normalizer, loss_config,
                    ref_logprobs=on_device(ref_logprobs) if ref_logprobs is not None else None,
                    entropy=entropy,
                    rollout_logprobs=(pad_responses([torch.tensor(batch.rollout_logprobs[i]) for i in ids])
                                      .to(setup.device) if use_rollout_logprobs else None))
                run.scaler.scale(loss).backward() if run.scaler.is_enabled() else loss.backward()
                shares.append(shares_metrics)
            update = sum_metrics(shares)
            if run.dist.enabled:  # each rank holds its shares of the mini-batch-global means: add them up
                every = all_gather(run.dist, update)
                update = {k: sum(rank.get(k, 0.0) for rank in every) for k in sorted({k for r in every for k in r})}
            update.update(optimizer_step(run, parameters))
            updates.append(update)
    if not updates:
        return {"actor/lr": run.optimizer.param_groups[0]["lr"], "actor/updates": 0.0}
    keys = {k for u in updates for k in u}
    metrics = {k: sum(u[k] for u in updates if k in u) / sum(1 for u in updates if k in u) for k in keys}
    metrics["actor/updates"] = float(len(updates))
    return metrics


def optimizer_step(run: Run, parameters: list[torch.nn.Parameter]) -> dict[str, float]:
    """Unscale (fp16), clip the global grad norm (logging the pre-clip norm), step unless non-finite."""
    if run.scaler.is_enabled():
        run.scaler.unscale_(run.optimizer)
    clip = run.config.optim.grad_clip
    grad_norm = plain_norm(torch.nn.utils.clip_grad_norm_(parameters, clip if clip else float("inf")))
    finite = bool(torch.isfinite(grad_norm))
    lr = run.optimizer.param_groups[0]["lr"]
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # skips the step itself on inf/nan
        run.scaler.update()
    elif finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"actor/grad_norm": float(grad_norm) if finite else float("nan"), "actor/lr": lr,
            "actor/skipped_updates": 0.0 if finite else 1.0}


# ---------------------------------------------------------------------------------------------------------
# Weight sync + verification


def trainer_probe_logprobs(run: Run) -> list[float]:
    sequence, prompt_length = run.probe
    single = pack_sequences([sequence[:prompt_length]], [sequence[prompt_length:]], device=run.setup.device)
    with torch.no_grad(), run.setup.policy.autocast(run.setup.device.type):
        logprobs, _ = token_logprobs(run.model, single, 1.0)
    return logprobs[0].float().cpu().tolist()


def engine_probe_logprobs(run: Run) -> list[float]:
    sequence, prompt_length = run.probe
    return [float(x) for x in run.engine.score([sequence], [prompt_length])[0]]


def sync_weights(run: Run, initial: bool = False) -> dict[str, float]:
    """Copy the trainer's weights into the engine (HF names, in place; sharded parameters gathered) and verify on
    the probe. With data parallelism every rank checks its own engine, and a failure on any rank stops them all."""
    run.engine.update_weights(full_tensors(run.model))
    if not run.config.rollout.verify_sync:
        return {}
    trainer_now, engine_now = trainer_probe_logprobs(run), engine_probe_logprobs(run)
    history = run.sync_history
    result = check_sync(engine_now, trainer_now, tolerance=run.setup.sync_tolerance,
                        engine_before=None if initial else history.get("engine"),
                        trainer_before=None if initial else history.get("trainer"),
                        noise_floor=history.get("noise_floor", 0.0))
    failures = all_gather(run.dist, None if result.ok else result.message)
    if any(failures):
        raise WeightSyncError("; ".join(f"rank {r}: {m}" if run.dist.enabled else m
                                        for r, m in enumerate(failures) if m))
    if initial:
        history["noise_floor"] = result.diff
    history.update(engine=engine_now, trainer=trainer_now)
    return {"sync/probe_diff": result.diff, "sync/trainer_change": result.trainer_change,
            "sync/engine_change": result.engine_change}


# ---------------------------------------------------------------------------------------------------------
# Validation


def validate_policy(run: Run, val_sets: dict[str, PromptSet], step: int) -> dict[str, float]:
    """Pass@1 (mean reward over ``validation.n`` samples per problem) on each validation set; with data
    parallelism each rank takes a slice of the problems (same seeds per problem as one process)."""
    from deepscaler.rollout import SamplingSettings

    cfg = run.config.validation
    metrics: dict[str, float] = {}
    for name, prompts in val_sets.items():
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
    return metrics


def write_rollout_samples(path: Path, step: int, batch: Rollouts, limit: int = 8) -> None:
    """Append a few (problem, response, reward) rows of this step to rollouts.jsonl for inspection."""
    with path.open("a") as handle:
        for i in range(min(limit, len(batch))):
            handle.write(json.dumps({"step": step, "problem": getattr(batch.problems[i], "problem", ""),
                                     "response": batch.texts[i], "reward": batch.rewards[i],
                                     "truncated": batch.truncated[i]}) + "\n")
