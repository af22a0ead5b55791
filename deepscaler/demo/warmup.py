"""Supervised warm-up (the "cold start"): next-token cross-entropy on the response tokens, run to convergence.

The demo distils its teacher's demonstrations (:mod:`deepscaler.demo.teacher`) into a freshly initialised
model before GRPO, as DeepScaleR starts from a distilled model. The warm-up runs its whole schedule (linear
warm-up, cosine decay to 10 % of the peak) and measures greedy Pass@1 on held-out problems every
``eval_every`` steps, so the record shows that it reached a plateau: the gain RL brings afterwards is not an
artefact of where the warm-up stopped.

Right-padded batches of (prompt, response) token ids, AdamW, loss masked to the response (and its EOS) so the
prompt is context only.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

from deepscaler.data import build_prompt, render_prompt
from deepscaler.data.arithmetic import ArithmeticProblem
from deepscaler.demo.report import write_json
from deepscaler.demo.settings import DemoSettings
from deepscaler.demo.teacher import teacher_response
from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer
from deepscaler.rewards import score_responses

WARMUP_RECORD = "warmup.json"


@dataclass
class WarmupConfig:
    """Hyperparameters of the supervised warm-up."""

    steps: int = 200
    """Optimizer steps: the whole schedule, always run to its end."""
    batch_size: int = 32
    """Sequences per step."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (after warm-up)."""
    warmup_steps: int = 20
    """Linear warm-up steps from 0 to the peak learning rate; cosine decay to 10 % of it afterwards."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    seed: int = 0
    """Seed of the batch order."""
    log_every: int = 20
    """Report the mean loss every this many steps through ``on_log``."""
    eval_every: int = 0
    """Measure held-out Pass@1 every this many steps (and at the last step) through ``evaluate``; 0: never."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarmupConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"WarmupConfig.eval_every must be >= 0, got {self.eval_every}")
        if self.learning_rate <= 0:
            raise ValueError(f"WarmupConfig.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class WarmupExample:
    """One training pair in token ids: the rendered prompt and the response to imitate (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]


def collate(examples: Sequence[WarmupExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch and mask the loss to response tokens.

    Returns:
        ``input_ids [B, T]``, ``attention_mask [B, T]`` and ``labels [B, T]`` where labels are the input ids
        on response positions and -100 (ignored by the loss) on prompt and padding positions.
    """
    length = max(len(e.prompt_ids) + len(e.response_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = example.prompt_ids + example.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, len(example.prompt_ids): len(ids)] = torch.tensor(example.response_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def learning_rate_at(step: int, config: WarmupConfig) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak at the last step (``step`` counts from 0)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - 1 - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def greedy_pass_at_1(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], golds: Sequence[Any],
                     max_new_tokens: int, eos_token_id: int, decode: Callable[[list[int]], str]) -> float:
    """Greedy Pass@1 of ``model`` (transformers ``generate``) graded by the DeepScaleR math reward.

    Prompts are generated in groups of equal length, so no padding enters the prompt and the result is what
    an unpadded greedy decode gives.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    texts: dict[int, str] = {}
    for _, group in groupby(order, key=lambda i: len(prompt_ids[i])):
        indices = list(group)
        inputs = torch.tensor([list(prompt_ids[i]) for i in indices])
        output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                pad_token_id=eos_token_id)
        for index, row in zip(indices, output[:, inputs.shape[1]:].tolist(), strict=True):
            if eos_token_id in row:
                row = row[: row.index(eos_token_id)]
            texts[index] = decode(row)
    model.train(was_training)
    rewards = score_responses([texts[i] for i in range(len(prompt_ids))], list(golds))
    return sum(rewards) / max(1, len(rewards))


def train_warmup(model: torch.nn.Module, examples: Sequence[WarmupExample], config: WarmupConfig,
                 pad_token_id: int, on_log: Callable[[dict], None] | None = None,
                 evaluate: Callable[[], float] | None = None) -> list[dict]:
    """Run ``config.steps`` optimizer steps of response-only cross-entropy on ``examples`` (in place).

    Batches are drawn by cycling through shuffled epochs of ``examples``. Every ``eval_every`` steps (and at
    the last) ``evaluate()`` is called and its value stored as ``pass@1`` in that step's record.

    Returns:
        One record per ``log_every`` or ``eval_every`` step: ``{"step", "loss", "learning_rate", "elapsed_s"}``
        plus ``pass@1`` where measured.
    """
    if not examples:
        raise ValueError("train_warmup needs at least one example")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(config.seed)
    order: list[int] = []
    history: list[dict] = []
    window: list[float] = []
    start = time.perf_counter()
    for step in range(config.steps):
        batch_indices = []
        while len(batch_indices) < config.batch_size:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch_indices.append(order.pop())
        batch = collate([examples[i] for i in batch_indices], pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        window.append(loss.item())
        last = step + 1 == config.steps
        log_now = (step + 1) % config.log_every == 0 or last
        eval_now = evaluate is not None and config.eval_every > 0 and ((step + 1) % config.eval_every == 0 or last)
        if log_now or eval_now:
            record: dict[str, Any] = {"step": step + 1, "loss": sum(window) / len(window),
                                      "learning_rate": optimizer.param_groups[0]["lr"]}
            window = []
            if eval_now:
                record["pass@1"] = evaluate()
            record["elapsed_s"] = time.perf_counter() - start
            history.append(record)
            if on_log is not None:
                on_log(record)
    model.eval()
    return history


def plateau(history: Sequence[dict], last: int = 3) -> dict[str, Any]:
    """The warm-up's last ``last`` Pass@1 measurements, with their range: a small range shows convergence."""
    values = [r["pass@1"] for r in history if "pass@1" in r][-last:]
    steps = [r["step"] for r in history if "pass@1" in r][-last:]
    if not values:
        return {"steps": [], "pass@1": [], "range": None}
    return {"steps": steps, "pass@1": values, "range": max(values) - min(values)}


def warm_up(settings: DemoSettings, train_problems: Sequence[ArithmeticProblem],
            val_problems: Sequence[ArithmeticProblem], out_dir: Path,
            on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Build the tiny model, distil the teacher into it to convergence, save model + tokenizer into ``out_dir``
    atomically with ``warmup.json`` (parameters, config, history, plateau); returns that record."""
    # The prompt's words as single tokens, as in a trained vocabulary: with a token per character the instruction
    # would be 70 of the prompt's 86 tokens, paid for by every warm-up example and every rollout.
    tokenizer = build_tiny_tokenizer(words=[build_prompt(train_problems[0].problem)])
    model = build_tiny_model(tokenizer, settings.model_spec(), seed=settings.seed)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    examples = [WarmupExample(encode(render_prompt(p.problem, tokenizer)),
                              encode(teacher_response(p, settings.teacher_flaw_fraction)) + [tokenizer.eos_token_id])
                for p in train_problems]
    val_prompts = [encode(render_prompt(p.problem, tokenizer)) for p in val_problems]

    def evaluate() -> float:
        return greedy_pass_at_1(model, val_prompts, [p.answer for p in val_problems], settings.eval_max_tokens,
                                tokenizer.eos_token_id, tokenizer.decode)

    config = WarmupConfig(steps=settings.warmup_steps, batch_size=settings.warmup_batch_size,
                          learning_rate=settings.warmup_lr, warmup_steps=min(20, settings.warmup_steps // 5 + 1),
                          seed=settings.seed, log_every=max(1, settings.warmup_eval_every or settings.warmup_steps),
                          eval_every=settings.warmup_eval_every if val_prompts else 0)
    history = train_warmup(model, examples, config, tokenizer.pad_token_id, on_log=on_log, evaluate=evaluate)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "config": asdict(config),
            "teacher_flaw_fraction": settings.teacher_flaw_fraction, "history": history,
            "plateau": plateau(history)}
    write_json(tmp / WARMUP_RECORD, info)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info
