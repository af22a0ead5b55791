"""Evaluation: n samples per problem, the DeepScaleR reward, Pass@k tables and resumable response files.

Attributes are imported lazily, so that reading the settings (``deepscaler.evaluation.config``) loads nothing
else."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EvalConfig": "deepscaler.evaluation.config",
    "load_eval_config": "deepscaler.evaluation.config",
    "ResponseStore": "deepscaler.evaluation.responses",
    "average_row": "deepscaler.evaluation.report",
    "dataset_metrics": "deepscaler.evaluation.report",
    "markdown_table": "deepscaler.evaluation.report",
    "rich_table": "deepscaler.evaluation.report",
    "write_results": "deepscaler.evaluation.report",
    "default_ks": "deepscaler.evaluation.passk",
    "mean_pass_at_k": "deepscaler.evaluation.passk",
    "pass_at_k": "deepscaler.evaluation.passk",
    "dataset_label": "deepscaler.evaluation.runner",
    "evaluate": "deepscaler.evaluation.runner",
    "resolve_max_model_len": "deepscaler.evaluation.runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepscaler.evaluation' has no attribute {name!r}")
