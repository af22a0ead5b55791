"""Starting vLLM in the trainer's process must not change the trainer's float32 matmul flags or its random
generators (vLLM's worker sets the matmul precision to "highest" and reseeds Python, NumPy and torch)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from deepscaler.precision.policy import MatmulFlags, get_policy
from deepscaler.rollout.engine_setup import trainer_state_kept


def next_draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def seeded_trainer() -> tuple:
    """fp32-fast's TF32 flags and seeded generators; returns the draws the trainer would see next."""
    get_policy("fp32-fast").apply_matmul_flags()
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    expected = next_draws()
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    return expected


@pytest.fixture
def restore_flags():
    saved = MatmulFlags.capture()
    yield
    saved.apply()


def test_a_block_that_resets_flags_and_reseeds_leaves_no_trace(restore_flags):
    expected = seeded_trainer()
    with trainer_state_kept():  # what vLLM's worker does at start-up
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
    assert MatmulFlags.capture() == MatmulFlags("high", True, True)
    assert next_draws() == expected


def test_building_a_cpu_engine_keeps_the_trainers_flags_and_generators(tiny_model_dir, restore_flags):
    pytest.importorskip("vllm")
    from deepscaler.rollout import EngineConfig, RolloutEngine

    expected = seeded_trainer()
    flags = MatmulFlags.capture()
    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=128,
                                        precision="fp32", seed=5))
    try:
        assert MatmulFlags.capture() == flags
        assert next_draws() == expected
    finally:
        engine.close()
