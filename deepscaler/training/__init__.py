"""GRPO training: config (``load_config``), the loop (``train``, ``grpo_step``), checkpoints, metrics, plots.

Attributes are imported lazily so that ``import deepscaler.training`` itself loads nothing (no transformers or
vLLM until the loop is asked for)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "deepscaler.training.config",
    "load_config": "deepscaler.training.config",
    "train": "deepscaler.training.loop",
    "grpo_step": "deepscaler.training.loop",
    "TrainResult": "deepscaler.training.loop",
    "plot_run": "deepscaler.training.plots",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepscaler.training' has no attribute {name!r}")
