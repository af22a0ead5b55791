"""Evaluation: n samples per problem, the DeepScaleR reward, Pass@k tables and resumable response files."""

from deepscaler.evaluation.passk import default_ks, mean_pass_at_k, pass_at_k
from deepscaler.evaluation.report import (
    average_row,
    dataset_metrics,
    markdown_table,
    rich_table,
    write_results,
)
from deepscaler.evaluation.responses import ResponseStore
from deepscaler.evaluation.runner import EvalConfig, dataset_label, evaluate, resolve_max_model_len

__all__ = [
    "EvalConfig", "ResponseStore", "average_row", "dataset_label", "dataset_metrics", "default_ks", "evaluate",
    "markdown_table", "mean_pass_at_k", "pass_at_k", "resolve_max_model_len", "rich_table", "write_results",
]
