"""The data types a training run passes between its parts: prompts, the reward function, and ``Run`` (what one
stage of training uses). Built by :mod:`deepscaler.training.setup` and :mod:`deepscaler.training.stage`; read by
the step's phases (rollouts, log-probs, update, sync, validation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from deepscaler.training.config import TrainConfig
from deepscaler.training.decisions import RunDecisions
from deepscaler.training.distributed import SINGLE_PROCESS, DistInfo
from deepscaler.training.faults import FaultCounters
from deepscaler.training.micro_batches import MicroBatcher
from deepscaler.training.stream import DataStream

RewardFn = Callable[[list[str], list[Any]], list[float]]
"""``reward_fn(responses, problems) -> rewards``: one float per response; ``problems[i]`` is the Problem the
i-th response answers (its ``gold`` holds the answer(s))."""


@dataclass
class PromptSet:
    """Problems with their tokenised prompts (prompts over the length limit already dropped)."""

    problems: list[Any]
    prompt_ids: list[list[int]]


@dataclass
class Run:
    """What one stage of training uses (built by ``stage.start_stage``; not saved)."""

    config: TrainConfig
    """This stage's config (the run's config with the stage's overrides)."""
    decisions: RunDecisions
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    tokenizer: Any
    engine: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train: PromptSet
    val_sets: dict[str, PromptSet]
    stream: DataStream
    reward_fn: RewardFn
    probe: tuple[list[int], int]
    """(token ids, prompt length) of the fixed sequence that verifies every weight sync."""
    batcher: MicroBatcher
    sync_history: dict[str, Any] = field(default_factory=dict)
    """The previous sync's probe log-probs and the initial noise floor (see ``sync.sync_weights``)."""
    dist: DistInfo = SINGLE_PROCESS
    """Data-parallel rank and world size (see deepscaler.training.distributed)."""
    faults: FaultCounters = field(default_factory=FaultCounters)
    """The run's fault counters (shared by its stages; see deepscaler.training.faults)."""
