"""The rules a training config must satisfy, checked before anything loads: ranges, batch arithmetic, and
every name that selects from a registry (advantage estimator, loss aggregation, KL estimator, precision policy)
checked against that registry, with the closest valid names listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from deepscaler.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS
from deepscaler.algorithms.registry import check_name
from deepscaler.precision import PRESETS as PRECISION_POLICIES
from deepscaler.rewards.config import RewardConfig
from deepscaler.rollout.memory_plan import parse_bytes

if TYPE_CHECKING:
    from deepscaler.training.config import TrainConfig


def config_problems(c: TrainConfig) -> list[str]:
    """Every problem of one (stage's) config, each naming the field and the fix; empty when it can run."""
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
    if r.sleep_level is not None and r.sleep_level not in (0, 1, 2):
        p.append(f"rollout.sleep_level={r.sleep_level} must be 0 (off), 1, 2 or null (automatic)")
    if c.precision.gpu_memory is not None:
        try:
            parse_bytes(c.precision.gpu_memory)
        except ValueError as error:
            p.append(f"precision.gpu_memory: {error}")
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
    for registry, value, kind, name in (
            (ADVANTAGE_ESTIMATORS, a.advantage, "advantage estimator", "algorithm.advantage"),
            (LOSS_AGGREGATIONS, a.loss_agg_mode, "loss aggregation", "algorithm.loss_agg_mode"),
            (KL_ESTIMATORS, a.kl_estimator, "KL estimator", "algorithm.kl_estimator"),
            (["auto", *PRECISION_POLICIES], c.precision.policy, "precision policy", "precision.policy")):
        problem = check_name(registry, value, kind, name)
        if problem:
            p.append(problem)
    try:  # the reward section checks itself (RewardConfig.__post_init__)
        RewardConfig(**dataclasses.asdict(c.reward))
    except ValueError as exc:
        p.append(f"reward: {exc}")
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
    f = c.faults
    if min(f.max_engine_restarts, f.max_nonfinite_steps, f.max_oom_halvings) < 0:
        p.append("faults.max_engine_restarts, faults.max_nonfinite_steps and faults.max_oom_halvings must be >= 0")
    for backend in c.logging.backends:
        if backend not in ("wandb", "tensorboard", "trackio"):
            p.append(f"logging.backends has '{backend}'; choose from wandb, tensorboard, trackio")
    if c.logging.progress not in ("auto", "rich", "tqdm", "plain", "none"):
        p.append(f"logging.progress='{c.logging.progress}' must be auto, rich, tqdm, plain or none")
    return p
