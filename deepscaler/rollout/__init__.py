"""Rollout generation: vLLM engine with in-place weight updates."""

from deepscaler.rollout.engine import Completion, EngineConfig, RolloutEngine, SamplingSettings

__all__ = ["Completion", "EngineConfig", "RolloutEngine", "SamplingSettings"]
