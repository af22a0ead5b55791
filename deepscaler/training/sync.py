"""Phase 9 of a GRPO step, weight sync: push the trainer's weights into the rollout engine (in place), then score a
fixed probe sequence in both and fail loudly if the engine disagrees with the trainer or did not change when the
trainer did.

Silent stale-weight bugs (the engine keeps sampling from old weights) cost other frameworks weeks (TRL #5312,
verl #7495); this check runs after every sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscaler.training.distributed import all_gather, full_tensors
from deepscaler.training.packing import pack_sequences, token_logprobs
from deepscaler.training.run import Run


class WeightSyncError(RuntimeError):
    """The rollout engine's weights do not match the trainer's after a sync."""


@dataclass(frozen=True)
class SyncCheck:
    """Outcome of one probe comparison."""

    ok: bool
    """False when the engine is stale or disagrees with the trainer."""
    diff: float
    """Mean |engine − trainer| log-prob on the probe tokens after the sync (nats/token)."""
    trainer_change: float
    """Mean |trainer_now − trainer_before|: how much the update moved the probe's log-probs."""
    engine_change: float
    """Mean |engine_now − engine_before|."""
    message: str
    """Why it failed (empty when ok)."""


def _mean_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"probe log-prob lists differ in length ({len(a)} vs {len(b)})")
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def check_sync(engine_now: Sequence[float], trainer_now: Sequence[float], *, tolerance: float,
               engine_before: Sequence[float] | None = None, trainer_before: Sequence[float] | None = None,
               noise_floor: float = 0.0) -> SyncCheck:
    """Compare the probe's per-token log-probs from the engine and the trainer.

    Two failure modes:
      * mismatch: mean |engine − trainer| > ``tolerance`` (wrong weights, wrong names, dtype trouble);
      * stale: the trainer's probe log-probs moved clearly beyond numeric noise (> 10 × ``noise_floor`` and
        > 1e-6) but the engine's moved less than a tenth as much, i.e. the update did not reach the engine
        (this catches a stale engine even when the update is smaller than ``tolerance``).

    Args:
        engine_now, trainer_now: ``[T]`` log-probs of the probe's scored tokens after the sync.
        tolerance: largest allowed mean |engine − trainer| (nats/token).
        engine_before, trainer_before: the same before this step's update (None on the first sync).
        noise_floor: the engine-vs-trainer difference measured when both certainly held the same weights.
    """
    diff = _mean_abs_diff(engine_now, trainer_now)
    trainer_change = engine_change = 0.0
    if engine_before is not None and trainer_before is not None:
        trainer_change = _mean_abs_diff(trainer_now, trainer_before)
        engine_change = _mean_abs_diff(engine_now, engine_before)
    if diff > tolerance:
        return SyncCheck(False, diff, trainer_change, engine_change,
                         f"after the weight sync the rollout engine's log-probs on the probe differ from the "
                         f"trainer's by {diff:.3g} nats/token (> rollout.sync_tolerance={tolerance}); the engine is "
                         "not running the trainer's weights (names/dtype/partial update). Raise "
                         "rollout.sync_tolerance only if the precision policy explains the gap (bf16 rollout).")
    significant = trainer_change > max(10 * noise_floor, 1e-6)
    if significant and engine_change < 0.1 * trainer_change:
        return SyncCheck(False, diff, trainer_change, engine_change,
                         f"stale rollout weights: the update moved the trainer's probe log-probs by "
                         f"{trainer_change:.3g} nats/token but the engine's by only {engine_change:.3g}; "
                         "update_weights did not reach the engine")
    return SyncCheck(True, diff, trainer_change, engine_change, "")


def build_probe(prompt_ids: Sequence[int], filler_ids: Sequence[int], length: int = 32) -> tuple[list[int], int]:
    """A fixed probe sequence: a training prompt followed by ``length`` filler tokens (cycled), and the prompt
    length (scoring starts after it). Filler tokens are ordinary text so both engines score them normally."""
    filler = [filler_ids[i % len(filler_ids)] for i in range(length)] if filler_ids else []
    return list(prompt_ids) + filler, len(prompt_ids)


def trainer_probe_logprobs(run: Run) -> list[float]:
    """The trainer's log-probs of the probe's response tokens (temperature 1)."""
    sequence, prompt_length = run.probe
    single = pack_sequences([sequence[:prompt_length]], [sequence[prompt_length:]], device=run.decisions.device)
    with torch.no_grad(), run.decisions.policy.autocast(run.decisions.device.type):
        logprobs, _ = token_logprobs(run.model, single, 1.0)
    return logprobs[0].float().cpu().tolist()


def engine_probe_logprobs(run: Run) -> list[float]:
    """The rollout engine's log-probs of the same tokens."""
    sequence, prompt_length = run.probe
    return [float(x) for x in run.engine.score([sequence], [prompt_length])[0]]


def sync_weights(run: Run, initial: bool = False) -> dict[str, float]:
    """Copy the trainer's weights into the engine (HF names, in place; sharded parameters gathered) and verify on
    the probe. With data parallelism every rank checks its own engine, and a failure on any rank stops them all."""
    run.engine.update_weights(full_tensors(run.model))
    if not run.config.rollout.verify_sync:
        return {}
    trainer_now, engine_now = trainer_probe_logprobs(run), engine_probe_logprobs(run)
    history = run.sync_history
    result = check_sync(engine_now, trainer_now, tolerance=run.decisions.sync_tolerance,
                        engine_before=None if initial else history.get("engine"),
                        trainer_before=None if initial else history.get("trainer"),
                        noise_floor=history.get("noise_floor", 0.0))
    failures = all_gather(run.dist, None if result.ok else result.message)
    if any(failures):
        raise WeightSyncError("; ".join(f"rank {r}: {m}" if run.dist.enabled else m
                                        for r, m in enumerate(failures) if m))
    if initial:
        history["noise_floor"] = result.diff
    history.update(engine=engine_now, trainer=trainer_now)
    return {"sync/probe_diff": result.diff, "sync/trainer_change": result.trainer_change,
            "sync/engine_change": result.engine_change}
