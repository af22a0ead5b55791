"""Failures a long run survives, as small pure decisions: what kind of failure an exception is, and what to do
about it (retry, skip, stop, exit).

* :func:`classify` maps an exception to a :class:`FaultKind` from the classes and messages torch, CUDA, cuDNN,
  Triton, flash-attention, NCCL and vLLM raise (e.g. ``torch.OutOfMemoryError`` / "CUDA out of memory",
  "an illegal memory access was encountered", ``torch.distributed.DistBackendError``).
* A *kernel fault* (illegal memory access, device-side assert, launch failure) leaves the CUDA context unusable,
  so the process exits with :data:`EXIT_KERNEL_FAULT` after writing an incident; the next run with
  ``checkpoint.resume=auto`` reads the incident and excludes the attention backend of the engine that faulted.
* Retry policies: :func:`after_engine_failure` (rebuild the rollout engine, retry the call with the same seeds),
  :func:`after_nonfinite_update` (skip the optimizer step; stop after too many in a row),
  :func:`halved_token_budget` (an out-of-memory update is redone with half the micro-batch token budget; the
  gradient does not depend on the split, since every micro-batch's loss uses the mini-batch's normalisers).
* :data:`where` is the last known position of the run (step, phase, micro-batch geometry) that an incident
  report records; the step updates it as it goes.

Fault injection for tests and the chaos benchmark: ``DEEPSCALER_INJECT_FAULTS="engine@3,nonfinite@5"`` makes
the rollout engine's first call of step 3 fail once and step 5's loss non-finite (see :func:`injected`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

EXIT_KERNEL_FAULT = 75
"""Exit status after a kernel fault (sysexits' EX_TEMPFAIL: rerun the same command to continue)."""

INJECT_ENV = "DEEPSCALER_INJECT_FAULTS"
TRACE_ENV = "DEEPSCALER_TRACE_FILE"
"""Test/benchmark hook: append ``<step> <point> <unix time>`` to this file at every phase and checkpoint file
boundary."""
PAUSE_ENV = "DEEPSCALER_TRACE_PAUSE"
"""Test/benchmark hook: ``point@step`` makes the process sleep there (a kill then lands exactly at that point)."""


class FaultKind(str, Enum):
    OUT_OF_MEMORY = "out_of_memory"
    KERNEL_FAULT = "kernel_fault"
    """The GPU hit an invalid state (illegal address, device assert, launch failure): the context is lost."""
    KERNEL_ERROR = "kernel_error"
    """A kernel library refused or failed (cuDNN, flash-attention, Triton, cuBLAS) without corrupting the context."""
    COLLECTIVE = "collective"
    """A collective (NCCL/Gloo) timed out or failed: a rank died or hung."""
    ENGINE = "engine"
    """The rollout engine (vLLM) failed or its worker is gone."""
    NONFINITE = "nonfinite"
    """Too many non-finite losses or gradients in a row."""
    OTHER = "other"


# (substring of the lowered message, kind); checked in order, so the context-corrupting faults win.
_MESSAGES: tuple[tuple[str, FaultKind], ...] = (
    ("an illegal memory access was encountered", FaultKind.KERNEL_FAULT),
    ("illegal memory access", FaultKind.KERNEL_FAULT),
    ("device-side assert triggered", FaultKind.KERNEL_FAULT),
    ("unspecified launch failure", FaultKind.KERNEL_FAULT),
    ("misaligned address", FaultKind.KERNEL_FAULT),
    ("an illegal instruction was encountered", FaultKind.KERNEL_FAULT),
    ("uncorrectable ecc error", FaultKind.KERNEL_FAULT),
    ("cuda out of memory", FaultKind.OUT_OF_MEMORY),
    ("out of memory", FaultKind.OUT_OF_MEMORY),
    ("cudnn_status", FaultKind.KERNEL_ERROR),
    ("cudnn error", FaultKind.KERNEL_ERROR),
    ("cublas_status", FaultKind.KERNEL_ERROR),
    ("flashattention", FaultKind.KERNEL_ERROR),
    ("flash_attn", FaultKind.KERNEL_ERROR),
    ("flash attention", FaultKind.KERNEL_ERROR),
    ("triton", FaultKind.KERNEL_ERROR),
    ("outofresources", FaultKind.KERNEL_ERROR),
    ("nccl", FaultKind.COLLECTIVE),
    ("collective operation timeout", FaultKind.COLLECTIVE),
    ("watchdog caught collective", FaultKind.COLLECTIVE),
    ("enginedeaderror", FaultKind.ENGINE),
    ("enginecore encountered an issue", FaultKind.ENGINE),
)

# attention backends are chosen per engine; a phase tells which engine's kernels were running
TRAINER_PHASES = ("old_logprob", "ref", "update", "validation_trainer")
ROLLOUT_PHASES = ("rollout", "sync", "validation")


@dataclass(frozen=True)
class Classification:
    """What an exception is and what it implies."""

    kind: FaultKind
    reason: str
    """What matched (the class or the message fragment)."""
    corrupts_context: bool = False
    """True for kernel faults: nothing more can run on this device in this process."""

    @property
    def exit_code(self) -> int:
        return EXIT_KERNEL_FAULT if self.kind in (FaultKind.KERNEL_FAULT, FaultKind.KERNEL_ERROR) else 1

    @property
    def blames_attention(self) -> bool:
        """Kernel faults and kernel-library errors point at a kernel choice: the next run avoids the backend."""
        return self.kind in (FaultKind.KERNEL_FAULT, FaultKind.KERNEL_ERROR)


class EngineFailure(RuntimeError):
    """A rollout-engine call failed (raised by :class:`deepscaler.training.engine_guard.GuardedEngine` after
    its restarts ran out); ``__cause__`` is the engine's own exception."""


class NonFiniteStepsError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def _chain(error: BaseException) -> list[BaseException]:
    seen, out = set(), []
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def classify(error: BaseException) -> Classification:
    """The kind of ``error`` (its cause chain included), from the exception classes and messages torch and the
    kernel libraries raise. Pure: reads only the exception."""
    chain = _chain(error)
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    dist_errors = tuple(t for t in (getattr(torch.distributed, "DistBackendError", None),
                                    getattr(torch.distributed, "DistNetworkError", None),
                                    getattr(torch.distributed, "DistStoreError", None)) if isinstance(t, type))
    messages = [f"{type(e).__name__}: {e}".lower() for e in chain]
    # message first: a kernel fault is often reported *as* a RuntimeError or inside another class
    for fragment, kind in _MESSAGES[:7]:
        if any(fragment in m for m in messages):
            return Classification(kind, f"message contains {fragment!r}", corrupts_context=True)
    for e in chain:
        if oom_type is not None and isinstance(e, oom_type):
            return Classification(FaultKind.OUT_OF_MEMORY, type(e).__name__)
        if dist_errors and isinstance(e, dist_errors):
            return Classification(FaultKind.COLLECTIVE, type(e).__name__)
        if isinstance(e, NonFiniteStepsError):
            return Classification(FaultKind.NONFINITE, type(e).__name__)
    for fragment, kind in _MESSAGES[7:]:
        if any(fragment in m for m in messages):
            return Classification(kind, f"message contains {fragment!r}")
    if any(isinstance(e, EngineFailure) for e in chain):
        return Classification(FaultKind.ENGINE, "EngineFailure")
    return Classification(FaultKind.OTHER, type(error).__name__)


def engine_of_phase(phase: str | None) -> str | None:
    """'trainer' or 'rollout': whose attention kernels run in ``phase`` (None when unknown)."""
    if phase in TRAINER_PHASES:
        return "trainer"
    if phase in ROLLOUT_PHASES:
        return "rollout"
    return None


def exit_hint(classification: Classification, incident: str | os.PathLike | None) -> str:
    """The one line printed before exiting on a kernel fault."""
    where = f" (incident: {incident})" if incident else ""
    return (f"deepscaler: {classification.kind.value}: the device context is unusable{where}; rerun the same "
            "command (checkpoint.resume=auto) to continue from the last checkpoint without the attention backend "
            "that faulted")


# ---------------------------------------------------------------------------------------------- policies
@dataclass
class FaultCounters:
    """Consecutive and total counts of the faults a run survived (``faults/*`` metrics)."""

    engine_restarts: int = 0
    engine_failures_in_a_row: int = 0
    skipped_nonfinite: int = 0
    nonfinite_in_a_row: int = 0
    oom_retries: int = 0

    def metrics(self) -> dict[str, float]:
        return {"faults/engine_restarts": float(self.engine_restarts),
                "faults/skipped_nonfinite": float(self.skipped_nonfinite),
                "faults/oom_retries": float(self.oom_retries)}


@dataclass(frozen=True)
class Decision:
    action: str
    """'retry' | 'skip' | 'continue' | 'stop'."""
    reason: str


def after_engine_failure(counters: FaultCounters, max_in_a_row: int) -> Decision:
    """An engine call failed: count it; rebuild and retry unless ``max_in_a_row`` failures came in a row."""
    counters.engine_failures_in_a_row += 1
    if counters.engine_failures_in_a_row > max_in_a_row:
        return Decision("stop", f"the rollout engine failed {counters.engine_failures_in_a_row} times in a row "
                                f"(faults.max_engine_restarts={max_in_a_row})")
    counters.engine_restarts += 1
    return Decision("retry", f"rebuilding the rollout engine from the trainer's weights (restart "
                             f"{counters.engine_failures_in_a_row} of at most {max_in_a_row} in a row)")


def after_engine_success(counters: FaultCounters) -> None:
    counters.engine_failures_in_a_row = 0


def after_nonfinite_update(counters: FaultCounters, finite: bool, max_in_a_row: int) -> Decision:
    """An update's loss/gradient was (non-)finite: a non-finite one is skipped (no optimizer step) and counted;
    more than ``max_in_a_row`` consecutive steps with one stop the run."""
    if finite:
        counters.nonfinite_in_a_row = 0
        return Decision("continue", "finite")
    counters.skipped_nonfinite += 1
    counters.nonfinite_in_a_row += 1
    if counters.nonfinite_in_a_row > max_in_a_row:
        return Decision("stop", f"{counters.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                                f"(faults.max_nonfinite_steps={max_in_a_row})")
    return Decision("skip", "non-finite loss or gradient: optimizer step skipped, weights and optimizer state "
                            "untouched")


def halved_token_budget(budget: int, longest_sequence: int) -> int | None:
    """The micro-batch token budget to retry an out-of-memory update with: half, but at least the longest
    sequence (a micro-batch holds whole sequences); None when it cannot shrink any more."""
    smaller = max(budget // 2, longest_sequence)
    return smaller if smaller < budget else None


# ---------------------------------------------------------------------------------------------- where
@dataclass
class Location:
    """Where the run is: what an incident report records about the moment of failure."""

    step: int | None = None
    phase: str | None = None
    micro_batch: dict[str, Any] = field(default_factory=dict)
    decisions: dict[str, Any] = field(default_factory=dict)
    """The run's automatic choices (device, precision, attention backends, engine memory)."""

    def enter(self, phase: str, step: int | None = None) -> None:
        self.phase = phase
        if step is not None:
            self.step = step
        if phase != "update":
            self.micro_batch = {}
        trace(phase, self.step)


where = Location()
"""The process's current location (one run per process)."""


def trace(point: str, step: int | None = None) -> None:
    """Record reaching ``point`` (a phase, or a file of a checkpoint) when ``DEEPSCALER_TRACE_FILE`` is set, and
    pause there when ``DEEPSCALER_TRACE_PAUSE`` names it: how the chaos benchmark places its kills. No-op
    otherwise."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    step = where.step if step is None else step
    with open(path, "a") as handle:
        handle.write(f"{step} {point} {time.time():.6f}\n")
        handle.flush()
    if os.environ.get(PAUSE_ENV) == f"{point}@{step}":
        time.sleep(3600.0)  # the benchmark kills the process here


# ---------------------------------------------------------------------------------------------- injection
def injection_plan(spec: str | None = None) -> dict[str, set[int]]:
    """Parse ``DEEPSCALER_INJECT_FAULTS`` ("engine@3,nonfinite@5,kernel@2,oom@4"): fault name -> steps."""
    spec = os.environ.get(INJECT_ENV, "") if spec is None else spec
    plan: dict[str, set[int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, step = item.partition("@")
        if name not in ("engine", "nonfinite", "kernel", "oom") or not step.isdigit():
            raise ValueError(f"{INJECT_ENV}: cannot read {item!r}; use name@step with name in engine, nonfinite, "
                             "kernel, oom (e.g. engine@3,nonfinite@5)")
        plan.setdefault(name, set()).add(int(step))
    return plan


_FIRED: set[tuple[str, int]] = set()


def injected(name: str, step: int | None) -> bool:
    """True once per (name, step) listed in ``DEEPSCALER_INJECT_FAULTS`` (test and benchmark hook only)."""
    if step is None or not os.environ.get(INJECT_ENV):
        return False
    if step in injection_plan().get(name, set()) and (name, step) not in _FIRED:
        _FIRED.add((name, step))
        return True
    return False
