"""The run's decisions, made once at start-up: device, precision policy, weight-sync tolerance, rollout-engine
memory, trainer and rollout attention, micro-batch layout. Each comes with its reason; :class:`RunDecisions`
records them (frozen), ``lines()`` prints them once, and the engine and the trainer are built from the record, so
nothing downstream resolves any of them again. The rules themselves live with their subjects
(:mod:`deepscaler.precision`, :mod:`deepscaler.rollout.memory`, :mod:`deepscaler.training.micro_batches`); this
module only asks them, in order, and keeps the answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from deepscaler.precision import (
    AttentionDecision,
    PrecisionPolicy,
    default_policy_name,
    get_policy,
    probe_environment,
    resolve_attention,
)
from deepscaler.rollout import EngineConfig, EngineMemory, engine_device_type, resolve_engine_memory
from deepscaler.rollout.engine_setup import RolloutDecision, resolve_rollout_attention
from deepscaler.rollout.memory_plan import MemoryPlan
from deepscaler.training.config import TrainConfig
from deepscaler.training.memory import engine_max_model_len, plan_for_config
from deepscaler.training.micro_batches import resolve_layout
from deepscaler.training.packing import packed_attention_for


@dataclass(frozen=True)
class RunDecisions:
    """Every machine-dependent choice of a run, each with its reason."""

    device: torch.device
    device_reason: str
    policy: PrecisionPolicy
    """deepscaler.precision.PrecisionPolicy in force (master, compute, rollout and logits dtypes)."""
    policy_reason: str
    sync_tolerance: float
    """Largest mean |engine - trainer| log-prob difference on the sync probe (nats/token)."""
    sync_tolerance_reason: str
    engine_memory: EngineMemory
    """The rollout engine's memory fraction and KV-cache size, with the reason."""
    memory_plan: MemoryPlan | None
    trainer_attention: AttentionDecision
    """The trainer's attention implementation (policy and reference model)."""
    rollout_attention: RolloutDecision
    """The rollout engine's dtype and attention backend."""
    layout: str
    """Micro-batch layout, "packed" or "padded"."""
    layout_reason: str
    packed_attention: str
    """How packed sequences are kept apart ("position_ids" or "explicit_mask"); used by the packed layout only."""

    def lines(self) -> list[str]:
        """One line per decision, for the start-up log."""
        p = self.policy
        return [
            f"device: {self.device} ({self.device_reason})",
            f"precision: {p.name} ({self.policy_reason}): master {p.param_dtype}, compute {p.compute_dtype}, "
            f"rollout {p.rollout_dtype}, logits {p.logits_dtype}" + (", loss scaling" if p.loss_scaling else ""),
            f"weight-sync check tolerance: {self.sync_tolerance:g} nats/token ({self.sync_tolerance_reason})",
            f"vLLM memory: {self.engine_memory.describe()}",
            *(self.memory_plan.lines() if self.memory_plan is not None else []),
            f"trainer attention: {self.trainer_attention.backend} ({self.trainer_attention.reason})",
            f"rollout engine: {self.rollout_attention.describe()}",
            f"micro-batch layout: {self.layout} ({self.layout_reason})",
        ]


def decide(config: TrainConfig, engine: Any = None, ranks: int = 1,
           exclude: dict[str, dict[str, str]] | None = None) -> RunDecisions:
    """Decide everything for ``config`` on this machine (``engine``: an engine already started for this model,
    whose rollout decision is then the run's; ``ranks``: data-parallel ranks, for the GPU memory plan; ``exclude``:
    per engine ('trainer', 'rollout'), attention backends not to use, with the reason, e.g. after a kernel fault).
    Raises MemoryPlanError, before anything loads, when the run cannot fit on the GPU."""
    exclude = exclude or {}
    env = probe_environment()
    device, device_reason = decide_device(config.precision.device)
    if config.precision.policy == "auto":
        name, policy_reason = default_policy_name(env)
        if device.type == "cpu" and name != "fp32":  # a GPU machine asked to train on CPU
            name, policy_reason = "fp32", "training on CPU: no fast 16-bit kernels, float32 is exact"
    else:
        name, policy_reason = config.precision.policy, "precision.policy"
    policy = get_policy(name)
    if config.rollout.sync_tolerance is not None:
        tolerance, tolerance_reason = config.rollout.sync_tolerance, "rollout.sync_tolerance"
    elif policy.rollout_dtype == "float32" and policy.compute_dtype == "float32":
        tolerance, tolerance_reason = 1e-2, "float32 trainer and rollout agree to ~1e-5; 1e-2 leaves margin"
    else:
        tolerance, tolerance_reason = 0.15, (f"{policy.rollout_dtype} rollout vs {policy.compute_dtype} trainer "
                                             "differ by ~1e-2 per token from rounding alone")
    check_model_path(config.model.path)  # the CPU KV-cache size reads the model's config
    model_config = AutoConfig.from_pretrained(config.model.path)
    plan = None
    if engine_device_type() == "cuda" and device.type == "cuda":  # one GPU for both: the plan sizes the engine
        plan = plan_for_config(config, ranks=ranks, policy=policy, model_config=model_config)[0].check()
    memory = engine_memory(config, policy.rollout_dtype, config.model.path, engine_max_model_len(config), plan)
    trainer_attention = resolve_attention("trainer", model_config, policy, request=config.model.attention, env=env,
                                          exclude=exclude.get("trainer"))
    rollout_attention = (engine.decision if engine is not None else
                         resolve_rollout_attention(engine_config(config, policy, memory), env=env,
                                                   exclude=exclude.get("rollout")))
    layout, layout_reason = resolve_layout(trainer_attention.backend, config.algorithm.sequence_layout)
    packed_attention, _ = packed_attention_for(trainer_attention.backend)
    return RunDecisions(device, device_reason, policy, policy_reason, tolerance, tolerance_reason, memory, plan,
                        trainer_attention, rollout_attention, layout, layout_reason, packed_attention)


def decide_device(request: str) -> tuple[torch.device, str]:
    """(training device, reason) for ``precision.device``."""
    if request == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return device, "auto: CUDA available" if device.type == "cuda" else "auto: no CUDA device"
    device = torch.device(request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"precision.device={request} but torch sees no CUDA device; use precision.device=cpu "
                           "or auto")
    return device, "precision.device"


def engine_memory(config: TrainConfig, rollout_dtype: str, model_path: str, max_model_len: int,
                  plan: MemoryPlan | None = None) -> EngineMemory:
    """The rollout engine's memory settings (deepscaler.rollout.memory decides, from the memory plan on a GPU;
    rollout.gpu_memory_utilization and rollout.kv_cache_memory_bytes override)."""
    return resolve_engine_memory(engine_device_type(), "train", config.rollout.gpu_memory_utilization,
                                 config.rollout.kv_cache_memory_bytes, model_path, max_model_len,
                                 rollout_dtype=rollout_dtype, plan=plan)


def engine_config(config: TrainConfig, policy: PrecisionPolicy, memory: EngineMemory) -> EngineConfig:
    """How the rollout engine for ``model.path`` starts: the policy's rollout dtype and the decided memory."""
    extra: dict[str, Any] = dict(memory.engine_kwargs())
    if config.rollout.max_num_batched_tokens:
        extra["max_num_batched_tokens"] = config.rollout.max_num_batched_tokens
    return EngineConfig(
        model=config.model.path,
        tokenizer=config.model.tokenizer,
        dtype=policy.rollout_dtype,
        precision=policy.name,
        attention_backend=config.rollout.attention,
        max_model_len=engine_max_model_len(config),
        gpu_memory_utilization=memory.gpu_memory_utilization,
        seed=config.trainer.seed,
        enforce_eager=config.rollout.enforce_eager,
        sleep_level=config.rollout.sleep_level,
        extra_engine_kwargs=extra,
    )


def check_model_path(path: str) -> None:
    """Fail early, with the fix, when ``path`` looks like a local folder that does not exist."""
    looks_local = path.startswith((".", "/", "~")) or path.startswith("runs/") or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model.path={path} does not exist. If it is an earlier stage's checkpoint, run that "
                                "stage first (or use the chained recipe deepscaler-1.5b); otherwise pass "
                                "model.path=<hub id or folder>")
