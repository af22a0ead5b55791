"""``deepscaler eval``'s settings: the typed ``EvalConfig`` (one docstring per field; the defaults are DeepScaleR's
evaluation protocol), YAML presets in ``deepscaler/recipes/eval/``, and ``key=value`` overrides, read by the same
machinery as the training config (:mod:`deepscaler.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscaler.config import ConfigError, build_config, list_presets, resolve_preset
from deepscaler.rewards.config import RewardConfig

EVAL_PRESETS_DIR = Path(__file__).resolve().parents[1] / "recipes" / "eval"
DEEPSCALER_BENCHMARKS = ("aime", "amc", "math", "minerva", "olympiad_bench")
"""The five benchmarks of DeepScaleR's evaluation (AIME 2024, AMC 2023, MATH-500, Minerva Math, OlympiadBench)."""


@dataclass
class EvalConfig:
    """What to evaluate and how; the defaults are DeepScaleR's evaluation protocol."""

    retired_keys = {"reward_workers": "moved to reward.num_workers"}
    """Keys of earlier versions and what replaced them (not a field)."""

    model: str = ""
    """Hugging Face Hub id or local folder of the model (also the tokenizer); required."""
    datasets: list[str] = field(default_factory=lambda: list(DEEPSCALER_BENCHMARKS))
    """Dataset names (aime, amc, math, minerva, olympiad_bench), .json/.jsonl/.parquet files, saved dataset
    folders or Hub ids."""
    output_dir: str | None = None
    """Where results.json, results.md, settings.json and <dataset>/responses.jsonl go; None keeps nothing
    on disk (and cannot resume)."""
    n: int = 16
    """Samples per problem."""
    temperature: float = 0.6
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k cut-off; -1 disables it."""
    max_tokens: int = 32768
    """Longest response in tokens (also capped by max_model_len)."""
    max_prompt_length: int = 1536
    """Prompts longer than this many tokens (after the chat template) are dropped, with a printed count."""
    max_model_len: int | None = None
    """Engine context length; None: max_prompt_length + max_tokens, capped at the model's
    max_position_embeddings (with a printed note)."""
    data_dir: str | None = None
    """Folder with test/ and train/ problem files; None: env DEEPSCALER_DATA_DIR. A named set not found there comes
    from the local cache or the public Hub (docs/data.md)."""
    split: str = "test"
    """Which split named datasets are read from."""
    max_problems: int | None = None
    """Only the first N problems of each dataset (smoke runs)."""
    problem_key: str | None = None
    """Column holding the problem text; None auto-detects (problem, question, prompt, …)."""
    answer_key: str | None = None
    """Column holding the gold answer; None auto-detects (answer, final_answer, …, boxed solution)."""
    skip_malformed: bool = False
    """Drop rows without a usable problem/answer (counted) instead of stopping with an error."""
    dtype: str = "auto"
    """Engine dtype (float32, bfloat16, float16, auto)."""
    precision: str = "auto"
    """Precision preset for the engine (bf16-mixed, fp16-mixed, fp32, fp32-fast, auto)."""
    attention_backend: str = "auto"
    """vLLM attention backend, or auto (resolved and explained by deepscaler.precision)."""
    gpu_memory_utilization: float | None = None
    """Fraction of device memory for vLLM; None: 0.9 with a CUDA GPU, 0.1 on CPU (see deepscaler.rollout.memory)."""
    kv_cache_memory_bytes: int | None = None
    """Explicit vLLM KV-cache size in bytes; None: vLLM sizes it from the fraction on a GPU, and on CPU it is
    computed from the model and max_model_len (deepscaler.rollout.memory)."""
    tensor_parallel_size: int = 1
    """Tensor-parallel degree of the engine."""
    seed: int = 0
    """Engine and sampling seed: the same seed, model and settings give the same samples. Each problem samples
    with ``problem_seed(seed, problem.id, n)``, so its samples do not depend on chunking or resuming."""
    chunk_size: int = 64
    """Problems per generate call; each finished chunk is scored and saved before the next."""
    think_prefill: str = "auto"
    """Does the chat template open <think> in the prompt? auto (detect), yes or no; decides the reward's
    parsing (prompt_opens_think)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """How responses are scored (deepscaler.rewards.RewardConfig: reward values, think format, grader, time
    limit, workers)."""
    resume: bool = True
    """Skip problems already in responses.jsonl; False deletes earlier responses first."""
    progress: bool = True
    """Show a progress bar (problems, tokens/s)."""
    print_table: bool = True
    """Print the results table when done."""

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        problems = self.problems()
        if problems:
            raise ValueError(f"EvalConfig: {problems[0]}")

    def problems(self) -> list[str]:
        """What is wrong with these settings (each naming the field), empty when they can run."""
        checks = [(self.n >= 1, "n must be >= 1 (--n)"), (self.max_tokens >= 1, "max_tokens must be >= 1"),
                  (self.max_prompt_length >= 1, "max_prompt_length must be >= 1"),
                  (self.chunk_size >= 1, "chunk_size must be >= 1"), (bool(self.datasets), "datasets is empty"),
                  (self.temperature >= 0, "temperature must be >= 0"), (0 < self.top_p <= 1, "top_p in (0, 1]"),
                  (self.kv_cache_memory_bytes is None or self.kv_cache_memory_bytes > 0,
                   "kv_cache_memory_bytes must be > 0 (--kv-cache-memory-bytes), or None for automatic")]
        problems = [message for ok, message in checks if not ok]
        if self.think_prefill not in ("auto", "yes", "no"):
            problems.append(f"think_prefill={self.think_prefill!r} must be auto, yes or no")
        return problems


def list_eval_presets() -> list[str]:
    """Names of the evaluation presets shipped in deepscaler/recipes/eval/."""
    return list_presets(EVAL_PRESETS_DIR)


def load_eval_config(name_or_path: str | None = None,
                     overrides: list[str] | list[tuple[str, Any]] | None = None) -> EvalConfig:
    """Defaults < YAML preset/file < overrides, type-checked, then validated (before any model loads)."""
    path = resolve_preset(name_or_path, EVAL_PRESETS_DIR) if name_or_path else None
    try:
        config = build_config(EvalConfig, path, overrides)
    except ValueError as error:  # __post_init__ of EvalConfig or RewardConfig on the YAML's values
        raise ConfigError(str(error)) from error
    problems = config.problems()
    if not config.model:
        problems.insert(0, "model is empty: pass model=<hub id or folder> (or --model)")
    try:  # the reward section checks itself
        RewardConfig(**{k: getattr(config.reward, k) for k in RewardConfig.__dataclass_fields__})
    except ValueError as error:
        problems.append(f"reward: {error}")
    if problems:
        raise ConfigError("invalid eval config:\n  - " + "\n  - ".join(problems))
    return config
