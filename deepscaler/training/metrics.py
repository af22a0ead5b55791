"""Metrics: the always-on JSONL file and optional trackers (wandb / tensorboard / trackio); the progress display
is :mod:`deepscaler.console.progress`.

Metric names are namespaced the way verl/DeepScaleR users read them: ``reward/mean``, ``response_length/mean``,
``response_length/clip_ratio``, ``actor/kl``, ``actor/clipfrac``, ``actor/entropy``, ``actor/grad_norm``,
``actor/lr``, ``rollout/logprob_diff``, ``batch/solve_none``, ``batch/solve_all``, ``timing_s/<phase>``,
``throughput/tokens_per_s``, ``val/pass@1/<dataset>``. One JSON object per line, each with ``step``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deepscaler.training.faults import where

METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------------------
# Pure metric helpers


class Timer:
    """``with timer("rollout"): ...`` accumulates seconds into ``timer.seconds["rollout"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        where.enter(name)  # the phase an incident report names if this one fails
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"timing_s/{name}": value for name, value in self.seconds.items()}


def summarize(values: Sequence[float], name: str, stats: Sequence[str] = ("mean", "max", "min")) -> dict[str, float]:
    """``{name/mean, name/max, name/min[, name/std]}`` of a list of numbers (empty -> nothing)."""
    if not values:
        return {}
    out: dict[str, float] = {}
    mean = sum(values) / len(values)
    for stat in stats:
        if stat == "mean":
            out[f"{name}/mean"] = mean
        elif stat == "max":
            out[f"{name}/max"] = float(max(values))
        elif stat == "min":
            out[f"{name}/min"] = float(min(values))
        elif stat == "std":
            out[f"{name}/std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return out


def group_solve_rates(rewards: Sequence[float], group_size: int, solved_at: float = 1.0) -> dict[str, float]:
    """``batch/solve_none`` and ``batch/solve_all``: fraction of prompt groups (consecutive ``group_size``
    rewards) where no / every sample reached ``solved_at``."""
    if group_size <= 0 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards), group_size)]
    if not groups:
        return {}
    none = sum(all(r < solved_at for r in g) for g in groups) / len(groups)
    every = sum(all(r >= solved_at for r in g) for g in groups) / len(groups)
    return {"batch/solve_none": none, "batch/solve_all": every}


def response_metrics(lengths: Sequence[int], truncated: Sequence[bool]) -> dict[str, float]:
    """``response_length/{mean,max,min,clip_ratio}``; clip_ratio = fraction cut at the length limit."""
    out = summarize([float(x) for x in lengths], "response_length")
    if truncated:
        out["response_length/clip_ratio"] = sum(bool(t) for t in truncated) / len(truncated)
    return out


# ----------------------------------------------------------------------------------------------------------
# JSONL file + trackers


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl (``path`` may be the run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                continue
    return rows


class MetricsLogger:
    """Appends one JSON line per step to ``RUN_DIR/metrics.jsonl`` and forwards to the chosen trackers.

    On resume from step k, rows with step > k (written by the interrupted run after its last checkpoint) are
    dropped first, so the file reads as if the run had never stopped. ``enabled=False`` (data-parallel ranks
    other than 0) writes nothing.
    """

    def __init__(self, run_dir: str | Path, backends: Sequence[str] = (), project: str = "deepscaler",
                 experiment: str = "run", config: dict[str, Any] | None = None, resume_step: int | None = None,
                 enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self._file, self._trackers = None, []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step]
            # temp file + rename: a kill during this rewrite must not lose the rows before the resume step
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._trackers = [_open_tracker(b, Path(run_dir), project, experiment, config or {}) for b in backends]

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self._file is None:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        for tracker in self._trackers:
            tracker.log(step, numeric)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for tracker in self._trackers:
            tracker.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class _Tracker:
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def _require(module: str, backend: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"logging.backends includes '{backend}' but the '{module.split('.')[0]}' package is not "
                          f"installed; `pip install {backend}` (or `pip install 'deepscaler[{backend}]'`), or remove "
                          f"'{backend}' from logging.backends") from exc


def _open_tracker(backend: str, run_dir: Path, project: str, experiment: str, config: dict) -> _Tracker:
    if backend in ("wandb", "trackio"):
        lib = _require(backend, backend)
        run = lib.init(project=project, name=experiment, config=config)

        class _WandbLike(_Tracker):
            def log(self, step: int, metrics: dict[str, float]) -> None:
                run.log(metrics, step=step)

            def close(self) -> None:
                run.finish() if hasattr(run, "finish") else lib.finish()

        return _WandbLike()
    if backend == "tensorboard":
        module = _require("torch.utils.tensorboard", "tensorboard")
        writer = module.SummaryWriter(log_dir=str(run_dir / "tensorboard"))

        class _Tensorboard(_Tracker):
            def log(self, step: int, metrics: dict[str, float]) -> None:
                for key, value in metrics.items():
                    writer.add_scalar(key, value, step)

            def close(self) -> None:
                writer.close()

        return _Tensorboard()
    raise ValueError(f"logging.backends: unknown tracker '{backend}'; choose from wandb, tensorboard, trackio")
