"""Checkpoints that transformers and vLLM load as they are, plus everything needed for an exact resume.

Layout of one checkpoint (``RUN_DIR/checkpoints/step_000040/``)::

    config.json, model.safetensors, generation_config.json   # Hugging Face model (save_pretrained)
    tokenizer.json, tokenizer_config.json, ...               # tokenizer (save_pretrained)
    trainer_state.json   # step, stage, data position (epoch, index, shuffle seed), config, versions
    optimizer.pt         # optimizer (keyed by parameter name) + LR scheduler (+ fp16 GradScaler) state dicts
    rng.pt               # python, numpy, torch CPU (+ CUDA) RNG states (rng_rank<r>.pt: data-parallel rank r)

A checkpoint is written into ``.tmp-step_000040`` and renamed at the end, so a folder named ``step_*`` is
always complete (a run killed mid-save leaves only a ``.tmp-*`` folder, which the next save clears).

With data parallelism (FSDP2) the ranks gather the full weights and optimizer state and rank 0 writes them, so a
checkpoint is the same whatever the number of ranks, and a run can resume on a different number.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier(dist)
    if not dist.is_main:  # each rank's own RNG streams; rank 0 writes the rest
        torch.save(capture_rng(), tmp / f"rng_rank{dist.rank}.pt")
        barrier(dist)
        barrier(dist)
        return final
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }, tmp / "optimizer.pt")
    torch.save(capture_rng(), tmp / "rng.pt")
    meta = {**asdict(state), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "torch": torch.__version__, "config": config, "data_parallel_ranks": dist.world_size}
    (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2, default=str))
    barrier(dist)  # the other ranks' RNG files are in
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. end-of-run save right after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    barrier(dist)  # nobody goes on (or resumes) before the checkpoint is visible
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if int(STEP_PATTERN.match(old.name).group(1)) not in set(protected_steps):
                shutil.rmtree(old, ignore_errors=True)
    return final


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


def _fsync_dir(path: Path) -> None:
    """Flush file contents before the rename makes the checkpoint visible (best effort)."""
    for file in path.iterdir():
        if file.is_file():
            try:
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            except OSError:
                pass
