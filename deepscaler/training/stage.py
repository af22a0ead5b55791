"""The stages of a run (DeepScaleR's 8K -> 16K -> 24K chain; one stage for a plain run): where each ends, when it
validates and saves, and what starting one builds (reference model, optimizer, LR schedule, data stream, micro-batch
plan, the first weight sync)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from deepscaler.training import checkpoint as ckpt
from deepscaler.training.config import StageConfig, TrainConfig, stage_config, to_dict
from deepscaler.training.geometry import batch_geometry
from deepscaler.training.micro_batches import MicroBatcher
from deepscaler.training.rank_log import logger
from deepscaler.training.run import Run
from deepscaler.training.schedule import build_optimizer, build_scheduler
from deepscaler.training.setup import Session, encode, load_policy_model
from deepscaler.training.stream import DataStream, derive_seed
from deepscaler.training.sync import build_probe, sync_weights

PROBE_FILLER = "The answer is 42, so x = 7 and y = 6."
"""Text appended to the first training prompt to make the weight-sync probe sequence."""


@dataclass(frozen=True)
class Stage:
    """One stage of the chain."""

    index: int
    name: str
    end: int
    """The global step at which the stage ends."""
    config: TrainConfig
    """The run's config with this stage's overrides."""
    is_last: bool
    protected_steps: tuple[int, ...]
    """Checkpoints never deleted: the ends of every stage but the last (the next stage's reference model)."""

    def validates_after(self, step: int) -> bool:
        freq = self.config.validation.test_freq
        return bool(freq and step % freq == 0) or step == self.end

    def saves_after(self, step: int) -> bool:
        save_freq = self.config.checkpoint.save_freq
        if step == self.end:  # a stage's end is always kept (the next starts from it); the run's end if asked
            return not self.is_last or self.config.checkpoint.save_at_end
        return bool(save_freq and step % save_freq == 0)


def plan_stages(config: TrainConfig, total_steps: int) -> list[Stage]:
    """The stages of ``trainer.stages`` (or one stage running the whole config) with their end steps."""
    stages = config.trainer.stages or [StageConfig()]
    configs = [stage_config(config, s) for s in config.trainer.stages] or [config]
    ends = [s.until_step or total_steps for s in stages]
    return [Stage(index, stage.name, ends[index], staged, index == len(stages) - 1, tuple(ends[:-1]))
            for index, (stage, staged) in enumerate(zip(stages, configs, strict=True))]


def start_stage(session: Session, stage: Stage) -> Run:
    """Enter ``stage``: reset the trainer state's stage position unless resuming inside it, then build the
    stage's reference model, optimizer, schedule and data stream, and sync the engine to the trainer's weights."""
    config, state, decisions, tokenizer = stage.config, session.state, session.decisions, session.tokenizer
    resume = session.resume if session.resume is not None and state.stage == stage.index else None
    if resume is None:  # fresh stage: new optimizer, schedule and data order
        state.stage, state.stage_start_step = stage.index, state.step
        state.data = ckpt.DataPosition(seed=derive_seed(session.config.trainer.seed, "data", stage.index))
    prompt_length = config.data.max_prompt_length
    train_set = (session.train_set if prompt_length == session.config.data.max_prompt_length
                 else encode(session.raw_train, tokenizer, prompt_length, "train"))
    val_sets = {name: encode(problems, tokenizer, prompt_length, name) for name, problems in session.raw_val.items()}
    ref_model = None
    if config.algorithm.kl_coef != 0:
        # the reference is the model the stage started from (DeepScaleR relaunched each stage from a checkpoint)
        ref_path = config.model.reference or (config.model.path if stage.index == 0 else str(
            ckpt.checkpoint_dir(config.trainer.run_dir, stage.protected_steps[stage.index - 1])))
        ref_model = load_policy_model(ref_path, decisions, trainable=False,
                                      device="cpu" if config.model.reference_offload else None)
    optimizer = build_optimizer(session.model.parameters(), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps=stage.end - state.stage_start_step)
    scaler = torch.amp.GradScaler(decisions.device.type, enabled=decisions.policy.loss_scaling)
    if resume is not None:
        ckpt.load_optimizer_state(resume, optimizer, scheduler, scaler, model=session.model)
    filler = tokenizer(PROBE_FILLER, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batcher = MicroBatcher(decisions.layout, config.algorithm.max_tokens_per_micro_batch, pad, decisions.device,
                           session.dist)
    run = Run(config=config, decisions=decisions, model=session.model, ref_model=ref_model, tokenizer=tokenizer,
              engine=session.engine, optimizer=optimizer, scheduler=scheduler, scaler=scaler, train=train_set,
              val_sets=val_sets, stream=DataStream(len(train_set.problems), state.data, shuffle=config.data.shuffle),
              reward_fn=session.reward_fn, probe=build_probe(train_set.prompt_ids[0], filler), batcher=batcher,
              dist=session.dist, faults=session.faults)
    sync_weights(run, initial=True)  # the engine started from model.path; resumed/carried weights differ
    return run


def save_stage_checkpoint(session: Session, run: Run, stage: Stage) -> Path:
    """Checkpoint the trainer state, weights, optimizer, schedule and RNG at the current step."""
    return ckpt.save_checkpoint(
        session.run_dir, session.state, run.model, run.tokenizer, run.optimizer, run.scheduler, run.scaler,
        config=to_dict(session.config), keep_last=stage.config.checkpoint.keep_last,
        protected_steps=list(stage.protected_steps), dist=session.dist)


def log_stage_start(session: Session, stage: Stage, run: Run) -> None:
    """``stage 1 16k: steps 1041..1520`` and the stage's batch geometry."""
    label = f" {stage.name}" if stage.name else ""
    logger.info(f"stage {stage.index}{label}: steps {session.state.step + 1}..{stage.end}")
    for line in batch_geometry(stage.config, len(run.train.problems), session.dist.world_size).lines():
        logger.info(line)
