"""The GRPO loop: ``train(config)`` runs the stages and steps; ``grpo_step(run, state)`` is one RL step and
reads top to bottom:

    sample prompts -> vLLM rollouts (n per prompt) -> rewards (process pool, bounded time)
    [dynamic sampling: drop no-signal groups, sample more prompt batches until train_batch_size groups]
    -> group advantages -> old log-probs (trainer, rollout temperature; vLLM's kept for mismatch/TIS)
    -> reference log-probs -> ppo_epochs x mini-batches of token-budget micro-batches
    -> optimizer + LR schedule -> in-place weight sync into vLLM -> verify the sync on a fixed probe -> metrics

On CUDA the engine sleeps from the end of the rollouts to the sync (vLLM sleep mode, ``rollout.sleep_level``).

Each phase lives in a file named after it (``rollouts``, ``logprobs``, ``update``, ``sync``, ``validation``);
``setup`` builds what the run needs and ``stage`` what a stage needs, so ``train`` is only the loop: validation,
metrics, checkpoints and resume around the steps of each stage. No Trainer class hierarchy: ``Run`` is a plain bag
of what a stage uses, ``TrainerState`` the small state that is saved.

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
from deepscaler.console import open_run_log
from deepscaler.training.checkpoint import TrainerState
from deepscaler.training.config import TrainConfig
from deepscaler.training.distributed import all_gather, all_sum, reduce_over_ranks
from deepscaler.training.faults import FaultKind, NonFiniteStepsError, after_nonfinite_update, classify, where
from deepscaler.training.incidents import record_incident
from deepscaler.training.logprobs import mismatch_metrics, reference_logprobs, sequence_logprobs
from deepscaler.training.metrics import Timer, summarize
from deepscaler.training.plots import plot_run
from deepscaler.training.rank_log import logger
from deepscaler.training.rollouts import collect_rollouts, write_rollout_samples
from deepscaler.training.run import RewardFn, Run
from deepscaler.training.setup import setup_session
from deepscaler.training.stage import log_stage_start, plan_stages, save_stage_checkpoint, start_stage
from deepscaler.training.sync import sync_weights
from deepscaler.training.update import update_policy
from deepscaler.training.validation import validate_policy, validation_line

StepHook = Callable[[int, dict[str, float]], None]
"""Called after every step (after its metrics row and checkpoint are written) with (step, metrics)."""


# ---------------------------------------------------------------------------------------------------------
# One RL step


def grpo_step(run: Run, state: TrainerState) -> dict[str, float]:
    """One GRPO step at global step ``state.step + 1``; returns its metrics. Updates ``state`` in place."""
    cfg, timer = run.config, Timer()
    started = time.perf_counter()
    step = state.step + 1
    where.step = step

    # 1-3. prompts -> rollouts -> rewards; with dynamic sampling keep sampling until enough groups carry signal.
    batch, metrics = collect_rollouts(run, state, step, timer)
    run.engine.release_memory()  # sleep mode: the log-probs and the update get the engine's GPU memory (CUDA)
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
            metrics.update(reduce_over_ranks(run.dist, mismatch_metrics(old_logprobs, batch.rollout_logprobs)
                                             if len(batch) else {}))

        # 6. reference log-probs (frozen model; only when the KL term is on).
        ref_logprobs = None
        if run.ref_model is not None:
            with timer("ref"):
                ref_logprobs = reference_logprobs(run, batch, cfg.rollout.temperature)

        # 7-8. ppo_epochs x mini-batches of whole groups, token-budget micro-batches, optimizer steps.
        with timer("update"):
            metrics.update(update_policy(run, batch, advantages, old_logprobs, ref_logprobs, train_rows))
        if not run.scaler.is_enabled():  # with fp16 loss scaling, skipped overflow steps are the scaler's business
            check_nonfinite(run, step, metrics.get("actor/skipped_updates", 0.0) == 0.0)
    else:  # dynamic sampling found no group with signal in max_rollout_batches batches: nothing to learn
        metrics["batch/skipped"] = 1.0
    run.scheduler.step()

    # 9. push the new weights into vLLM in place (waking it), then verify the engine really runs them. A step
    # with no update wakes the engine with the weights it slept with; level-2 sleep kept none, so it syncs.
    if "batch/skipped" not in metrics or run.engine.sleep_level == 2:
        with timer("sync"):
            metrics.update(sync_weights(run))
    else:
        run.engine.resume()

    # 10. metrics.
    state.step = step
    metrics.update(run.faults.metrics())
    metrics.update(timer.metrics())
    metrics["timing_s/step"] = time.perf_counter() - started
    # verl's definition: every sampled token (prompt + response) per second of the whole step, per device.
    metrics["throughput/tokens_per_s"] = batch.sampled_tokens / metrics["timing_s/step"]
    return metrics


def check_nonfinite(run: Run, step: int, finite: bool) -> None:
    """Count a step whose loss or gradient was NaN/Inf (its optimizer steps were skipped: weights and optimizer state
    untouched); stop after ``faults.max_nonfinite_steps`` in a row."""
    decision = after_nonfinite_update(run.faults, finite, run.config.faults.max_nonfinite_steps)
    if decision.action == "stop":
        raise NonFiniteStepsError(f"step {step}: {decision.reason}")
    if decision.action == "skip":
        logger.warning(f"step {step}: {decision.reason} (faults/skipped_nonfinite {run.faults.skipped_nonfinite})")


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


def train(config: TrainConfig, *, train_problems: Sequence[Any] | None = None,
          val_problems: dict[str, Sequence[Any]] | None = None, reward_fn: RewardFn | None = None,
          engine: Any = None, on_step_end: StepHook | None = None) -> TrainResult:
    """Run GRPO as configured: every stage of ``trainer.stages`` (or one), resuming when asked.

    Args:
        config: a TrainConfig (``load_config``); validated again here.
        train_problems / val_problems: Problem records to use instead of loading ``data.train`` /
            ``validation.datasets`` (the demo passes its synthetic task this way).
        reward_fn: ``reward_fn(responses, problems) -> rewards``; default: DeepScaleR's math reward.
        engine: an existing RolloutEngine for this model (kept open; tests reuse one across runs).
        on_step_end: hook called after each step's metrics and checkpoint are written.
    """
    try:
        session = setup_session(config, train_problems, val_problems, reward_fn, engine)
    except Exception as err:
        if classify(err).kind is not FaultKind.OTHER:  # a device fault at start-up; config errors need no report
            record_incident(config.trainer.run_dir, err)
        raise
    run_log = open_run_log(session.run_dir, "train", session.dist.rank)  # RUN_DIR/logs/: every library's records
    state, progress, metrics_log = session.state, session.progress, session.metrics_log
    last_metrics: dict[str, float] = {}
    last_checkpoint = session.resume
    try:
        for stage in plan_stages(config, session.total_steps):
            if state.step >= stage.end:
                continue
            run = start_stage(session, stage)
            log_stage_start(session, stage, run)
            if (state.step == 0 and session.resume is None and stage.index == 0
                    and stage.config.validation.before_train and run.val_sets):
                val = validate_policy(run, 0)
                metrics_log.log(0, val)
                progress.message(validation_line(0, val))
            while state.step < stage.end:
                last_metrics = grpo_step(run, state)
                step = state.step
                last_metrics.update({"stage": float(stage.index), "epoch": float(state.data.epoch)})
                if run.val_sets and stage.validates_after(step):
                    val = validate_policy(run, step)
                    last_metrics.update(val)
                    progress.message(validation_line(step, val))
                metrics_log.log(step, last_metrics)  # before the checkpoint: a resumed run must find this row
                progress.update(step, last_metrics)
                if stage.saves_after(step):
                    last_checkpoint = save_stage_checkpoint(session, run, stage)
                    progress.message(f"step {step}: saved {last_checkpoint}")
                if on_step_end is not None:
                    on_step_end(step, last_metrics)
    except Exception as err:
        record_incident(session.run_dir, err)
        raise
    finally:
        session.close()
        run_log.close()
    plots = plot_run(session.run_dir) if config.logging.plots and session.dist.is_main else []
    logger.info(f"done: {state.step} steps; metrics {metrics_log.path}; checkpoint {last_checkpoint}")
    return TrainResult(session.run_dir, state.step, last_metrics, last_checkpoint, plots)
