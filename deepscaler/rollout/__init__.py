"""Rollout generation: vLLM engine with in-place weight updates, and its memory settings."""

from deepscaler.rollout.engine import Completion, EngineConfig, RolloutEngine, SamplingSettings
from deepscaler.rollout.memory import EngineMemory, engine_device_type, resolve_engine_memory

__all__ = ["Completion", "EngineConfig", "EngineMemory", "RolloutEngine", "SamplingSettings", "engine_device_type",
           "resolve_engine_memory"]
