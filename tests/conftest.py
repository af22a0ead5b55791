"""Shared fixtures: a tiny Qwen2 model saved locally, a vLLM engine on it, and the optional DeepScaleR data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# vLLM's in-process engine (no engine-core subprocess) starts in seconds on CPU; set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepscaler"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised Qwen2 model + tokenizer saved with save_pretrained."""
    from deepscaler.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    """An in-process vLLM engine on the tiny model (float32, 256 positions); one per test module, since some
    modules change its weights."""
    pytest.importorskip("vllm")
    from deepscaler.rollout import EngineConfig, RolloutEngine

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256,
                                        gpu_memory_utilization=0.1, precision="fp32"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data/deepscaler beside the project; tests that need it skip cleanly when it is absent."""
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"DeepScaleR data folder not found at {SHARED_DATA}")
    return SHARED_DATA
