"""Micro-batches: which layout (packed or padded), which sequences go together within the token budget, and the
model input of each. Every choice here is a pure function of lengths and the run's decisions.

* :func:`resolve_layout` picks "packed" (one row, no padding) or "padded" (one row per sequence) from the
  trainer's attention implementation.
* :func:`plan_micro_batches` (packed) and :func:`plan_padded_micro_batches` (padded) cut a mini-batch into
  micro-batches within ``max_tokens_per_micro_batch``; :func:`restore_order` undoes the permutation.
* :class:`MicroBatcher` is the run's instance of all that: plan (kept in lock-step over data-parallel ranks),
  build the model input, and the one-token batch an idle rank runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from deepscaler.training.distributed import SINGLE_PROCESS, DistInfo, all_max
from deepscaler.training.packing import VARLEN_ATTENTION, ModelBatch, pack_sequences, pad_sequences

T = TypeVar("T")
LAYOUTS = ("packed", "padded")


def resolve_layout(implementation: str, request: str = "auto") -> tuple[str, str]:
    """("packed" | "padded", reason) for a trainer running attention ``implementation``. Packing removes padding
    but, without a varlen attention kernel, attention runs over the whole pack with a block-diagonal mask:
    O((sum of lengths)^2) instead of O(sum of length^2)."""
    if request != "auto":
        return request, f"algorithm.sequence_layout={request}"
    if implementation in VARLEN_ATTENTION:
        return "packed", f"{implementation} attends within each packed sequence (varlen): no padding, no waste"
    return "padded", (f"{implementation} has no varlen path: a pack would attend over all its tokens, so "
                      "length-sorted padded micro-batches are cheaper")


def plan_micro_batches(lengths: Sequence[int], max_tokens: int, min_num_micro_batches: int = 1) -> list[list[int]]:
    """Partition sequences into the fewest micro-batches whose token sums are <= ``max_tokens``, balanced.

    The count starts at ``max(ceil(Σ lengths / max_tokens), min_num_micro_batches)`` and grows until a greedy
    LPT partition (longest first, into the least-loaded micro-batch) fits the budget. Pass the maximum count
    over data-parallel ranks as ``min_num_micro_batches`` to keep ranks in lock-step (a rank may then get
    empty micro-batches if it has fewer sequences than that).

    Args:
        lengths: ``[N]`` token count of each sequence (prompt + response for the packed layout).
        max_tokens: token budget per micro-batch (config field ``max_tokens_per_micro_batch``).
        min_num_micro_batches: lower bound on the number of micro-batches.
    Returns:
        Lists of indices into ``lengths`` (each ascending; micro-batches ordered by first index). Every index
        appears exactly once; :func:`restore_order` undoes the permutation.
    """
    if max_tokens <= 0:
        raise ValueError(f"`max_tokens_per_micro_batch` must be > 0 (got {max_tokens})")
    for index, length in enumerate(lengths):
        if length > max_tokens:
            raise ValueError(f"sequence {index} has {length} tokens, more than max_tokens_per_micro_batch="
                             f"{max_tokens}; raise `max_tokens_per_micro_batch` to at least the longest "
                             "prompt+response length (max_prompt_length + max_response_length)")
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    count = max(math.ceil(sum(lengths) / max_tokens), min_num_micro_batches, 1)
    while True:
        bins: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for index in order:
            target = min(range(count), key=lambda b: (loads[b], b))
            bins[target].append(index)
            loads[target] += lengths[index]
        if max(loads) <= max_tokens:
            break
        count += 1
    bins = [sorted(b) for b in bins]
    return sorted(bins, key=lambda b: (len(b) == 0, b[0] if b else 0))


def restore_order(per_micro_batch: Sequence[Sequence[T]], plan: Sequence[Sequence[int]]) -> list[T]:
    """Put per-sequence results of the micro-batches back in the original order.

    Args:
        per_micro_batch: for each micro-batch, one item per sequence in the order of ``plan[k]``.
        plan: the output of :func:`plan_micro_batches`.
    Returns:
        ``[N]`` items, item ``i`` being the result for sequence ``i``.
    """
    total = sum(len(indices) for indices in plan)
    restored: list[T | None] = [None] * total
    for items, indices in zip(per_micro_batch, plan, strict=True):
        if len(items) != len(indices):
            raise ValueError(f"micro-batch has {len(items)} results for {len(indices)} planned sequences")
        for item, index in zip(items, indices, strict=True):
            restored[index] = item
    return restored  # type: ignore[return-value]


def plan_padded_micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted micro-batches whose padded size (count x longest) stays within ``max_tokens``.

    Args:
        lengths: ``[N]`` prompt+response token counts. max_tokens: budget including padding.
    Returns:
        Lists of indices into ``lengths``; every index once (restore with ``restore_order``).
    """
    plan: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > max_tokens:
            plan.append(current)
            current = []
        current.append(index)
    if current:
        plan.append(current)
    return plan


@dataclass(frozen=True)
class MicroBatcher:
    """How one run cuts sequences into micro-batches and builds their model input."""

    layout: str
    """"packed" or "padded" (see :func:`resolve_layout`)."""
    max_tokens: int
    """Token budget of a micro-batch (algorithm.max_tokens_per_micro_batch); padding counts when padded."""
    pad_token_id: int
    device: torch.device
    dist: DistInfo = SINGLE_PROCESS

    def plan(self, lengths: list[int]) -> list[list[int]]:
        """Micro-batches of ``lengths`` (indices), padded with empty micro-batches up to the longest plan of any
        rank: FSDP needs every rank to run the same number of forwards and backwards. Restore the order of
        per-sequence results with :func:`restore_order`."""
        if self.layout == "packed":
            plan = plan_micro_batches(lengths, self.max_tokens)
        else:
            plan = plan_padded_micro_batches(lengths, self.max_tokens)
        return plan + [[] for _ in range(all_max(self.dist, len(plan)) - len(plan))]

    def make(self, prompts: list[list[int]], responses: list[list[int]]) -> ModelBatch:
        """The model input of one micro-batch, on the training device."""
        if self.layout == "packed":
            return pack_sequences(prompts, responses, device=self.device)
        return pad_sequences(prompts, responses, pad_token_id=self.pad_token_id, device=self.device)

    def idle(self) -> ModelBatch:
        """A one-token prompt + one-token response: what an idle rank feeds the model to keep in step."""
        return self.make([[self.pad_token_id]], [[self.pad_token_id]])
