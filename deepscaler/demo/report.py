"""What the demo writes and prints: atomic JSON files, the phase-time table and the demo figure."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically: a reader (or a rerun after kill -9) never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class PhaseTimes:
    """Seconds per phase of this invocation; phases skipped because an earlier run finished them say so."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, name: str, note: str = "") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - started, note))

    def skipped(self, name: str, note: str) -> None:
        self.rows.append((name, 0.0, note))

    def table(self, total: float) -> str:
        width = max(len(name) for name, _, _ in self.rows + [("total", 0.0, "")])
        lines = [f"{'phase':<{width}}  {'seconds':>8}  note", f"{'-' * width}  {'-' * 8}  ----"]
        lines += [f"{name:<{width}}  {seconds:8.1f}  {note}" for name, seconds, note in self.rows]
        lines.append(f"{'total':<{width}}  {total:8.1f}  wall time of this invocation")
        return "\n".join(lines)


def write_demo_plot(run_dir: Path, warmup_history: list[dict[str, Any]], before: dict[str, float],
                    after: dict[str, float], problems: int) -> str:
    """``RUN/demo.png``: the warm-up's loss and held-out Pass@1 (its plateau), and Pass@1 before/after RL per
    evaluation mode."""
    import matplotlib  # heavy optional dependency, only needed once at the end

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, bar_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot([r["step"] for r in warmup_history], [r["loss"] for r in warmup_history], marker="o",
                 markersize=3, label="response cross-entropy")
    loss_ax.set_yscale("log")
    loss_ax.set_title("Supervised warm-up on the flawed teacher")
    loss_ax.set_xlabel("warm-up step")
    loss_ax.set_ylabel("cross-entropy (log scale)")
    loss_ax.grid(alpha=0.3)
    evaluated = [r for r in warmup_history if "pass@1" in r]
    if evaluated:
        pass_ax = loss_ax.twinx()
        pass_ax.plot([r["step"] for r in evaluated], [r["pass@1"] for r in evaluated], color="tab:red",
                     marker="s", markersize=4, label="greedy Pass@1 (validation)")
        pass_ax.set_ylim(0, 1)
        pass_ax.set_ylabel("greedy Pass@1", color="tab:red")
    modes = list(before)
    xs = range(len(modes))
    bar_ax.bar([x - 0.2 for x in xs], [before[m] for m in modes], width=0.4, label="after warm-up")
    bar_ax.bar([x + 0.2 for x in xs], [after[m] for m in modes], width=0.4, label="after GRPO")
    bar_ax.set_xticks(list(xs), modes)
    bar_ax.set_ylim(0, 1)
    bar_ax.set_title(f"Pass@1 on {problems} held-out problems")
    bar_ax.legend(loc="upper left", fontsize=8)
    bar_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = run_dir / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
