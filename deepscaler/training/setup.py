"""Building what a run needs: the precision/attention decisions (in one place), models, rollout engine, data and
the reward function. ``loop.py`` calls these; each prints its decision once with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscaler.training.config import TrainConfig, stage_config

RewardFn = Callable[[list[str], list[Any]], list[float]]
"""``reward_fn(responses, problems) -> rewards``: one float per response; ``problems[i]`` is the Problem the
i-th response answers (its ``gold`` holds the answer(s))."""


@dataclass
class PrecisionSetup:
    """Every numeric/attention decision of a run, each with its reason."""

    policy: Any
    """deepscaler.precision.PrecisionPolicy in force."""
    policy_reason: str
    device: torch.device
    device_reason: str
    sync_tolerance: float
    sync_tolerance_reason: str
    engine_memory: Any = None
    """deepscaler.rollout.EngineMemory of the rollout engine: memory fraction, explicit KV-cache size, reason."""
    trainer_attention: Any = None
    """AttentionDecision of the trainer model (filled when the model is loaded)."""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        p = self.policy
        out = [
            f"device: {self.device} ({self.device_reason})",
            f"precision: {p.name} ({self.policy_reason}): master {p.param_dtype}, compute {p.compute_dtype}, "
            f"rollout {p.rollout_dtype}, logits {p.logits_dtype}" + (", loss scaling" if p.loss_scaling else ""),
            f"weight-sync check tolerance: {self.sync_tolerance:g} nats/token ({self.sync_tolerance_reason})",
        ]
        if self.engine_memory is not None:
            out.append(f"vLLM memory: {self.engine_memory.describe()}")
        if self.trainer_attention is not None:
            a = self.trainer_attention
            out.append(f"trainer attention: {getattr(a, 'backend', a)} ({getattr(a, 'reason', '')})")
        return out + self.notes


def resolve_precision(config: TrainConfig) -> PrecisionSetup:
    """The one place where device, precision policy and sync tolerance are decided (the precision package
    owns the rules; this function only asks it and records the answers)."""
    from deepscaler.precision import default_policy_name, get_policy, probe_environment

    request = config.precision.device
    if request == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device_reason = "auto: CUDA available" if device.type == "cuda" else "auto: no CUDA device"
    else:
        device = torch.device(request)
        device_reason = "precision.device"
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"precision.device={request} but torch sees no CUDA device; use precision.device=cpu "
                               "or auto")
    if config.precision.policy == "auto":
        name, reason = default_policy_name(probe_environment())
        if device.type == "cpu" and name != "fp32":  # a GPU machine asked to train on CPU
            name, reason = "fp32", "training on CPU: no fast 16-bit kernels, float32 is exact"
    else:
        name, reason = config.precision.policy, "precision.policy"
    policy = get_policy(name)
    if config.rollout.sync_tolerance is not None:
        tolerance, tolerance_reason = config.rollout.sync_tolerance, "rollout.sync_tolerance"
    elif policy.rollout_dtype == "float32" and policy.compute_dtype == "float32":
        tolerance, tolerance_reason = 1e-2, "float32 trainer and rollout agree to ~1e-5; 1e-2 leaves margin"
    else:
        tolerance, tolerance_reason = 0.15, (f"{policy.rollout_dtype} rollout vs {policy.compute_dtype} trainer "
                                             "differ by ~1e-2 per token from rounding alone")
    _check_model_path(config.model.path)  # the CPU KV-cache size reads the model's config
    memory = engine_memory(config, policy.rollout_dtype, config.model.path, engine_max_model_len(config))
    return PrecisionSetup(policy, reason, device, device_reason, tolerance, tolerance_reason, memory)


def engine_max_model_len(config: TrainConfig) -> int:
    """The rollout engine's context: the longest prompt + response (training or validation) over all stages."""
    configs = [stage_config(config, s) for s in config.trainer.stages] or [config]
    return max(c.data.max_prompt_length + max(c.data.max_response_length, c.validation.max_response_length or 0)
               for c in configs)


def engine_memory(config: TrainConfig, rollout_dtype: str, model_path: str, max_model_len: int) -> Any:
    """The rollout engine's memory settings (deepscaler.rollout.memory decides; rollout.gpu_memory_utilization
    and rollout.kv_cache_memory_bytes override)."""
    from deepscaler.rollout import engine_device_type, resolve_engine_memory

    return resolve_engine_memory(engine_device_type(), "train", config.rollout.gpu_memory_utilization,
                                 config.rollout.kv_cache_memory_bytes, model_path, max_model_len,
                                 rollout_dtype=rollout_dtype)


def load_policy_model(path: str, setup: PrecisionSetup, attention: str, trainable: bool = True) -> torch.nn.Module:
    """Load a causal LM through deepscaler.precision.load_causal_lm (which picks the attention implementation
    and dtype for the policy), move it to the device; a frozen copy (``trainable=False``) is kept in the compute
    dtype, as DeepScaleR kept its reference model in bf16."""
    from deepscaler.precision import load_causal_lm, probe_environment, to_torch_dtype

    _check_model_path(path)
    model, decision = load_causal_lm(path, setup.policy, request=attention, env=probe_environment())
    if trainable:
        setup.trainer_attention = decision
        model.to(device=setup.device, dtype=to_torch_dtype(setup.policy.param_dtype))
        model.train()
    else:
        model.to(device=setup.device, dtype=to_torch_dtype(setup.policy.compute_dtype))
        model.eval()
        model.requires_grad_(False)
    return model


def _check_model_path(path: str) -> None:
    looks_local = path.startswith((".", "/", "~")) or path.startswith("runs/") or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model.path={path} does not exist. If it is an earlier stage's checkpoint, run that "
                                "stage first (or use the chained recipe deepscaler-1.5b); otherwise pass "
                                "model.path=<hub id or folder>")


def build_engine(config: TrainConfig, setup: PrecisionSetup) -> Any:
    """The vLLM rollout engine for ``model.path``, in the rollout dtype of the precision policy, with the memory
    settings ``resolve_precision`` decided (and printed) for the same model and context."""
    from deepscaler.rollout import EngineConfig, RolloutEngine

    memory = setup.engine_memory
    extra: dict[str, Any] = dict(memory.engine_kwargs())
    if config.rollout.max_num_batched_tokens:
        extra["max_num_batched_tokens"] = config.rollout.max_num_batched_tokens
    return RolloutEngine(EngineConfig(
        model=config.model.path,
        tokenizer=config.model.tokenizer,
        dtype=setup.policy.rollout_dtype,
        precision=setup.policy.name,
        attention_backend=config.rollout.attention,
        max_model_len=engine_max_model_len(config),
        gpu_memory_utilization=memory.gpu_memory_utilization,
        seed=config.trainer.seed,
        enforce_eager=config.rollout.enforce_eager,
        extra_engine_kwargs=extra,
    ))


def load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.model.tokenizer or config.model.path)


@dataclass
class PromptSet:
    """Problems with their tokenised prompts (prompts over the length limit already dropped)."""

    problems: list[Any]
    prompt_ids: list[list[int]]


def encode(problems: Sequence[Any], tokenizer: Any, max_prompt_length: int, label: str) -> PromptSet:
    from deepscaler.data import encode_prompts

    encoded = encode_prompts(list(problems), tokenizer, max_prompt_length, label=label)
    return PromptSet(list(encoded.problems), [list(ids) for ids in encoded.prompt_token_ids])


def load_train_problems(config: TrainConfig) -> list[Any]:
    from deepscaler.data import load_problems

    problems: list[Any] = []
    for spec in config.data.train:
        problems += load_problems(spec, data_dir=config.data.data_dir, split="train")
    return problems[: config.data.limit] if config.data.limit else problems


def load_val_problems(config: TrainConfig) -> dict[str, list[Any]]:
    from deepscaler.data import load_problems

    return {spec: load_problems(spec, data_dir=config.data.data_dir, split="test", limit=config.validation.limit)
            for spec in config.validation.datasets}


def default_reward_fn(config: TrainConfig, prompt_opens_think: bool) -> RewardFn:
    """DeepScaleR's binary math reward, scored in a process pool with a per-response time limit."""
    from deepscaler.rewards import score_responses

    def reward(responses: list[str], problems: list[Any]) -> list[float]:
        return score_responses(responses, [p.gold for p in problems], config.reward,
                               prompt_opens_think=prompt_opens_think)

    return reward
