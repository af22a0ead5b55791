"""The demo's own settings (``demo.<field>=value`` on the command line) and its one automatic choice.

GRPO's settings are the ``demo`` recipe (``deepscaler/recipes/demo.yaml``); every other ``key=value`` override
goes there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deepscaler.models.tiny import TinyModelSpec
from deepscaler.training.config import ConfigError, from_dict, parse_overrides

OVERRIDE_PREFIX = "demo."


@dataclass
class DemoSettings:
    """The demo's own knobs (``demo.<field>=value`` on the command line); GRPO's are in demo.yaml."""

    run_dir: str = "runs/demo"
    """Run folder: warmup/, grpo/ (checkpoints, metrics, plots), eval_before/, eval_after/, summary.json."""
    seed: int = 0
    """Seed of the model initialisation, the problem draws and the warm-up's batch order."""
    hidden_size: int = 128
    """Width of the tiny model (head_dim 32, so hidden_size/32 attention heads)."""
    num_layers: int = 2
    """Transformer blocks of the tiny model."""
    intermediate_size: int = 384
    """MLP width of the tiny model."""
    min_digits: int = 2
    """Fewest digits of an operand."""
    max_digits: int = 3
    """Most digits of an operand."""
    operations: str = "+-"
    """Operators drawn, any of '+' and '-'."""
    train_problems: int = 20000
    """Distinct training problems (the warm-up and GRPO draw from them; never from the held-out part)."""
    eval_problems: int = 500
    """Held-out problems for Pass@1 before and after RL."""
    val_problems: int = 200
    """The first N held-out problems also measure the warm-up's plateau and the GRPO loop's validation curve."""
    teacher_flaw_fraction: float = 0.7
    """Share of problems on which the teacher boxes the result plus one (its traces are always right): the
    converged warm-up imitates this majority, and the verifiable reward must find the minority behaviour."""
    warmup_steps: int = 800
    """Optimizer steps of the supervised warm-up; its cosine schedule always runs to the end (convergence)."""
    warmup_batch_size: int = 32
    """Warm-up sequences per step."""
    warmup_lr: float = 3e-3
    """Warm-up peak learning rate (linear warm-up, cosine decay to 10 % at the last step)."""
    warmup_eval_every: int = 100
    """Greedy Pass@1 on the validation problems every this many warm-up steps (the plateau in summary.json)."""
    eval_temperature: float = 0.0
    """Temperature of the headline Pass@1 (n=1 per problem): 0 is greedy. The other mode (T=0.6, DeepScaleR's
    evaluation temperature) is measured too and reported beside it."""
    eval_max_tokens: int = 64
    """Response limit when evaluating (the longest teacher response is 57 tokens with its EOS)."""
    threads: str = "auto"
    """Torch CPU threads for the warm-up and the trainer: "auto" (see choose_num_threads) or a number."""

    def __post_init__(self) -> None:
        checks = [
            (self.hidden_size > 0 and self.hidden_size % 32 == 0, "hidden_size", "a positive multiple of 32"),
            (0.0 <= self.teacher_flaw_fraction < 1.0, "teacher_flaw_fraction", "in [0, 1)"),
            (self.warmup_steps >= 1, "warmup_steps", ">= 1"),
            (self.eval_problems >= 1, "eval_problems", ">= 1"),
            (0 <= self.val_problems <= self.eval_problems, "val_problems", "between 0 and eval_problems"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ConfigError(f"demo.{name}={getattr(self, name)!r}: must be {rule}")

    def model_spec(self) -> TinyModelSpec:
        """The tiny Qwen2 geometry: head_dim 32 (vLLM's smallest), half as many KV heads as query heads."""
        heads = self.hidden_size // 32
        return TinyModelSpec(hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                             num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=32,
                             intermediate_size=self.intermediate_size, max_position_embeddings=256)


def split_overrides(overrides: Sequence[str]) -> tuple[DemoSettings, list[str]]:
    """``demo.*`` overrides → DemoSettings (type-checked); the rest are GRPO config overrides."""
    demo_values: dict[str, Any] = {}
    rest: list[str] = []
    for item in overrides:
        if item.startswith(OVERRIDE_PREFIX):
            ((key, value),) = parse_overrides([item])
            demo_values[key.removeprefix(OVERRIDE_PREFIX)] = value
        else:
            rest.append(item)
    try:
        settings = from_dict(DemoSettings, demo_values, prefix=OVERRIDE_PREFIX)
    except ConfigError as error:
        known = ", ".join(OVERRIDE_PREFIX + k for k in asdict(DemoSettings()))
        raise ConfigError(f"{error} (demo settings: {known})") from error
    return settings, rest


def idle_cores(window_s: float = 0.5) -> tuple[float, str] | None:
    """How many cores sat idle over the last ``window_s`` seconds, from two reads of ``/proc/stat``, and how
    that was measured; None where there is no ``/proc/stat`` (macOS, Windows).

    The 1-minute load average lags: right after a test run ends it still reads ~2 on an idle 2-core machine, so
    a demo started then would run on one thread for nothing. Two reads half a second apart see the machine now.
    """
    def read() -> tuple[list[int], int] | None:
        try:
            with open("/proc/stat") as stat:
                lines = stat.read().splitlines()
        except OSError:
            return None
        total = [int(v) for v in lines[0].split()[1:]]
        return total, sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())

    first = read()
    if first is None:
        return None
    time.sleep(window_s)
    second = read()
    if second is None:
        return None
    (before, cores), (after, _) = first, second
    deltas = [b - a for a, b in zip(before, after, strict=False)]
    elapsed = sum(deltas)
    if elapsed <= 0 or cores <= 0:
        return None
    idle = deltas[3] + (deltas[4] if len(deltas) > 4 else 0)  # idle + iowait columns
    return cores * idle / elapsed, f"over the last {window_s:g}s"


def choose_num_threads(request: str = "auto", cpu_count: int | None = None,
                       idle: tuple[float, str] | None = None) -> tuple[int, str]:
    """Torch intra-op threads for the warm-up and the trainer, and why.

    OpenMP threads wait for each other at the end of every parallel region, so when other processes hold the
    cores one slow thread stalls the rest: on a 2-core machine at load ~4, a training step took 4.3x longer
    with 2 threads than with 1. "auto" therefore uses every core only when at least 1.5 cores are idle now
    (:func:`idle_cores`; the 1-minute load average where ``/proc/stat`` is missing). ``idle`` is
    (idle cores, how measured), measured here when None.
    """
    cpu_count = cpu_count or os.cpu_count() or 1
    if request != "auto":
        try:
            threads = int(request)
        except ValueError as error:
            raise ConfigError(f"demo.threads={request!r}: use 'auto' or a positive integer") from error
        if threads < 1:
            raise ConfigError(f"demo.threads={threads}: use 'auto' or a positive integer")
        return threads, "demo.threads"
    if cpu_count == 1:
        return 1, "auto: one core"
    if idle is None:
        idle = idle_cores()
    if idle is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        idle = (cpu_count - load, f"by the 1-min load average {load:.1f}")
    free, how = min(idle[0], cpu_count), idle[1]
    if free >= 1.5:
        return cpu_count, f"auto: {free:.1f} of {cpu_count} cores idle {how}"
    return 1, (f"auto: only {max(free, 0):.1f} of {cpu_count} cores idle {how}; "
               "one thread avoids OpenMP threads stalling on busy cores")
