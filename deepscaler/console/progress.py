"""Live training progress: one updating line on a terminal (rich), a line every few steps in a log.

What it shows per step: mean reward, mean response length, KL, seconds per step and sampled tokens per second
(verl's throughput definition), plus the estimated time left. Messages (validation results, checkpoints) are
printed above the live line. Every line shown is also written to the run's log file.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from tqdm.auto import tqdm

# Shown in the progress display, in this order, with short labels.
LIVE_METRICS = [
    ("reward/mean", "reward", "{:.3f}"),
    ("response_length/mean", "len", "{:.0f}"),
    ("actor/kl", "kl", "{:.2e}"),
    ("timing_s/step", "s/step", "{:.2f}"),
    ("throughput/tokens_per_s", "tok/s", "{:.0f}"),
]
PLAIN_LINES = 10
"""About how many progress lines a non-terminal run prints (plus the first and the last step)."""
MODES = ("auto", "rich", "tqdm", "plain", "none")

_file_log = logging.getLogger("deepscaler.progress")


def live_text(metrics: dict[str, Any]) -> str:
    """``reward 0.250 | len 12 | s/step 1.50 | tok/s 480`` from a step's metrics (missing ones left out)."""
    parts = []
    for key, label, fmt in LIVE_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{label} {fmt.format(value)}")
    return " | ".join(parts)


def resolve_mode(requested: str, stream: TextIO) -> tuple[str, str]:
    """(display mode, reason): ``auto`` is rich on a terminal, plain lines otherwise (a file, a pipe, CI)."""
    if requested not in MODES:
        raise ValueError(f"progress mode '{requested}': use one of {', '.join(MODES)} (logging.progress)")
    if requested != "auto":
        return requested, "logging.progress"
    if getattr(stream, "isatty", lambda: False)():
        return "rich", "auto: the console is a terminal"
    return "plain", "auto: the console is not a terminal (a file or a pipe)"


def plain_interval(total_steps: int, lines: int = PLAIN_LINES) -> int:
    """Steps between two plain progress lines: about ``lines`` lines for the whole run, at least every step.

    >>> plain_interval(40), plain_interval(5), plain_interval(1000)
    (4, 1, 100)
    """
    return max(1, math.ceil(total_steps / max(lines, 1)))


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class Progress:
    """The training loop's progress display.

    Args:
        total: last step of the run.
        initial: steps already done (a resumed run).
        mode: "auto" (rich on a terminal, plain otherwise), "rich", "tqdm", "plain" or "none".
        stream: where to write (default: the current ``sys.stdout``).
        every: plain mode's interval in steps; default ``plain_interval(total - initial)``.
    """

    def __init__(self, total: int, initial: int = 0, mode: str = "auto", stream: TextIO | None = None,
                 every: int | None = None):
        self.total, self.step, self.initial = total, initial, initial
        self.stream = stream if stream is not None else sys.stdout
        self.mode, self.mode_reason = resolve_mode(mode, self.stream)
        self.every = every or plain_interval(total - initial)
        self._started = time.perf_counter()
        self._bar: Any = None
        if self.mode == "rich":
            self._bar = RichProgress(TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"),
                                     console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task("train", total=total, completed=initial, live="")
            self._bar.start()
        elif self.mode == "tqdm":
            self._bar = tqdm(total=total, initial=initial, desc="GRPO", file=self.stream, dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Step ``step`` finished with ``metrics``."""
        advance, self.step = step - self.step, step
        text = live_text(metrics)
        line = f"step {step}/{self.total} | {text}" if text else f"step {step}/{self.total}"
        _file_log.info(line, extra={"console": False})
        if self.mode == "rich":
            self._bar.update(self._task, advance=advance, live=text)
        elif self.mode == "tqdm":
            self._bar.update(advance)
            self._bar.set_postfix_str(text)
        elif self.mode == "plain":
            done = step - self.initial
            if done == 1 or step == self.total or done % self.every == 0:
                self._write(f"{line} | eta {_duration(self._eta(done))}")

    def _eta(self, done: int) -> float:
        elapsed = time.perf_counter() - self._started
        return elapsed / max(done, 1) * max(self.total - self.step, 0)

    def message(self, text: str) -> None:
        """A line above the live display (validation results, checkpoint saved, ...)."""
        _file_log.info(text, extra={"console": False})
        if self.mode == "rich":
            self._bar.console.print(text, markup=False, highlight=False)
        elif self.mode == "tqdm":
            self._bar.write(text, file=self.stream)
        elif self.mode == "plain":
            self._write(text)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is None:
            return
        if self.mode == "rich":
            self._bar.stop()
        else:
            self._bar.close()
        self._bar = None
