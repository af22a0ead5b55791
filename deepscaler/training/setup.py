"""Setting up a run, separate from the loop that runs it: distributed group, run directory and resume point, the
run's decisions (printed once), tokenizer, data, reward function, policy model, rollout engine, metrics writers.
:func:`setup_session` returns a :class:`Session` holding them; ``loop.train`` then only loops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from deepscaler.console import Progress
from deepscaler.data import detect_think_prefill, encode_prompts, load_problems
from deepscaler.precision import load_causal_lm, to_torch_dtype
from deepscaler.rewards import score_responses
from deepscaler.rollout import RolloutEngine
from deepscaler.training import checkpoint as ckpt
from deepscaler.training.config import ConfigError, TrainConfig, dump_yaml, stage_config, to_dict
from deepscaler.training.config import validate as validate_config
from deepscaler.training.decisions import RunDecisions, check_model_path, decide, engine_config
from deepscaler.training.distributed import DistInfo, full_tensors, init_distributed, shard_model, shutdown
from deepscaler.training.engine_guard import GuardedEngine
from deepscaler.training.faults import FaultCounters, where
from deepscaler.training.incidents import decisions_record, exclusions_for_run
from deepscaler.training.metrics import MetricsLogger
from deepscaler.training.rank_log import configure_rank_logging, logger
from deepscaler.training.run import PromptSet, RewardFn
from deepscaler.training.stream import derive_seed


@dataclass
class Session:
    """What every stage of one ``train`` call shares (built once by :func:`setup_session`)."""

    config: TrainConfig
    dist: DistInfo
    decisions: RunDecisions
    state: ckpt.TrainerState
    """The saved part: step, stage, data position (updated in place by the loop)."""
    resume: Path | None
    """The checkpoint this call resumed from."""
    tokenizer: Any
    model: torch.nn.Module
    engine: Any
    reward_fn: RewardFn
    raw_train: list[Any]
    raw_val: dict[str, list[Any]]
    train_set: PromptSet
    """``raw_train`` encoded at the run's ``data.max_prompt_length``."""
    total_steps: int
    metrics_log: MetricsLogger
    progress: Progress
    own_engine: bool
    joined_group: bool
    """Whether this call started the process group (and so ends it)."""
    faults: FaultCounters
    """Faults survived so far (engine restarts, skipped non-finite steps, OOM retries)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.trainer.run_dir)

    def close(self) -> None:
        self.progress.close()
        self.metrics_log.close()
        if self.own_engine:
            self.engine.close()
        if self.joined_group:
            shutdown(self.dist)


def setup_session(config: TrainConfig, train_problems: Sequence[Any] | None = None,
                  val_problems: dict[str, Sequence[Any]] | None = None, reward_fn: RewardFn | None = None,
                  engine: Any = None) -> Session:
    """Everything a run needs before its first stage, in the order that keeps a resumed run bit-identical."""
    validate_config(config)
    group_existed = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist, dist_reason = init_distributed(config.precision.device)
    configure_rank_logging(dist.rank)
    check_data_parallel([config, *[stage_config(config, s) for s in config.trainer.stages]], dist)
    run_dir = Path(config.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        dump_yaml(config, run_dir / "config.yaml")
    resume = find_resume_checkpoint(config)
    state = ckpt.load_trainer_state(resume) if resume else ckpt.TrainerState(
        data=ckpt.DataPosition(seed=derive_seed(config.trainer.seed, "data", 0)))

    # attention backends that hit a kernel fault in an earlier attempt of this run are left out this time
    exclude = exclusions_for_run(run_dir, config.faults.exclude_faulty_backends and config.checkpoint.resume != "never",
                                 say=logger.warning)
    decisions = decide(config, engine, ranks=dist.world_size, exclude=exclude)
    where.decisions = decisions_record(decisions)
    decisions.policy.apply_matmul_flags()
    torch.manual_seed(config.trainer.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer or config.model.path)
    opens_think, think_reason = detect_think_prefill(tokenizer)
    reward_fn = reward_fn or default_reward_fn(config, opens_think)
    raw_train = list(train_problems) if train_problems is not None else load_train_problems(config)
    if config.data.limit and train_problems is not None:
        raw_train = raw_train[: config.data.limit]
    raw_val = ({k: list(v) for k, v in val_problems.items()} if val_problems is not None
               else load_val_problems(config))
    model = load_policy_model(str(resume) if resume else config.model.path, decisions)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = shard_model(model, dist, decisions.policy)  # FSDP2 over the torchrun ranks; unchanged for one process
    if resume:
        ckpt.load_rng_state(resume, rank=dist.rank)
        logger.info(f"resuming from {resume} (step {state.step}, stage {state.stage}, data epoch {state.data.epoch} "
                    f"index {state.data.index}, shuffle seed {state.data.seed}; optimizer, LR schedule and RNG "
                    "restored)")

    train_set = encode(raw_train, tokenizer, config.data.max_prompt_length, "train")
    total_steps = config.trainer.total_steps or config.trainer.total_epochs * (
        len(train_set.problems) // config.data.train_batch_size)
    if total_steps <= 0:
        raise ConfigError(f"no training steps: {len(train_set.problems)} usable training prompts is fewer than "
                          f"data.train_batch_size={config.data.train_batch_size}; lower the batch size, add data, or "
                          "set trainer.total_steps")
    for line in [f"data parallel: {dist_reason}", *decisions.lines(), f"think prefill: {opens_think} ({think_reason})"]:
        logger.info(line)
    own_engine = engine is None
    if own_engine:
        engine = build_engine(config, decisions)
    faults = FaultCounters()
    # a failed engine call rebuilds the engine from the trainer's weights and is retried with the same arguments
    # (seeds); not with data parallelism, where gathering the weights is a collective the other ranks are not in
    rebuild = (lambda: build_engine(config, decisions)) if own_engine and not dist.enabled else None
    engine = GuardedEngine(engine, rebuild, lambda: full_tensors(model), faults, config.faults.max_engine_restarts,
                           say=logger.warning)
    # one rank writes the metrics file and trackers and shows progress (the metrics are already global)
    metrics_log = MetricsLogger(run_dir, config.logging.backends, config.logging.project, config.trainer.experiment,
                                to_dict(config), resume_step=state.step if resume else None, enabled=dist.is_main)
    progress = Progress(total_steps, initial=state.step, mode=config.logging.progress if dist.is_main else "none")
    return Session(config, dist, decisions, state, resume, tokenizer, model, engine, reward_fn, raw_train, raw_val,
                   train_set, total_steps, metrics_log, progress, own_engine, dist.enabled and not group_existed,
                   faults)


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


def load_policy_model(path: str, decisions: RunDecisions, trainable: bool = True,
                      device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a causal LM with the run's trainer attention (deepscaler.precision.load_causal_lm) and move it to
    ``device`` (None: the run's); a frozen copy (``trainable=False``) is kept in the compute dtype, as DeepScaleR
    kept its reference model in bf16."""
    check_model_path(path)
    model, _ = load_causal_lm(path, decisions.policy, decision=decisions.trainer_attention)
    if trainable:
        model.to(device=device or decisions.device, dtype=to_torch_dtype(decisions.policy.param_dtype))
        model.train()
    else:
        model.to(device=device or decisions.device, dtype=to_torch_dtype(decisions.policy.compute_dtype))
        model.eval()
        model.requires_grad_(False)
    return model


def build_engine(config: TrainConfig, decisions: RunDecisions) -> RolloutEngine:
    """The vLLM rollout engine for ``model.path``, started with the run's rollout decision and engine memory."""
    return RolloutEngine(engine_config(config, decisions.policy, decisions.engine_memory),
                         decision=decisions.rollout_attention)


def encode(problems: Sequence[Any], tokenizer: Any, max_prompt_length: int, label: str) -> PromptSet:
    """Templated, tokenised prompts (those over ``max_prompt_length`` dropped, as DeepScaleR did)."""
    encoded = encode_prompts(list(problems), tokenizer, max_prompt_length, label=label)
    return PromptSet(list(encoded.problems), [list(ids) for ids in encoded.prompt_token_ids])


def load_train_problems(config: TrainConfig) -> list[Any]:
    problems: list[Any] = []
    for spec in config.data.train:
        problems += load_problems(spec, data_dir=config.data.data_dir, split="train")
    return problems[: config.data.limit] if config.data.limit else problems


def load_val_problems(config: TrainConfig) -> dict[str, list[Any]]:
    return {spec: load_problems(spec, data_dir=config.data.data_dir, split="test", limit=config.validation.limit)
            for spec in config.validation.datasets}


def default_reward_fn(config: TrainConfig, prompt_opens_think: bool) -> RewardFn:
    """DeepScaleR's binary math reward with the ``reward:`` settings, scored in a process pool with a time limit
    per response."""

    def reward(responses: list[str], problems: list[Any]) -> list[float]:
        return score_responses(responses, [p.gold for p in problems], config.reward,
                               prompt_opens_think=prompt_opens_think)

    return reward
