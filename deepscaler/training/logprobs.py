"""Phases 5-6 of a GRPO step: per-sequence log-probs of the sampled responses under the trainer's policy (the
"old" log-probs of PPO) and under the frozen reference model, without gradients; and how far the trainer's
log-probs are from those the rollout engine reported."""

from __future__ import annotations

import torch

from deepscaler.precision import logprob_mismatch
from deepscaler.rollout.engine_setup import empty_cuda_cache
from deepscaler.training.micro_batches import restore_order
from deepscaler.training.packing import pad_responses, token_logprobs
from deepscaler.training.rollouts import Rollouts
from deepscaler.training.run import Run


def sequence_logprobs(run: Run, model: torch.nn.Module, batch: Rollouts, temperature: float) -> list[torch.Tensor]:
    """Per-sequence log-probs of the response tokens (no grad), in micro-batches within the token budget."""
    decisions, batcher = run.decisions, run.batcher
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    plan = batcher.plan(lengths)
    results = []
    with torch.no_grad(), decisions.policy.autocast(decisions.device.type):
        for indices in plan:
            if not indices:  # this rank has run out: an empty forward keeps FSDP's all-gathers in step
                token_logprobs(model, batcher.idle(), temperature, packed_attention=decisions.packed_attention)
                results.append([])
                continue
            micro = batcher.make([batch.prompt_ids[i] for i in indices], [batch.response_ids[i] for i in indices])
            logprobs, _ = token_logprobs(model, micro, temperature, packed_attention=decisions.packed_attention)
            results.append([logprobs[k, : len(batch.response_ids[i])].float().cpu() for k, i in enumerate(indices)])
    return restore_order(results, plan)


def reference_logprobs(run: Run, batch: Rollouts, temperature: float) -> list[torch.Tensor]:
    """:func:`sequence_logprobs` under the reference model; with ``model.reference_offload`` the model comes from
    host memory for this phase only and goes back after it (its device memory returned to the driver)."""
    model = run.ref_model
    if not run.config.model.reference_offload:
        return sequence_logprobs(run, model, batch, temperature)
    model.to(run.decisions.device)
    try:
        return sequence_logprobs(run, model, batch, temperature)
    finally:
        model.to("cpu")
        empty_cuda_cache()


def mismatch_metrics(trainer: list[torch.Tensor], rollout: list[list[float]]) -> dict[str, float]:
    """``rollout/logprob_diff`` (mean |trainer - vLLM| per token) plus deepscaler.precision's mismatch stats."""
    trainer_padded = pad_responses(trainer)
    rollout_padded = pad_responses([torch.tensor(r) for r in rollout])
    mask = pad_responses([torch.ones(len(r)) for r in rollout])
    count = mask.sum().clamp(min=1)
    metrics = {"rollout/logprob_diff": float(((trainer_padded - rollout_padded).abs() * mask).sum() / count)}
    for key, value in logprob_mismatch(trainer_padded, rollout_padded, mask).items():
        name = key if "/" in key else f"rollout/logprob_diff_{key}"
        metrics[name] = float(value)
    return metrics
