"""PNG plots of a run, read from its metrics.jsonl: reward, response length, validation Pass@1 (+ KL/entropy).

Written at the end of training and by ``deepscaler plot RUN_DIR``. Stage changes (8K -> 16K -> 24K) are
marked with vertical lines, as in DeepScaleR's Figure 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepscaler.training.metrics import read_metrics

# file name -> (title, y label, [(metric, legend label)])
PANELS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "reward.png": ("Training reward", "mean reward", [("reward/mean", "reward/mean")]),
    "response_length.png": ("Response length", "tokens", [("response_length/mean", "mean"),
                                                          ("response_length/max", "max")]),
    "clip_ratio.png": ("Responses cut at the length limit", "fraction", [("response_length/clip_ratio",
                                                                          "clip_ratio")]),
    "kl_entropy.png": ("KL to reference and entropy", "nats/token", [("actor/kl", "actor/kl"),
                                                                      ("actor/entropy", "actor/entropy")]),
}


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float):
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


def _stage_boundaries(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    marks, last = [], None
    for row in rows:
        stage = row.get("stage")
        if stage is not None and stage != last:
            if last is not None:
                marks.append((row["step"], str(row.get("stage_name", stage))))
            last = stage
    return marks


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs for ``run_dir`` into ``out_dir`` (default RUN_DIR/plots). Returns the written paths;
    panels whose metrics never appear are skipped."""
    import matplotlib  # heavy optional plotting stack: loaded only when plots are written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    marks = _stage_boundaries(rows)
    written: list[Path] = []

    def finish(fig, ax, name: str) -> None:
        for step, label in marks:
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(label, (step, 1), xycoords=("data", "axes fraction"), fontsize=8, color="grey",
                        xytext=(3, -10), textcoords="offset points")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    for name, (title, ylabel, series) in PANELS.items():
        data = [(label, *_series(rows, key)) for key, label in series]
        data = [d for d in data if d[1]]
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, xs, ys in data:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        finish(fig, ax, name)

    val_keys = sorted({k for row in rows for k in row if k.startswith("val/pass@1/")})
    if val_keys:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in val_keys:
            xs, ys = _series(rows, key)
            ax.plot(xs, ys, marker="o", markersize=3, label=key.removeprefix("val/pass@1/"))
        ax.set_title("Validation Pass@1")
        ax.set_ylabel("Pass@1")
        finish(fig, ax, "val_pass1.png")
    return written
