"""Phases 7-8 of a GRPO step: the policy update. ``ppo_epochs`` passes over the step's batch, each cut into
mini-batches of whole groups; a mini-batch runs as token-budget micro-batches whose losses are exact shares of the
mini-batch loss (normalisers over the whole mini-batch and every rank), their gradients summed, then one clipped
optimizer step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from deepscaler.algorithms import LossNormalizer, PolicyLossConfig, compute_policy_loss, sum_metrics
from deepscaler.training.distributed import all_sum, plain_norm, sum_over_ranks
from deepscaler.training.faults import FaultKind, classify, halved_token_budget, injected, where
from deepscaler.training.micro_batches import MicroBatcher
from deepscaler.training.packing import pad_responses, token_logprobs
from deepscaler.training.rank_log import logger
from deepscaler.training.rollouts import Rollouts
from deepscaler.training.run import Run


def split_groups(group_ids: list[int], parts: int) -> list[list[int]]:
    """Sample indices of ``parts`` mini-batches made of whole groups (as even as possible, order kept). With
    fewer groups than parts some mini-batches are empty: every data-parallel rank makes the same number of
    optimizer steps even when dynamic sampling left it fewer groups."""
    order = sorted(set(group_ids), key=group_ids.index)
    parts = max(1, parts)
    bounds = [round(k * len(order) / parts) for k in range(parts + 1)]
    members: dict[int, list[int]] = {}
    for index, group in enumerate(group_ids):
        members.setdefault(group, []).append(index)
    return [[i for g in order[bounds[k]: bounds[k + 1]] for i in members[g]] for k in range(parts)]


def loss_config(run: Run) -> PolicyLossConfig:
    """The policy loss of this stage (the KL term only when a reference model is loaded)."""
    algo = run.config.algorithm
    return PolicyLossConfig(
        clip_ratio_low=algo.clip_ratio_low, clip_ratio_high=algo.clip_ratio_high, loss_agg_mode=algo.loss_agg_mode,
        kl_coef=algo.kl_coef if run.ref_model is not None else 0.0, kl_estimator=algo.kl_estimator,
        entropy_coef=algo.entropy_coef, tis_cap=algo.tis_cap)


def update_policy(run: Run, batch: Rollouts, advantages: torch.Tensor, old_logprobs: list[torch.Tensor],
                  ref_logprobs: list[torch.Tensor] | None, train_rows: list[bool]) -> dict[str, float]:
    """ppo_epochs x mini-batches; each mini-batch: micro-batches (token budget), loss shares with
    mini-batch-global normalisers, summed gradients, grad clip, one optimizer step."""
    cfg, decisions = run.config, run.decisions
    algo, device, temperature = cfg.algorithm, decisions.device, cfg.rollout.temperature
    config = loss_config(run)
    use_rollout_logprobs = algo.tis_cap is not None and batch.rollout_logprobs is not None
    if algo.tis_cap is not None and batch.rollout_logprobs is None:
        raise RuntimeError("algorithm.tis_cap is set but the rollout engine returned no log-probs")
    # the optimizer's own (with FSDP: sharded) parameters, for the gradient norm and clipping
    parameters = [p for group in run.optimizer.param_groups for p in group["params"] if p.requires_grad]
    updates: list[dict[str, float]] = []
    mini_batches = split_groups(batch.group_ids, cfg.data.train_batch_size // algo.ppo_mini_batch_size)
    for _epoch in range(algo.ppo_epochs):
        for members in mini_batches:
            rows = [i for i in members if train_rows[i] and batch.response_ids[i]]
            # denominators of the whole mini-batch, over all ranks
            num_tokens, num_sequences = all_sum(run.dist, [sum(len(batch.response_ids[i]) for i in rows), len(rows)])
            if num_sequences == 0:
                continue
            normalizer = LossNormalizer(num_tokens=num_tokens, num_sequences=num_sequences,
                                        token_sum_scale=float(cfg.data.max_response_length),
                                        dp_size=run.dist.world_size)
            lengths = [len(batch.prompt_ids[i]) + len(batch.response_ids[i]) for i in rows]

            def backward(batcher: MicroBatcher, rows: list[int] = rows, lengths: list[int] = lengths,
                         normalizer: LossNormalizer = normalizer) -> list[dict[str, float]]:
                shares = []
                for micro in batcher.plan(lengths):
                    if not micro:  # idle rank: a zero-weight forward + backward keeps FSDP's collectives in step
                        with decisions.policy.autocast(device.type):
                            idle, _ = token_logprobs(run.model, batcher.idle(), temperature,
                                                     packed_attention=decisions.packed_attention)
                        (idle.sum() * 0.0).backward()
                        continue
                    ids = [rows[k] for k in micro]
                    where.micro_batch = {"sequences": len(ids), "tokens": sum(lengths[k] for k in micro),
                                         "budget": batcher.max_tokens, "layout": batcher.layout,
                                         "mini_batch_sequences": len(rows)}
                    if injected("kernel", where.step):
                        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (injected "
                                                     "by DEEPSCALER_INJECT_FAULTS)")
                    if injected("oom", where.step):
                        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                                                     "DEEPSCALER_INJECT_FAULTS)")
                    model_input = batcher.make([batch.prompt_ids[i] for i in ids],
                                               [batch.response_ids[i] for i in ids])
                    with decisions.policy.autocast(device.type):
                        # The entropy is logged always; it needs a gradient only when the loss uses it.
                        logprobs, entropy = token_logprobs(run.model, model_input, temperature, compute_entropy=True,
                                                           packed_attention=decisions.packed_attention,
                                                           entropy_grad=config.entropy_coef != 0)
                    rollout_logprobs = None
                    if use_rollout_logprobs:
                        rollout_logprobs = pad_responses([torch.tensor(batch.rollout_logprobs[i])
                                                          for i in ids]).to(device)
                    loss, share = compute_policy_loss(
                        logprobs, _rows_on(old_logprobs, ids, device), advantages[ids].to(device),
                        model_input.response_mask, normalizer, config,
                        ref_logprobs=_rows_on(ref_logprobs, ids, device) if ref_logprobs is not None else None,
                        entropy=entropy, rollout_logprobs=rollout_logprobs)
                    if injected("nonfinite", where.step):
                        loss = loss * float("nan")  # test hook: a step whose loss is NaN
                    if run.scaler.is_enabled():
                        loss = run.scaler.scale(loss)
                    loss.backward()
                    shares.append(share)
                return shares

            shares = backward_with_oom_retry(run, max(lengths), backward)
            # each rank holds its shares of the mini-batch-global means: add them up
            update = sum_over_ranks(run.dist, sum_metrics(shares))
            update.update(optimizer_step(run, parameters))
            updates.append(update)
    if not updates:
        return {"actor/lr": run.optimizer.param_groups[0]["lr"], "actor/updates": 0.0}
    keys = {k for u in updates for k in u}
    metrics = {k: sum(u[k] for u in updates if k in u) / sum(1 for u in updates if k in u) for k in keys}
    metrics["actor/updates"] = float(len(updates))
    return metrics


def backward_with_oom_retry(run: Run, longest: int,
                            backward: Callable[[MicroBatcher], list[dict[str, float]]]) -> list[dict[str, float]]:
    """``backward(run.batcher)``; when it runs out of memory, the mini-batch's partial gradient is dropped and it is
    redone with half the micro-batch token budget (at least ``longest``, the longest sequence), up to
    ``faults.max_oom_halvings`` times. The gradient does not depend on the split (every micro-batch's loss uses the
    mini-batch's normalisers), so the retried step equals the one that would have fitted. Not with data
    parallelism: the ranks' micro-batch counts must stay in lock-step."""
    batcher, halvings = run.batcher, 0
    while True:
        try:
            return backward(batcher)
        except Exception as err:  # noqa: BLE001 - anything but out-of-memory is re-raised below
            smaller = halved_token_budget(batcher.max_tokens, longest)
            if (classify(err).kind is not FaultKind.OUT_OF_MEMORY or run.dist.enabled or smaller is None
                    or halvings >= run.config.faults.max_oom_halvings):
                raise
        run.optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradient
        free_cached_memory()
        logger.warning(f"step {where.step}: out of memory in the update with {batcher.max_tokens} tokens per "
                       f"micro-batch; retrying this mini-batch with {smaller} (same gradient, more micro-batches)")
        batcher, halvings = replace(batcher, max_tokens=smaller), halvings + 1
        run.faults.oom_retries += 1


def free_cached_memory() -> None:
    """Return the caching allocator's free blocks to the device (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rows_on(values: list[torch.Tensor], ids: list[int], device: torch.device) -> torch.Tensor:
    """``values[i]`` for ``i`` in ``ids``, right-padded into ``[len(ids), R]`` on ``device``."""
    return pad_responses([values[i] for i in ids]).to(device)


def optimizer_step(run: Run, parameters: list[torch.nn.Parameter]) -> dict[str, float]:
    """Unscale (fp16), clip the global grad norm (logging the pre-clip norm), step unless non-finite."""
    if run.scaler.is_enabled():
        run.scaler.unscale_(run.optimizer)
    clip = run.config.optim.grad_clip
    grad_norm = plain_norm(torch.nn.utils.clip_grad_norm_(parameters, clip if clip else float("inf")))
    finite = bool(torch.isfinite(grad_norm))
    lr = run.optimizer.param_groups[0]["lr"]
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # skips the step itself on inf/nan
        run.scaler.update()
    elif finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"actor/grad_norm": float(grad_norm) if finite else float("nan"), "actor/lr": lr,
            "actor/skipped_updates": 0.0 if finite else 1.0}
