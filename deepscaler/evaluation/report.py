"""Per-dataset metrics, the results table (rich, markdown) and results.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from deepscaler.evaluation.passk import mean_pass_at_k
from deepscaler.evaluation.responses import write_text_atomic

AVERAGE = "average"


def dataset_metrics(correct: Sequence[Sequence[bool]], response_tokens: Sequence[Sequence[int]] = (),
                    finish_reasons: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
    """pass@k for powers of two ≤ n and n, plus n, problems, mean response tokens and truncated fraction.

    correct: [problems][n] booleans.
    """
    metrics: dict[str, Any] = dict(mean_pass_at_k(correct))
    metrics["n"] = len(correct[0]) if correct else 0
    metrics["problems"] = len(correct)
    tokens = [t for row in response_tokens for t in row]
    reasons = [r for row in finish_reasons for r in row]
    if tokens:
        metrics["mean_response_tokens"] = float(np.mean(tokens))
    if reasons:
        metrics["truncated_fraction"] = float(np.mean([r == "length" for r in reasons]))
    return metrics


def average_row(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over datasets of every pass@k they all report (DeepScaleR's "Avg." column)."""
    rows = [r for name, r in results.items() if name != AVERAGE and r.get("problems")]
    if not rows:
        return {"n": 0, "problems": 0}
    keys = [k for k in rows[0] if k.startswith("pass@") and all(k in r for r in rows)]
    average: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    average["n"] = rows[0]["n"] if all(r["n"] == rows[0]["n"] for r in rows) else None
    average["problems"] = int(sum(r["problems"] for r in rows))
    return average


def _pass_keys(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in results.values():
        keys += [k for k in row if k.startswith("pass@") and k not in keys]
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def _cells(row: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    cells = [f"{100 * row[k]:.1f}" if row.get(k) is not None else "–" for k in keys]
    cells.append(str(row.get("problems", "")))
    cells.append(str(row.get("n", "") if row.get("n") is not None else "mixed"))
    return cells


def rich_table(results: Mapping[str, Mapping[str, Any]], title: str = "Evaluation (%)") -> Table:
    """A ``rich.table.Table``: one row per dataset, then the average; pass@k ×100 with one decimal."""
    keys = _pass_keys(results)
    table = Table(title=title)
    table.add_column("dataset", style="bold")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("problems", justify="right")
    table.add_column("n", justify="right")
    for name, row in results.items():
        if name == AVERAGE:
            table.add_section()
        table.add_row(name, *_cells(row, keys), style="bold" if name == AVERAGE else None)
    return table


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The same table as GitHub markdown."""
    keys = _pass_keys(results)
    header = ["dataset", *keys, "problems", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join([name, *_cells(row, keys)]) + " |" for name, row in results.items()]
    return "\n".join(lines) + "\n"


def write_results(output_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write results.json (dataset → metrics, including "average") and results.md."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown_table(results))
    return out / "results.json"
