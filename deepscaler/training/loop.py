"""The GRPO loop: ``train(config)`` runs the stages and steps; ``grpo_step(run, state)`` is one RL step and
reads top to bottom:

    sample prompts -> vLLM rollouts (n per prompt) -> rewards (process pool, bounded time)
    [dynamic sampling: drop no-signal groups, sample more prompt batches until train_batch_size groups]
    -> group advantages -> old log-probs (trainer, rollout temperature; vLLM's kept for mismatch/TIS)
    -> reference log-probs -> ppo_epochs x mini-batches of packed, token-budget micro-batches
    -> optimizer + LR schedule -> in-place weight sync into vLLM -> verify the sync on a fixed probe -> metrics

``train`` adds validation, checkpoints, resume, the 8K->16K->24K stage chain, logging and plots. No Trainer
class hierarchy: ``Run`` is a plain bag of what a stage uses, ``TrainerState`` the small state that is saved.

Determinism: the data order is a function of (seed, stage, epoch) and every vLLM call gets a seed derived
from (seed, step), so a run resumed from step k re-samples exactly what the uninterrupted run sampled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscaler.algorithms import get_advantage_estimator, overlong_reward_penalty
from deepscaler.training import checkpoint as ckpt
from deepscaler.training.config import ConfigError, StageConfig, TrainConfig, dump_yaml, stage_config, to_dict
from deepscaler.training.config import validate as validate_config
from deepscaler.training.distributed import (
    DistInfo,
    all_gather,
    all_sum,
    init_distributed,
    shard_model,
    shutdown,
)
from deepscaler.training.geometry import batch_geometry
from deepscaler.training.metrics import MetricsLogger, Progress, summarize
from deepscaler.training.phases import (
    Run,
    Timer,
    collect_rollouts,
    mismatch_metrics,
    reduce_over_ranks,
    resolve_layout,
    sequence_logprobs,
    sync_weights,
    update_policy,
    validate_policy,
    write_rollout_samples,
)
from deepscaler.training.schedule import build_optimizer, build_scheduler
from deepscaler.training.setup import (
    PromptSet,
    RewardFn,
    build_engine,
    default_reward_fn,
    encode,
    load_policy_model,
    load_tokenizer,
    load_train_problems,
    load_val_problems,
    resolve_precision,
)
from deepscaler.training.stream import DataStream, derive_seed
from deepscaler.training.sync import build_probe

StepHook = Callable[[int, dict[str, float]], None]
"""Called after every step (after its metrics row and checkpoint are written) with (step, metrics)."""


_SAYS = [True]  # False on data-parallel ranks other than 0: one rank speaks for all


def say(message: str) -> None:
    if _SAYS[0]:
        print(f"[deepscaler] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# One RL step


def grpo_step(run: Run, state: ckpt.TrainerState) -> dict[str, float]:
    """One GRPO step at global step ``state.step + 1``; returns its metrics. Updates ``state`` in place."""
    cfg, timer = run.config, Timer()
    started = time.perf_counter()
    step = state.step + 1

    # 1-3. prompts -> rollouts -> rewards; with dynamic sampling keep sampling until enough groups carry signal.
    batch, metrics = collect_rollouts(run, state, step, timer)
    if cfg.logging.log_rollouts_every and step % cfg.logging.log_rollouts_every == 0:
        write_rollout_samples(Path(cfg.trainer.run_dir) / "rollouts.jsonl", step, batch)

    # overlong reward shaping (DAPO soft punishment) before advantages; overlong filtering masks the loss.
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)
    if cfg.algorithm.overlong_buffer > 0:
        lengths = torch.tensor([len(r) for r in batch.response_ids])
        rewards = rewards + overlong_reward_penalty(lengths, cfg.data.max_response_length,
                                                    cfg.algorithm.overlong_buffer, cfg.algorithm.overlong_penalty)
    train_rows = [not (cfg.algorithm.mask_truncated and t) for t in batch.truncated]

    # with data parallelism a rank may hold no samples (dynamic sampling) while the others train: it follows them
    if all_sum(run.dist, [len(batch)])[0] > 0:
        # 4. group advantages (one scalar per response; a group never spans ranks).
        advantages = (get_advantage_estimator(cfg.algorithm.advantage)(rewards, batch.group_ids) if len(batch)
                      else torch.zeros(0))
        metrics.update(summarize([a for part in all_gather(run.dist, advantages.tolist()) for a in part],
                                 "advantage"))

        # 5. old log-probs from the trainer at the rollout temperature; compare with vLLM's.
        with timer("old_logprob"):
            old_logprobs = sequence_logprobs(run, run.model, batch, cfg.rollout.temperature)
        if batch.rollout_logprobs is not None:
            metrics.update(reduce_over_ranks(run, mismatch_metrics(old_logprobs, batch.rollout_logprobs)
                                             if len(batch) else {}))

        # 6. reference log-probs (frozen model; only when the KL term is on).
        ref_logprobs = None
        if run.ref_model is not None:
            with timer("ref"):
                ref_logprobs = sequence_logprobs(run, run.ref_model, batch, cfg.rollout.temperature)

        # 7-8. ppo_epochs x mini-batches of whole groups, packed token-budget micro-batches, optimizer steps.
        with timer("update"):
            metrics.update(update_policy(run, batch, advantages, old_logprobs, ref_logprobs, train_rows))
    else:  # dynamic sampling found no group with signal in max_rollout_batches batches: nothing to learn
        metrics["batch/skipped"] = 1.0
    run.scheduler.step()

    # 9. push the new weights into vLLM in place, then verify the engine really runs them.
    if "batch/skipped" not in metrics:
        with timer("sync"):
            metrics.update(sync_weights(run))

    # 10. metrics.
    state.step = step
    metrics.update(timer.metrics())
    metrics["timing_s/step"] = time.perf_counter() - started
    # verl's definition: every sampled token (prompt + response) per second of the whole step, per device.
    metrics["throughput/tokens_per_s"] = metrics.pop("_sampled_tokens") / metrics["timing_s/step"]
    return metrics


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """What ``train`` returns."""

    run_dir: Path
    step: int
    """Global steps completed."""
    metrics: dict[str, float]
    """The last step's metrics."""
    checkpoint: Path | None
    """The newest checkpoint written."""
    plots: list[Path] = field(default_factory=list)


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from under ``checkpoint.resume`` (auto / never / a folder)."""
    mode, run_dir = config.checkpoint.resume, Path(config.trainer.run_dir)
    latest = ckpt.latest_checkpoint(run_dir)
    if mode == "auto":
        return latest
    if mode == "never":
        if latest is not None:
            raise ConfigError(f"checkpoint.resume=never but {run_dir} already holds checkpoints (newest {latest.name}); "
                              "use checkpoint.resume=auto to continue, or a new trainer.run_dir")
        return None
    return Path(mode)


def train(config: TrainConfig, *, train_problems: Sequence[Any] | None = None,
          val_problems: dict[str, Sequence[Any]] | None = None, reward_fn: RewardFn | None = None,
          engine: Any = None, on_step_end: StepHook | None = None) -> TrainResult:
    """Run GRPO as configured: every stage of ``trainer.stages`` (or one), resuming when asked.

    Args:
        config: a validated TrainConfig (``load_config``).
        train_problems / val_problems: Problem records to use instead of loading ``data.train`` /
            ``validation.datasets`` (the demo passes its synthetic task this way).
        reward_fn: ``reward_fn(responses, problems) -> rewards``; default: DeepScaleR's math reward.
        engine: an existing RolloutEngine for this model (kept open; tests reuse one across runs).
        on_step_end: hook called after each step's metrics and checkpoint are written.
    """
    validate_config(config)
    group_existed = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist, dist_reason = init_distributed(config.precision.device)
    joined_group = dist.enabled and not group_existed  # train() leaves only a group it joined itself
    _SAYS[0] = dist.is_main
    stages = config.trainer.stages or [StageConfig()]
    stage_configs = [stage_config(config, s) for s in config.trainer.stages] or [config]
    check_data_parallel([config, *stage_configs], dist)
    run_dir = Path(config.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        dump_yaml(config, run_dir / "config.yaml")
    resume = find_resume_checkpoint(config)
    state = ckpt.load_trainer_state(resume) if resume else ckpt.TrainerState(
        data=ckpt.DataPosition(seed=derive_seed(config.trainer.seed, "data", 0)))

    # Decisions first (device, precision, attention), each printed once with its reason.
    setup = resolve_precision(config)
    setup.policy.apply_matmul_flags()
    torch.manual_seed(config.trainer.seed)
    tokenizer = load_tokenizer(config)
    from deepscaler.data import detect_think_prefill

    opens_think, think_reason = detect_think_prefill(tokenizer)
    reward_fn = reward_fn or default_reward_fn(config, opens_think)
    raw_train = list(train_problems) if train_problems is not None else load_train_problems(config)
    if config.data.limit and train_problems is not None:
        raw_train = raw_train[: config.data.limit]
    raw_val = ({k: list(v) for k, v in val_problems.items()} if val_problems is not None
               else load_val_problems(config))
    model = load_policy_model(str(resume) if resume else config.model.path, setup, config.model.attention)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = shard_model(model, dist)  # FSDP2 over the torchrun ranks; unchanged for one process
    if resume:
        ckpt.load_rng_state(resume, rank=dist.rank)
        say(f"resuming from {resume} (step {state.step}, stage {state.stage}, data epoch {state.data.epoch} "
            f"index {state.data.index}, shuffle seed {state.data.seed}; optimizer, LR schedule and RNG restored)")

    train_set = encode(raw_train, tokenizer, config.data.max_prompt_length, "train")
    total_steps = config.trainer.total_steps or config.trainer.total_epochs * (
        len(train_set.problems) // config.data.train_batch_size)
    if total_steps <= 0:
        raise ConfigError(f"no training steps: {len(train_set.problems)} usable training prompts is fewer than "
                          f"data.train_batch_size={config.data.train_batch_size}; lower the batch size, add data, or "
                          "set trainer.total_steps")
    ends = [s.until_step or total_steps for s in stages]
    for line in [f"data parallel: {dist_reason}"] + setup.lines() + [f"think prefill: {opens_think} ({think_reason})"]:
        say(line)
    own_engine = engine is None
    if own_engine:
        engine = build_engine(config, setup)

    # one rank writes the metrics file and trackers and shows progress (the metrics are already global)
    metrics_log = MetricsLogger(run_dir, config.logging.backends, config.logging.project, config.trainer.experiment,
                                to_dict(config), resume_step=state.step if resume else None, enabled=dist.is_main)
    progress = Progress(total_steps, initial=state.step, mode=config.logging.progress if dist.is_main else "none")
    last_metrics: dict[str, float] = {}
    last_checkpoint = resume
    try:
        for index, (stage, scfg) in enumerate(zip(stages, stage_configs, strict=True)):
            if state.step >= ends[index]:
                continue
            resumed_here = resume is not None and state.stage == index
            if state.stage != index or resume is None:  # fresh stage: new optimizer, schedule and data order
                state.stage, state.stage_start_step = index, state.step
                state.data = ckpt.DataPosition(seed=derive_seed(config.trainer.seed, "data", index))
            if scfg.data.max_prompt_length != config.data.max_prompt_length:
                train_set = encode(raw_train, tokenizer, scfg.data.max_prompt_length, "train")
            val_sets = {name: encode(problems, tokenizer, scfg.data.max_prompt_length, name)
                        for name, problems in raw_val.items()}
            run = _start_stage(scfg, setup, model, tokenizer, engine, train_set, reward_fn, state, index, ends,
                               resume if resumed_here else None, dist)
            label = f" {stage.name}" if stage.name else ""
            say(f"stage {index}{label}: steps {state.step + 1}..{ends[index]}")
            for line in batch_geometry(scfg, len(train_set.problems), dist.world_size).lines():
                say(line)
            if state.step == 0 and resume is None and index == 0 and scfg.validation.before_train and val_sets:
                started = time.perf_counter()
                val = validate_policy(run, val_sets, 0)
                metrics_log.log(0, {**val, "timing_s/validation": time.perf_counter() - started})
                progress.message(_val_line(0, val))
            while state.step < ends[index]:
                last_metrics = grpo_step(run, state)
                step, stage_end = state.step, state.step == ends[index]
                last_metrics.update({"stage": float(index), "epoch": float(state.data.epoch)})
                freq = scfg.validation.test_freq
                if val_sets and ((freq and step % freq == 0) or stage_end):
                    started = time.perf_counter()
                    val = validate_policy(run, val_sets, step)
                    last_metrics.update(val)
                    last_metrics["timing_s/validation"] = time.perf_counter() - started
                    progress.message(_val_line(step, val))
                metrics_log.log(step, last_metrics)  # before the checkpoint: a resumed run must find this row
                progress.update(step, last_metrics)
                save_freq = scfg.checkpoint.save_freq
                is_final = stage_end and index == len(stages) - 1
                if (save_freq and step % save_freq == 0) or (stage_end and not is_final) or (
                        is_final and scfg.checkpoint.save_at_end):
                    last_checkpoint = ckpt.save_checkpoint(
                        run_dir, state, run.model, tokenizer, run.optimizer, run.scheduler, run.scaler,
                        config=to_dict(config), keep_last=scfg.checkpoint.keep_last, protected_steps=ends[:-1],
                        dist=dist)
                    progress.message(f"step {step}: saved {last_checkpoint}")
                if on_step_end is not None:
                    on_step_end(step, last_metrics)
    finally:
        progress.close()
        metrics_log.close()
        if own_engine:
            engine.close()
        if joined_group:
            shutdown(dist)
    plots = []
    if config.logging.plots and dist.is_main:
        from deepscaler.training.plots import plot_run

        plots = plot_run(run_dir)
    say(f"done: {state.step} steps; metrics {metrics_log.path}; checkpoint {last_checkpoint}")
    return TrainResult(run_dir, state.step, last_metrics, last_checkpoint, plots)


def check_data_parallel(configs: Sequence[TrainConfig], dist: DistInfo) -> None:
    """Batch sizes (of the run's config and of each stage's) must split evenly over the data-parallel ranks."""
    if not dist.enabled:
        return
    for stage in configs:
        for field_name, value in (("data.train_batch_size", stage.data.train_batch_size),
                                  ("algorithm.ppo_mini_batch_size", stage.algorithm.ppo_mini_batch_size)):
            if value % dist.world_size:
                raise ConfigError(f"{field_name}={value} does not split over {dist.world_size} data-parallel ranks; "
                                  f"use a multiple of {dist.world_size} (or change --nproc_per_node)")


def _start_stage(config: TrainConfig, setup, model, tokenizer, engine, train_set: PromptSet, reward_fn: RewardFn,
                 state: ckpt.TrainerState, index: int, ends: list[int], resume: Path | None,
                 dist: DistInfo) -> Run:
    """Reference model, optimizer, schedule and data stream of a stage; initial weight sync + check."""
    ref_model = None
    if config.algorithm.kl_coef != 0:
        # the reference is the model the stage started from (DeepScaleR relaunched each stage from a checkpoint)
        ref_path = config.model.reference or (config.model.path if index == 0 else
                                              str(ckpt.checkpoint_dir(config.trainer.run_dir, ends[index - 1])))
        ref_model = load_policy_model(ref_path, setup, config.model.attention, trainable=False)
    optimizer = build_optimizer(model.parameters(), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps=ends[index] - state.stage_start_step)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.policy.loss_scaling)
    if resume is not None:
        ckpt.load_optimizer_state(resume, optimizer, scheduler, scaler, model=model)
    filler = tokenizer("The answer is 42, so x = 7 and y = 6.", add_special_tokens=False)["input_ids"]
    layout, layout_reason = resolve_layout(model, config.algorithm.sequence_layout)
    say(f"micro-batch layout: {layout} ({layout_reason})")
    run = Run(config=config, setup=setup, model=model, ref_model=ref_model, tokenizer=tokenizer, engine=engine,
              optimizer=optimizer, scheduler=scheduler, scaler=scaler, train=train_set,
              stream=DataStream(len(train_set.problems), state.data, shuffle=config.data.shuffle),
              reward_fn=reward_fn, probe=build_probe(train_set.prompt_ids[0], filler), layout=layout, dist=dist)
    sync_weights(run, initial=True)  # the engine started from model.path; resumed/carried weights differ
    return run


def _val_line(step: int, metrics: dict[str, float]) -> str:
    parts = [f"{k.removeprefix('val/pass@1/')} {v:.3f}" for k, v in metrics.items() if k.startswith("val/pass@1/")]
    return f"step {step} validation Pass@1: " + ", ".join(parts)
