"""Checkpoints that transformers and vLLM load as they are, plus everything needed for an exact resume.

Layout of one checkpoint (``RUN_DIR/checkpoints/step_000040/``)::

    config.json, model.safetensors, generation_config.json   # Hugging Face model (save_pretrained)
    tokenizer.json, tokenizer_config.json, ...               # tokenizer (save_pretrained)
    trainer_state.json   # step, stage, data position (epoch, index, shuffle seed), config, versions
    optimizer.pt         # optimizer (keyed by parameter name) + LR scheduler (+ fp16 GradScaler) state dicts
    rng.pt               # python, numpy, torch CPU (+ CUDA) RNG states (rng_rank<r>.pt: data-parallel rank r)

A checkpoint is written into ``.tmp-step_000040`` and renamed at the end, so a folder named ``step_*`` is
always complete (a run killed mid-save leaves only a ``.tmp-*`` folder, which the next save clears).
``trainer_state.json``, written last, lists every file with its size; :func:`checkpoint_problem` checks those
sizes and the files' own framing (safetensors header, the zip directory of ``torch.save``), so a checkpoint
damaged afterwards (a copy cut short, a lost file) is skipped by ``resume=auto`` with a message naming it.
A save that fails (e.g. ``ENOSPC``) removes only its own temporary folder and raises
:class:`CheckpointSaveError`; the older checkpoints are pruned only after a new one is complete.

With data parallelism (FSDP2) the ranks gather the full weights and optimizer state and rank 0 writes them, so a
checkpoint is the same whatever the number of ranks, and a run can resume on a different number.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from deepscaler.training.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    barrier,
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
)
from deepscaler.training.faults import trace

STEP_PATTERN = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass
class DataPosition:
    """Where the training data stream stands: the order is ``permutation(seed, epoch)``; ``index`` is the
    number of problems of that order already consumed."""

    epoch: int = 0
    index: int = 0
    seed: int = 0


@dataclass
class TrainerState:
    """The small mutable state of a run, saved with every checkpoint."""

    step: int = 0
    """Global RL steps completed (continues across stages)."""
    stage: int = 0
    """Index into trainer.stages (0 when the run has no stages)."""
    stage_start_step: int = 0
    """Global step at which the current stage began (its LR schedule counts from here)."""
    data: DataPosition = field(default_factory=DataPosition)
    """Position in the training data stream."""
    consumed_prompts: int = 0
    """Training prompts drawn so far (dynamic sampling may draw more than train_batch_size per step)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        data = dict(data)
        data["data"] = DataPosition(**data.get("data", {}))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_PATTERN.match(p.name)) and p.is_dir()
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path, report: Callable[[str], None] | None = print) -> Path | None:
    """The newest usable checkpoint of a run, or None: newer ones that fail :func:`checkpoint_problem` are
    skipped, each with a message through ``report`` naming it and the reason (``report=None``: silent)."""
    found = list_checkpoints(run_dir)
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if report is not None:
            older = [p for p in found if p.name < path.name]
            report(f"[deepscaler] skipping checkpoint {path}: {problem}; "
                   + (f"trying the previous one ({older[-1].name})" if older else "no older checkpoint left"))
    return None


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed; the previous checkpoints are untouched."""


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or None when it looks whole.

    Checks without reading the tensors: the state file parses; every file it lists has the recorded size;
    each ``*.safetensors`` header is readable and its tensors end exactly at the end of the file; each
    ``*.pt`` (``torch.save`` zip) has its zip directory (the part a cut-off write loses first)."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} unreadable ({err})"
    for name, size in (meta.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (truncated or altered)"
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        return "no *.safetensors weights"
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            return f"{shard.name} {problem}"
    if not (path / "optimizer.pt").is_file():
        return "optimizer.pt is missing"
    for blob in sorted(path.glob("*.pt")):
        if not zipfile.is_zipfile(blob):
            return f"{blob.name} is not a complete torch.save archive (truncated?)"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """None if the safetensors framing is intact: 8-byte header length, JSON header, data ending at EOF."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                return f"is truncated ({size} bytes, header alone claims {header_size})"
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError, struct.error) as err:
        return f"has an unreadable header ({err})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if expected != size:
        return f"is truncated ({size} bytes, its header describes {expected})"
    return None


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, state: TrainerState, model: torch.nn.Module, tokenizer: Any,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    config: dict[str, Any] | None = None, keep_last: int = 0,
                    protected_steps: Sequence[int] = (), dist: DistInfo = SINGLE_PROCESS) -> Path:
    """Write a checkpoint atomically (temp folder, then rename) and prune to the newest ``keep_last``
    (checkpoints of ``protected_steps``, e.g. the ends of context-lengthening stages, are never pruned).

    The model is saved in its master dtype (fp32 by default) with ``save_pretrained``, so
    ``AutoModelForCausalLM.from_pretrained(path)`` and ``vllm.LLM(path)`` load it directly. With several ranks
    every rank must call this (the full weights and optimizer state are gathered); rank 0 writes.
    """
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.parent / f".tmp-{final.name}"
    weights = _untied(model, full_state_dict(model, keep=dist.is_main)) if dist.enabled else None
    optimizer_state = full_optimizer_state(model, optimizer) if optimizer is not None else None
    if dist.is_main:
        for stale in [*final.parent.glob(".tmp-step_*"), *final.parent.glob(".old-step_*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir(parents=True)
    barrier(dist)
    if not dist.is_main:  # each rank's own RNG streams; rank 0 writes the rest
        torch.save(capture_rng(), tmp / f"rng_rank{dist.rank}.pt")
        barrier(dist)
        barrier(dist)
        return final
    # rank 0 passes both barriers even when a write fails, so the other ranks are not left waiting in them
    failure: OSError | None = None
    try:
        trace("checkpoint:model", state.step)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        trace("checkpoint:optimizer", state.step)
        torch.save({
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        }, tmp / "optimizer.pt")
        trace("checkpoint:rng", state.step)
        torch.save(capture_rng(), tmp / "rng.pt")
    except OSError as err:
        failure = err
    barrier(dist)  # the other ranks' RNG files are in
    if failure is None:
        try:
            meta = {**asdict(state), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "torch": torch.__version__, "config": config, "data_parallel_ranks": dist.world_size,
                    "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}}
            trace("checkpoint:state", state.step)
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2, default=str))
            _fsync_dir(tmp)
            trace("checkpoint:publish", state.step)
            _publish(tmp, final)
        except OSError as err:
            failure = err
    barrier(dist)  # nobody goes on (or resumes) before the checkpoint is visible
    if failure is not None:
        shutil.rmtree(tmp, ignore_errors=True)  # free what this save took; older checkpoints stay as they were
        raise save_error(final, failure, latest_checkpoint(run_dir, report=None)) from failure
    trace("checkpoint:prune", state.step)
    if keep_last > 0:  # only checkpoints up to this step compete: a newer one skipped on resume is not "newest"
        older = [p for p in list_checkpoints(run_dir) if _step_of(p) <= state.step]
        for old in older[:-keep_last]:
            if _step_of(old) not in set(protected_steps):
                shutil.rmtree(old, ignore_errors=True)
    return final


def save_error(final: Path, err: OSError, previous: Path | None) -> CheckpointSaveError:
    """The error a failed save raises: what failed, why, and that the previous checkpoint is intact."""
    hint = " (the disk is full: free space or point trainer.run_dir elsewhere)" if err.errno == errno.ENOSPC else ""
    return CheckpointSaveError(
        f"could not write checkpoint {final}: {err}{hint}. The previous checkpoint "
        f"{previous if previous is not None else '(none)'} is intact; rerun the same command "
        "(checkpoint.resume=auto) to continue from it")


def _step_of(path: Path) -> int:
    return int(STEP_PATTERN.match(path.name).group(1))


def _untied(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the LM head of a model with tied embeddings from a gathered state dict (the gathered copies are
    separate tensors, so save_pretrained would write both, unlike a single-process save)."""
    head = model.get_output_embeddings()
    if not getattr(model.config, "tie_word_embeddings", False) or head is None:
        return weights
    names = [f"{name}.weight" for name, module in model.named_modules() if module is head]
    return {k: v for k, v in weights.items() if k not in names}


def load_trainer_state(path: str | Path) -> TrainerState:
    return TrainerState.from_dict(json.loads((Path(path) / STATE_FILE).read_text()))


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, restore_rng_state: bool = True) -> TrainerState:
    """Load weights (in place, keeping the model's dtype/device), optimizer/scheduler/scaler and RNG states.

    Returns the saved TrainerState. Weights come from the HF files, so a checkpoint edited or produced by
    another tool loads the same way.
    """
    load_weights(path, model)
    load_optimizer_state(path, optimizer, scheduler, scaler, model=model)
    if restore_rng_state:
        load_rng_state(path)
    return load_trainer_state(path)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Copy the checkpoint's safetensors weights into ``model`` in place (strict apart from a tied LM head)."""
    path = Path(path)
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}: no *.safetensors weights; is this a deepscaler checkpoint folder?")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update(load_file(shard))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{path}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                         scaler: Any = None, model: torch.nn.Module | None = None) -> None:
    """Restore optimizer / LR scheduler / GradScaler state dicts saved by :func:`save_checkpoint`.

    The optimizer state is keyed by parameter name, so ``model`` (sharded or not) is needed to place it; without
    it only a positional state (older checkpoints) can be loaded."""
    blobs = torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=False)
    if optimizer is not None and blobs.get("optimizer") is not None:
        if model is not None:
            load_full_optimizer_state(model, optimizer, blobs["optimizer"])
        else:
            optimizer.load_state_dict(blobs["optimizer"])
    if scheduler is not None and blobs.get("scheduler") is not None:
        scheduler.load_state_dict(blobs["scheduler"])
    if scaler is not None and blobs.get("scaler") is not None:
        scaler.load_state_dict(blobs["scaler"])


def load_rng_state(path: str | Path, rank: int = 0) -> None:
    """Restore python / numpy / torch RNG states saved with a checkpoint (no-op if absent); data-parallel rank r
    takes its own file when the checkpoint has one."""
    own = Path(path) / (f"rng_rank{rank}.pt" if rank else "rng.pt")
    file = own if own.is_file() else Path(path) / "rng.pt"
    if file.is_file():
        restore_rng(torch.load(file, map_location="cpu", weights_only=False))


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` folder to ``final``. Re-saving a step (e.g. the end-of-run save right after a
    periodic one) moves the old folder aside first and deletes it only once the new one is in place, so no
    moment exists where that step has no complete checkpoint on disk."""
    aside = final.parent / f".old-{final.name}"
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_parent(final)
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_parent(path: Path) -> None:
    """Make a rename durable (the directory entry itself); best effort, not every OS allows it."""
    try:
        handle = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _fsync_dir(path: Path) -> None:
    """Flush file contents before the rename makes the checkpoint visible (best effort)."""
    for file in path.iterdir():
        if file.is_file():
            try:
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            except OSError:
                pass
