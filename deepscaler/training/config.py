"""Typed training configuration: dataclasses with one docstring per field, YAML presets, dotted overrides.

Precedence (lowest first): dataclass defaults < the YAML file (``--config PATH_OR_PRESET``) < ``key=value``
overrides on the command line. Every key is type-checked; an unknown key is an error that lists the closest
valid keys. ``validate`` rejects impossible configs with a message naming the field and the fix.

Batch sizes are in prompts (as in DeepScaleR/verl): ``data.train_batch_size`` prompts per RL step, each sampled
``rollout.n`` times; ``algorithm.ppo_mini_batch_size`` prompts per optimizer update.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscaler.config import typed
from deepscaler.config.typed import (  # noqa: F401  (re-exported: the training config's public API)
    ConfigError,
    apply_override,
    dump_yaml,
    from_dict,
    parse_overrides,
    parse_value,
    to_dict,
)
from deepscaler.rewards.config import RewardConfig
from deepscaler.training.config_rules import config_problems

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RUN_WIDE_KEYS = ("precision.", "model.attention", "rollout.attention", "rollout.gpu_memory_utilization",
                 "rollout.kv_cache_memory_bytes", "algorithm.sequence_layout", "reward.")
"""Keys a stage may not override: the run decides them once at start-up (deepscaler.training.decisions)."""


@dataclass
class ModelConfig:
    path: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    """Policy to train: a Hugging Face hub id or a local folder (an earlier checkpoint's folder works)."""
    tokenizer: str | None = None
    """Tokenizer folder/id; None uses ``path``."""
    reference: str | None = None
    """Frozen reference model for the KL loss; None uses ``path`` (the model the run starts from)."""
    reference_offload: bool = False
    """Keep the reference model in host memory and move it to the device only for the reference log-probs (as
    DeepScaleR's FSDP CPU offload did): the rollouts and the update get its memory (3.3 GiB for the 1.5B model)."""
    attention: str = "auto"
    """Trainer attention implementation request ("auto", "sdpa", "eager", "flash_attention_2", ...);
    resolved by deepscaler.precision.resolve_attention, which logs the choice and the reason."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (DeepScaleR: on). Saves memory at ~30% extra compute."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["deepscaler"])
    """Training problem sets (names such as deepscaler/aime/math, files, or datasets ids; see load_problems)."""
    data_dir: str | None = None
    """Folder holding train/ and test/ JSON files; None uses the data loader's default."""
    train_batch_size: int = 128
    """Prompts per RL step (each sampled rollout.n times)."""
    max_prompt_length: int = 1024
    """Templated prompts longer than this (tokens) are dropped at load time, as in DeepScaleR."""
    max_response_length: int = 8192
    """Max generated tokens per response (8K/16K/24K in the three DeepScaleR stages)."""
    shuffle: bool = True
    """Shuffle the training problems each epoch (the order is a function of seed and epoch, so resumable)."""
    limit: int | None = None
    """Use only the first N training problems (smoke tests)."""


@dataclass
class RolloutConfig:
    n: int = 8
    """Samples per prompt (GRPO group size); must be >= 2 for group-normalised advantages."""
    temperature: float = 0.6
    """Sampling temperature; trainer log-probs divide logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off)."""
    top_k: int = -1
    """Top-k sampling (-1 = off)."""
    min_tokens: int = 0
    """Suppress EOS until a response has this many tokens (0 = off)."""
    gpu_memory_utilization: float | None = None
    """The engine's share of the whole GPU (vLLM >= 0.7: weights, activations, CUDA graphs, KV cache; the
    trainer needs the rest); None: the memory plan chooses the largest that fits beside the trainer (printed as
    "memory plan"); on CPU 0.1, a share of host RAM."""
    kv_cache_memory_bytes: int | None = None
    """Explicit vLLM KV-cache size in bytes (vLLM then ignores the fraction for the KV cache, and on a GPU the
    fraction is derived from it); None: sized by vLLM from the fraction on a GPU, and on CPU computed from the
    model and max_model_len (deepscaler.rollout.memory)."""
    attention: str = "auto"
    """Rollout engine attention backend request, resolved by deepscaler.precision.resolve_attention."""
    enforce_eager: bool | None = None
    """Disable CUDA graphs in vLLM; None: graphs on CUDA (in-place weight loads keep them valid), eager on CPU."""
    sleep_level: int | None = None
    """vLLM sleep mode between rollouts: 0 off, 1 (weights to host memory, KV cache freed during log-probs and
    the update), 2 (both freed); None: 1 on CUDA, off on CPU (vLLM has no sleep mode there)."""
    max_num_batched_tokens: int | None = None
    """vLLM scheduler token budget per iteration; None keeps vLLM's default."""
    verify_sync: bool = True
    """After every weight sync, score a fixed probe in the engine and compare with the trainer; fail if stale."""
    sync_tolerance: float | None = None
    """Largest allowed mean |engine - trainer| log-prob difference on the probe after a sync (nats/token);
    None picks it from the precision policy (tight for float32, looser for 16-bit rollouts)."""


@dataclass
class AlgorithmConfig:
    retired_keys = {
        "norm_adv_by_std": "Dr. GRPO (no division by the group std) is algorithm.advantage=drgrpo",
        "policy_loss": "the policy loss is PPO's clipped surrogate (deepscaler.algorithms.compute_policy_loss); "
                       "its variants are set by clip_ratio_low/high, loss_agg_mode, kl_coef, tis_cap",
        "kl_type": "renamed to algorithm.kl_estimator",
        "entropy_coeff": "renamed to algorithm.entropy_coef",
    }
    """Keys of earlier versions and what replaced them (not a field)."""

    advantage: str = "grpo"
    """Advantage estimator, by name in deepscaler.algorithms.ADVANTAGE_ESTIMATORS: grpo (group mean and std),
    drgrpo (Dr. GRPO: group mean only), rloo (leave-one-out mean)."""
    clip_ratio_low: float = 0.2
    """PPO clip epsilon below 1 (ratio floor 1 - eps)."""
    clip_ratio_high: float = 0.2
    """PPO clip epsilon above 1 (DAPO clip-higher uses 0.28)."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses become a scalar, by name in deepscaler.algorithms.LOSS_AGGREGATIONS (token-mean,
    seq-mean-token-mean, seq-mean-token-sum, ...)."""
    kl_coef: float = 0.001
    """KL-to-reference loss coefficient (0 disables the reference model). -0.001 reproduces DeepScaleR's 8K run."""
    kl_estimator: str = "low_var_kl"
    """KL estimator by name in deepscaler.algorithms.KL_ESTIMATORS: k1 ("kl"), k2 ("mse"), k3 ("low_var_kl"),
    "abs"."""
    entropy_coef: float = 0.001
    """Entropy bonus coefficient (subtracted from the loss)."""
    ppo_epochs: int = 1
    """Passes over each RL step's batch."""
    ppo_mini_batch_size: int = 64
    """Prompts per optimizer update (x rollout.n sequences); train_batch_size must be a multiple."""
    max_tokens_per_micro_batch: int = 32768
    """Token budget of one forward/backward micro-batch (DeepScaleR's ppo_max_token_len_per_gpu); with the padded
    layout padding counts against it."""
    sequence_layout: str = "auto"
    """Micro-batch layout: "packed" (one row, no padding; needs a varlen attention such as flash_attention_2,
    otherwise attention is quadratic in the whole pack), "padded" (one row per sequence, length-sorted), or
    "auto" (packed with a varlen attention implementation, else padded)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups with identical rewards and sample more prompt batches until
    train_batch_size groups carry signal."""
    max_rollout_batches: int = 3
    """With dynamic_sampling, the most prompt batches sampled for one step before training on what is there."""
    mask_truncated: bool = False
    """Exclude responses cut at max_response_length from the loss (DAPO overlong filtering)."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: tokens before the limit where a linear penalty starts (0 = off)."""
    overlong_penalty: float = 1.0
    """Largest overlong penalty (reached at max_response_length)."""
    tis_cap: float | None = None
    """Truncated importance sampling against vLLM's log-probs: cap C for min(pi_old/pi_vllm, C); None = off."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak AdamW learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this before each optimizer step (actor/grad_norm logs the pre-clip norm)."""
    schedule: str = "constant"
    """LR schedule after warmup: "constant" or "cosine"."""
    warmup_steps: int = 0
    """Linear warmup length in RL steps."""
    min_lr_ratio: float = 0.0
    """Cosine schedule floor as a fraction of lr."""
    zero_lr_first_step: bool = False
    """Reproduce verl's quirk: with 0 warmup the first RL step runs at lr 0."""


@dataclass
class PrecisionConfig:
    policy: str = "auto"
    """Numeric precision policy: "auto" (bf16-mixed on a bf16-capable GPU, fp32 on CPU), "bf16-mixed" (fp32
    master weights + bf16 autocast), "fp16-mixed" (with loss scaling), "fp32", "fp32-fast"."""
    device: str = "auto"
    """Training device: "auto" (cuda if available), "cpu", "cuda", "cuda:1"."""
    gpu_memory: str | None = None
    """Plan the GPU memory for a card of this size ("80GiB", "141GiB") instead of the one found (dry runs on
    another machine; ``deepscaler train --gpu-memory``); None: the GPU's own total."""


@dataclass
class ValidationConfig:
    datasets: list[str] = field(default_factory=lambda: ["aime"])
    """Validation sets (test split), e.g. aime, amc, math. Empty disables validation."""
    n: int = 8
    """Samples per validation problem (Pass@1 = mean reward over them)."""
    temperature: float = 0.6
    """Validation sampling temperature."""
    top_p: float = 1.0
    """Validation nucleus threshold (DeepScaleR validated at 1.0; evaluation uses 0.95)."""
    max_response_length: int | None = None
    """Validation response limit; None uses data.max_response_length."""
    test_freq: int = 20
    """Validate every N steps (0 = never during training)."""
    before_train: bool = True
    """Validate once before the first step."""
    limit: int | None = None
    """Use only the first N problems of each set (smoke tests)."""


@dataclass
class CheckpointConfig:
    save_freq: int = 20
    """Save every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Keep the newest K complete checkpoints (0 = keep all)."""
    resume: str = "auto"
    """"auto": continue from the newest complete checkpoint in the run directory; "never": start fresh (fails
    if the run directory already holds checkpoints); or a checkpoint folder to resume from."""
    save_at_end: bool = True
    """Write a checkpoint when training ends."""


@dataclass
class LoggingConfig:
    backends: list[str] = field(default_factory=list)
    """Extra trackers besides the always-on JSONL file: any of "wandb", "tensorboard", "trackio"."""
    project: str = "deepscaler"
    """Project name for trackers."""
    progress: str = "auto"
    """"auto" (rich live display on a TTY, a line every few steps otherwise), "rich", "tqdm", "plain", "none"."""
    log_rollouts_every: int = 0
    """Write sampled (prompt, response, reward) rows to rollouts.jsonl every N steps (0 = never)."""
    plots: bool = True
    """Write PNG plots into the run directory at the end."""


@dataclass
class StageConfig:
    name: str = ""
    """Stage label (e.g. "8k")."""
    until_step: int | None = None
    """Global step at which this stage ends; None runs to trainer.total_steps."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> value applied on top of the base config for this stage."""


@dataclass
class TrainerConfig:
    run_dir: str = "runs/deepscaler"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, plots/."""
    experiment: str = "deepscaler"
    """Experiment name (trackers, banners)."""
    total_steps: int | None = None
    """RL steps to run; None derives it from total_epochs."""
    total_epochs: int = 30
    """Upper bound in passes over the training set when total_steps is None."""
    seed: int = 0
    """Seed of everything: data order, rollout sampling (per-step seed derived from (seed, step)), init."""
    retired_keys = {"reward_workers": "moved to reward.num_workers", "reward_timeout_s": "moved to reward.timeout_s"}
    """Keys of earlier versions and what replaced them (not a field)."""

    stages: list[StageConfig] = field(default_factory=list)
    """Context-lengthening chain: each stage applies its overrides, starts from the previous stage's final
    weights with a fresh optimizer and data order (as DeepScaleR did), and ends at until_step."""


@dataclass
class FaultsConfig:
    """What a run survives, and for how long (see deepscaler.training.faults)."""

    max_engine_restarts: int = 3
    """Rollout-engine rebuilds allowed in a row (each retries the failed call with the same seeds); one more
    failure stops the run with an incident report."""
    max_nonfinite_steps: int = 3
    """Steps in a row whose loss or gradient is NaN/Inf (each skipped: no optimizer step); one more stops the run."""
    max_oom_halvings: int = 3
    """Times an out-of-memory update is retried with half the micro-batch token budget (0 = never)."""
    exclude_faulty_backends: bool = True
    """On resume, leave out the attention backends named by this run's kernel-fault incident reports."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy/reference models."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and prompt/response lengths."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling and rollout engine."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Loss, advantages, batching."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Numeric precision and device."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Periodic validation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving and resuming."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics, trackers, progress display, plots."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Run control."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The math reward (deepscaler.rewards.RewardConfig): reward values, graded segment, grader, time limit."""
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    """Engine restarts, non-finite steps, out-of-memory retries, backend exclusion after kernel faults."""


# ----------------------------------------------------------------------------------------------------------
# Loading (the type-checking machinery is deepscaler.config)


def all_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the training config (``optim.lr``, ``rollout.n``, ...)."""
    return typed.all_keys(cls, prefix)


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in deepscaler/recipes/."""
    return typed.list_presets(RECIPES_DIR)


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``deepscaler-1.5b-8k``) or a YAML path -> the file path."""
    return typed.resolve_preset(name_or_path, RECIPES_DIR)


def load_config(name_or_path: str | None = None, overrides: list[str] | list[tuple[str, Any]] | None = None,
                validate_config: bool = True) -> TrainConfig:
    """Defaults < YAML file/preset < overrides; then validate (before anything loads)."""
    path = resolve_config_path(name_or_path) if name_or_path else None
    config = typed.build_config(TrainConfig, path, overrides)
    if validate_config:
        validate(config)
    return config


def stage_config(config: TrainConfig, stage: StageConfig) -> TrainConfig:
    """The config of one stage: a copy of ``config`` with the stage's overrides applied (stages cleared)."""
    staged = copy.deepcopy(config)
    staged.trainer.stages = []
    for key, value in stage.overrides.items():
        apply_override(staged, key, value)
    return staged


# ----------------------------------------------------------------------------------------------------------
# Validation


def validate(config: TrainConfig) -> TrainConfig:
    """Reject impossible configs with a message naming the field and the fix. Returns ``config``."""
    problems = config_problems(config)
    for index, stage in enumerate(config.trainer.stages):
        where = f"trainer.stages[{index}]"
        try:
            staged = stage_config(config, stage)
        except ConfigError as exc:
            problems.append(f"{where}.overrides: {exc}")
            continue
        problems += [f"{where} ({stage.name or index}): {p}" for p in config_problems(staged)]
        problems += [f"{where}.overrides sets {key}, which is decided once for the whole run (device, precision, "
                     "attention, engine memory, micro-batch layout, reward); set it outside trainer.stages"
                     for key in stage.overrides if key.startswith(RUN_WIDE_KEYS)]
        previous = config.trainer.stages[index - 1].until_step if index else 0
        if stage.until_step is not None and previous is not None and stage.until_step <= previous:
            problems.append(f"{where}.until_step={stage.until_step} must be larger than the previous stage's "
                            f"({previous}); stages run in order")
        if stage.until_step is None and index != len(config.trainer.stages) - 1:
            problems.append(f"{where}.until_step is null but a later stage follows; only the last stage may "
                            "run to trainer.total_steps")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return config
