"""The run's GPU memory plan from its config (deepscaler.rollout.memory_plan does the arithmetic): printed at
start-up and by ``deepscaler train --dry-run``, and checked before any model loads."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig

from deepscaler.precision import get_policy
from deepscaler.rollout.engine_setup import enforce_eager_choice, sleep_level_choice
from deepscaler.rollout.memory_plan import MemoryPlan, ModelGeometry, PlanInputs, parse_bytes, plan_memory
from deepscaler.training.config import TrainConfig, stage_config

PUBLISHED_GEOMETRIES = {
    # From the model's published config.json (Qwen2 layout, untied embeddings), so that a dry-run can plan the
    # recipes' model on a machine that has neither its files nor a network.
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ModelGeometry(
        num_layers=28, hidden_size=1536, intermediate_size=8960, num_heads=12, num_kv_heads=2, head_dim=128,
        vocab_size=151936, tied_embeddings=False, attention_bias=True),
}
"""Geometries of the recipes' models, used only when their config cannot be read."""

PLANNED_POLICY = "bf16-mixed"
"""Precision planned for ``precision.policy=auto`` on a GPU that is not here: the preset auto picks on sm80+."""


def engine_max_model_len(config: TrainConfig) -> int:
    """The rollout engine's context: the longest prompt + response (training or validation) over all stages."""
    configs = [stage_config(config, s) for s in config.trainer.stages] or [config]
    return max(c.data.max_prompt_length + max(c.data.max_response_length, c.validation.max_response_length or 0)
               for c in configs)


def plan_for_config(config: TrainConfig, *, ranks: int = 1, gpu_memory_bytes: int | None = None,
                    policy: Any = None, model_config: Any = None) -> tuple[MemoryPlan | None, str]:
    """(the plan or None, a note saying what it planned for or why there is none).

    Args:
        config: the run's config; every stage counts (the longest context and largest micro-batch).
        ranks: data-parallel ranks (one GPU each).
        gpu_memory_bytes: the GPU's total; None: ``precision.gpu_memory``, else the CUDA device's total, else no
            plan (a CPU run without a GPU to plan for).
        policy: the resolved PrecisionPolicy (None: from ``precision.policy``, bf16-mixed for auto).
        model_config: the policy's transformers config (None: read from ``model.path``).
    """
    if gpu_memory_bytes is None and config.precision.gpu_memory is not None:
        gpu_memory_bytes = parse_bytes(config.precision.gpu_memory)
    if gpu_memory_bytes is None:
        if not torch.cuda.is_available():
            return None, "no memory plan: no CUDA GPU here (plan for one with --gpu-memory 80GiB)"
        gpu_memory_bytes = torch.cuda.mem_get_info()[1]
    if policy is None:
        name = config.precision.policy
        policy = get_policy(PLANNED_POLICY if name == "auto" else name)
    geometry_note = ""
    if model_config is None:
        try:
            geometry = ModelGeometry.from_config(AutoConfig.from_pretrained(config.model.path))
        except (OSError, ValueError) as error:
            if config.model.path not in PUBLISHED_GEOMETRIES:
                return None, (f"no memory plan: cannot read the model config at model.path={config.model.path} "
                              f"({type(error).__name__}); pass a folder or a cached hub id")
            geometry = PUBLISHED_GEOMETRIES[config.model.path]
            geometry_note = f"; {config.model.path}'s published geometry (its config could not be read here)"
    else:
        geometry = ModelGeometry.from_config(model_config)
    stages = [stage_config(config, s) for s in config.trainer.stages] or [config]
    sleep, sleep_reason = sleep_level_choice(config.rollout.sleep_level, "cuda")
    eager, _ = enforce_eager_choice(config.rollout.enforce_eager, "cuda")
    inputs = PlanInputs(
        geometry=geometry, gpu_memory_bytes=gpu_memory_bytes,
        max_model_len=engine_max_model_len(config),
        micro_batch_tokens=max(s.algorithm.max_tokens_per_micro_batch for s in stages), ranks=ranks,
        param_dtype=policy.param_dtype, compute_dtype=policy.compute_dtype, rollout_dtype=policy.rollout_dtype,
        gradient_checkpointing=all(s.model.gradient_checkpointing for s in stages),
        reference=("none" if all(s.algorithm.kl_coef == 0 for s in stages) else
                   "cpu" if config.model.reference_offload else "gpu"),
        sleep_level=sleep, cuda_graphs=not eager,
        max_num_batched_tokens=config.rollout.max_num_batched_tokens or PlanInputs.max_num_batched_tokens,
        requested_fraction=config.rollout.gpu_memory_utilization,
        requested_kv_bytes=config.rollout.kv_cache_memory_bytes)
    return plan_memory(inputs), f"precision {policy.name}; sleep level {sleep} ({sleep_reason}){geometry_note}"
