"""Typed training configuration: dataclasses with one docstring per field, YAML presets, dotted overrides.

Precedence (lowest first): dataclass defaults < the YAML file (``--config PATH_OR_PRESET``) < ``key=value``
overrides on the command line. Every key is type-checked; an unknown key is an error that lists the closest
valid keys. ``validate`` rejects impossible configs with a message naming the field and the fix.

Batch sizes are in prompts (as in DeepScaleR/verl): ``data.train_batch_size`` prompts per RL step, each sampled
``rollout.n`` times; ``algorithm.ppo_mini_batch_size`` prompts per optimizer update.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the field and the fix."""


@dataclass
class ModelConfig:
    path: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    """Policy to train: a Hugging Face hub id or a local folder (an earlier checkpoint's folder works)."""
    tokenizer: str | None = None
    """Tokenizer folder/id; None uses ``path``."""
    reference: str | None = None
    """Frozen reference model for the KL loss; None uses ``path`` (the model the run starts from)."""
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
    """Fraction of accelerator memory vLLM may take (weights + KV cache); None: 0.85 on a GPU (DeepScaleR's
    value), 0.1 on CPU (where it is a fraction of host RAM)."""
    kv_cache_memory_bytes: int | None = None
    """Explicit vLLM KV-cache size in bytes (vLLM then ignores the fraction for the KV cache); None: vLLM's own
    sizing on a GPU, and on CPU a size computed from the model and max_model_len (deepscaler.rollout.memory)."""
    attention: str = "auto"
    """Rollout engine attention backend request, resolved by deepscaler.precision.resolve_attention."""
    enforce_eager: bool = True
    """Disable CUDA graphs in vLLM (as DeepScaleR did; faster start-up, slower decode)."""
    max_num_batched_tokens: int | None = None
    """vLLM scheduler token budget per iteration; None keeps vLLM's default."""
    verify_sync: bool = True
    """After every weight sync, score a fixed probe in the engine and compare with the trainer; fail if stale."""
    sync_tolerance: float | None = None
    """Largest allowed mean |engine - trainer| log-prob difference on the probe after a sync (nats/token);
    None picks it from the precision policy (tight for float32, looser for 16-bit rollouts)."""


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    """Advantage estimator, by name in deepscaler.algorithms (grpo, dr_grpo, rloo, ...)."""
    norm_adv_by_std: bool = True
    """Divide group-centred rewards by the group std (GRPO); False gives Dr. GRPO's advantage."""
    policy_loss: str = "ppo_clip"
    """Policy-loss function by name in deepscaler.algorithms."""
    clip_ratio_low: float = 0.2
    """PPO clip epsilon below 1 (ratio floor 1 - eps)."""
    clip_ratio_high: float = 0.2
    """PPO clip epsilon above 1 (DAPO clip-higher uses 0.28)."""
    loss_agg_mode: str = "token-mean"
    """How per-token losses become a scalar (token-mean, seq-mean-token-mean, seq-mean-token-sum, ...)."""
    kl_coef: float = 0.001
    """KL-to-reference loss coefficient (0 disables the reference model). -0.001 reproduces DeepScaleR's 8K run."""
    kl_type: str = "low_var_kl"
    """KL estimator: k1 ("kl"), k2 ("mse"), k3 ("low_var_kl"), "abs"."""
    entropy_coeff: float = 0.001
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
    """"auto" (rich live display on a TTY, one line per step otherwise), "rich", "tqdm", "plain", "none"."""
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
    reward_workers: int | None = None
    """Reward-scoring processes; None lets deepscaler.rewards decide."""
    reward_timeout_s: float = 10.0
    """Time limit per response when scoring (a hung verifier scores 0)."""
    stages: list[StageConfig] = field(default_factory=list)
    """Context-lengthening chain: each stage applies its overrides, starts from the previous stage's final
    weights with a fresh optimizer and data order (as DeepScaleR did), and ends at until_step."""


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


# ----------------------------------------------------------------------------------------------------------
# Loading, overrides and type checking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass (``optim.lr``, ``rollout.n``, ...)."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, key + "."))
        else:
            keys.append(key)
    return keys


def _unknown_key(key: str, cls: type = TrainConfig) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(cls), n=3, cutoff=0.5)
    # also match on the last component, which catches a right name in the wrong section
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in all_keys(cls) if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f" Did you mean: {', '.join(close[:4])}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check (and gently convert) ``value`` against the type ``hint``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, prefix=key + ".")
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, type-checking every value."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise _unknown_key(prefix + key)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(config)


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalar/list syntax (``1e-6``, ``true``, ``[a, b]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(config: Any, dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` in place on nested dataclasses, type-checked."""
    parts = dotted_key.split(".")
    target = config
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise _unknown_key(dotted_key)
        hint = _hints(type(target))[part]
        if i == len(parts) - 1:
            setattr(target, part, _coerce(value, hint, dotted_key))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set {dotted_key}")


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``; a missing ``=`` is an error with the fix."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' has no '='; write it as key=value (e.g. optim.lr=1e-6)")
        key, text = item.split("=", 1)
        pairs.append((key.strip(), parse_value(text)))
    return pairs


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in deepscaler/recipes/."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``deepscaler-1.5b-8k``) or a YAML path -> the file path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name_or_path, list_presets(), n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Presets: {', '.join(list_presets())}."
    raise ConfigError(f"--config '{name_or_path}' is neither a file nor a preset name.{hint}")


def load_config(name_or_path: str | None = None, overrides: list[str] | list[tuple[str, Any]] | None = None,
                validate_config: bool = True) -> TrainConfig:
    """Defaults < YAML file/preset < overrides; then validate."""
    data: dict[str, Any] = {}
    if name_or_path:
        path = resolve_config_path(name_or_path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...)")
    config = from_dict(TrainConfig, data)
    for key, value in _normalise_overrides(overrides):
        apply_override(config, key, value)
    if validate_config:
        validate(config)
    return config


def _normalise_overrides(overrides: list[str] | list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if all(isinstance(o, str) for o in overrides):
        return parse_overrides(list(overrides))  # type: ignore[arg-type]
    return list(overrides)  # type: ignore[arg-type]


def stage_config(config: TrainConfig, stage: StageConfig) -> TrainConfig:
    """The config of one stage: a copy of ``config`` with the stage's overrides applied (stages cleared)."""
    import copy

    staged = copy.deepcopy(config)
    staged.trainer.stages = []
    for key, value in stage.overrides.items():
        apply_override(staged, key, value)
    return staged


# ----------------------------------------------------------------------------------------------------------
# Validation


def validate(config: TrainConfig) -> TrainConfig:
    """Reject impossible configs with a message naming the field and the fix. Returns ``config``."""
    problems = _problems(config)
    for index, stage in enumerate(config.trainer.stages):
        where = f"trainer.stages[{index}]"
        try:
            staged = stage_config(config, stage)
        except ConfigError as exc:
            problems.append(f"{where}.overrides: {exc}")
            continue
        problems += [f"{where} ({stage.name or index}): {p}" for p in _problems(staged)]
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


def _problems(c: TrainConfig) -> list[str]:
    p: list[str] = []
    d, r, a, o = c.data, c.rollout, c.algorithm, c.optim

    def positive(value: float | None, name: str, fix: str = "") -> None:
        if value is not None and value <= 0:
            p.append(f"{name}={value} must be > 0{fix}")

    positive(d.train_batch_size, "data.train_batch_size")
    positive(d.max_prompt_length, "data.max_prompt_length")
    positive(d.max_response_length, "data.max_response_length")
    positive(a.ppo_mini_batch_size, "algorithm.ppo_mini_batch_size")
    positive(a.ppo_epochs, "algorithm.ppo_epochs")
    positive(r.temperature, "rollout.temperature", " (trainer log-probs divide logits by it; use a small "
             "value such as 1e-3 for near-greedy)")
    positive(c.trainer.total_steps, "trainer.total_steps", " (or null to derive it from total_epochs)")
    positive(c.trainer.total_epochs, "trainer.total_epochs")
    if r.n < 2:
        p.append(f"rollout.n={r.n}: GRPO needs at least 2 samples per prompt to compare; set rollout.n>=2")
    if not 0 < r.top_p <= 1:
        p.append(f"rollout.top_p={r.top_p} must be in (0, 1]")
    if not 0 <= r.min_tokens <= d.max_response_length:
        p.append(f"rollout.min_tokens={r.min_tokens} must be between 0 and data.max_response_length="
                 f"{d.max_response_length}")
    if r.gpu_memory_utilization is not None and not 0 < r.gpu_memory_utilization <= 1:
        p.append(f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} must be in (0, 1]")
    if r.kv_cache_memory_bytes is not None and r.kv_cache_memory_bytes <= 0:
        p.append(f"rollout.kv_cache_memory_bytes={r.kv_cache_memory_bytes} must be > 0 (or null for automatic)")
    if a.ppo_mini_batch_size > d.train_batch_size:
        p.append(f"algorithm.ppo_mini_batch_size={a.ppo_mini_batch_size} is larger than data.train_batch_size="
                 f"{d.train_batch_size}; set it to at most {d.train_batch_size}")
    elif d.train_batch_size % a.ppo_mini_batch_size:
        divisors = [k for k in range(1, d.train_batch_size + 1) if d.train_batch_size % k == 0]
        near = min(divisors, key=lambda k: abs(k - a.ppo_mini_batch_size))
        p.append(f"data.train_batch_size={d.train_batch_size} is not a multiple of algorithm.ppo_mini_batch_size="
                 f"{a.ppo_mini_batch_size}; each update needs whole mini-batches (e.g. ppo_mini_batch_size={near})")
    sequence = d.max_prompt_length + d.max_response_length
    if a.max_tokens_per_micro_batch < sequence:
        p.append(f"algorithm.max_tokens_per_micro_batch={a.max_tokens_per_micro_batch} is smaller than the longest "
                 f"sequence (data.max_prompt_length + data.max_response_length = {sequence}); raise it to >= "
                 f"{sequence}")
    if a.clip_ratio_low < 0 or a.clip_ratio_low >= 1:
        p.append(f"algorithm.clip_ratio_low={a.clip_ratio_low} must be in [0, 1)")
    if a.clip_ratio_high < 0:
        p.append(f"algorithm.clip_ratio_high={a.clip_ratio_high} must be >= 0")
    if a.dynamic_sampling and a.max_rollout_batches < 1:
        p.append(f"algorithm.max_rollout_batches={a.max_rollout_batches} must be >= 1 with dynamic_sampling")
    if a.overlong_buffer < 0 or a.overlong_buffer >= d.max_response_length:
        p.append(f"algorithm.overlong_buffer={a.overlong_buffer} must be in [0, data.max_response_length)")
    if a.tis_cap is not None and a.tis_cap < 1:
        p.append(f"algorithm.tis_cap={a.tis_cap} must be >= 1 (or null to disable truncated IS)")
    if a.sequence_layout not in ("auto", "packed", "padded"):
        p.append(f"algorithm.sequence_layout='{a.sequence_layout}' must be auto, packed or padded")
    if a.kl_type not in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"):
        p.append(f"algorithm.kl_type='{a.kl_type}' is not one of kl/k1, mse/k2, low_var_kl/k3, abs")
    if o.lr < 0:  # lr 0 is allowed: the "does nothing" sanity mode (ratio 1, no clipping, KL 0)
        p.append(f"optim.lr={o.lr} must be >= 0")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        p.append(f"optim.betas={o.betas} must be two numbers in [0, 1)")
    if o.schedule not in ("constant", "cosine"):
        p.append(f"optim.schedule='{o.schedule}' must be 'constant' or 'cosine'")
    if o.grad_clip is not None and o.grad_clip <= 0:
        p.append(f"optim.grad_clip={o.grad_clip} must be > 0")
    if o.warmup_steps < 0:
        p.append(f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    vmax = c.validation.max_response_length
    if vmax is not None and vmax <= 0:
        p.append(f"validation.max_response_length={vmax} must be > 0 (or null for data.max_response_length)")
    if c.validation.datasets and c.validation.n < 1:
        p.append(f"validation.n={c.validation.n} must be >= 1 (or validation.datasets=[] to disable)")
    if c.checkpoint.save_freq < 0 or c.checkpoint.keep_last < 0 or c.validation.test_freq < 0:
        p.append("checkpoint.save_freq, checkpoint.keep_last and validation.test_freq must be >= 0")
    if c.checkpoint.resume not in ("auto", "never") and not Path(c.checkpoint.resume).is_dir():
        p.append(f"checkpoint.resume='{c.checkpoint.resume}' is not 'auto', 'never' or an existing checkpoint "
                 "folder")
    for backend in c.logging.backends:
        if backend not in ("wandb", "tensorboard", "trackio"):
            p.append(f"logging.backends has '{backend}'; choose from wandb, tensorboard, trackio")
    if c.logging.progress not in ("auto", "rich", "tqdm", "plain", "none"):
        p.append(f"logging.progress='{c.logging.progress}' must be auto, rich, tqdm, plain or none")
    return p


def dump_yaml(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (every field) to ``path``."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
