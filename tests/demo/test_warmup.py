"""The supervised warm-up: loss masked to the response, a schedule that ends at its floor, training that lowers
the loss, a greedy Pass@1 that grades what the model generates, and the plateau record."""

from __future__ import annotations

import torch

from deepscaler.data import render_prompt
from deepscaler.data.arithmetic import sample_problems
from deepscaler.demo.teacher import teacher_response
from deepscaler.demo.warmup import (
    WarmupConfig,
    WarmupExample,
    collate,
    greedy_pass_at_1,
    learning_rate_at,
    plateau,
    train_warmup,
)
from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer


def test_collate_masks_the_prompt_and_the_padding():
    batch = collate([WarmupExample([1, 2, 3], [4, 5]), WarmupExample([1, 2], [6])], pad_token_id=0)
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5], [-100, -100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_schedule_warms_up_peaks_and_ends_at_its_floor():
    config = WarmupConfig(steps=100, learning_rate=1.0, warmup_steps=10)
    assert learning_rate_at(0, config) == 0.1 and learning_rate_at(9, config) == 1.0
    assert abs(learning_rate_at(10, config) - 1.0) < 1e-12
    assert abs(learning_rate_at(99, config) - 0.1) < 1e-12  # the last step is at the floor: no cut schedule
    rates = [learning_rate_at(s, config) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_training_on_the_teacher_lowers_the_loss_and_measures_pass_at_1():
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    examples = [WarmupExample(encode(render_prompt(p.problem, tokenizer)),
                              encode(teacher_response(p, 0.7)) + [tokenizer.eos_token_id])
                for p in sample_problems(64, seed=0)]
    calls = []
    history = train_warmup(model, examples, WarmupConfig(steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=3,
                                                         log_every=10, eval_every=15), tokenizer.pad_token_id,
                           evaluate=lambda: calls.append(1) or 0.25)
    assert [r["step"] for r in history] == [10, 15, 20, 30]
    assert [r.get("pass@1") for r in history] == [None, 0.25, None, 0.25] and len(calls) == 2
    # uniform guessing over the 279-token vocabulary is ln(279) = 5.6 nats
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and history[-1]["loss"] < 3.5
    assert not model.training


class _ScriptedModel(torch.nn.Module):
    """Generates a scripted continuation per prompt (keyed by the prompt's last token), then EOS and padding."""

    def __init__(self, continuations: dict[int, list[int]], eos: int) -> None:
        super().__init__()
        self.continuations, self.eos, self.lengths = continuations, eos, []

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, do_sample):
        assert not do_sample and bool(attention_mask.all())  # equal-length groups: no padding in the prompt
        self.lengths.append(input_ids.shape[1])
        rows = [self.continuations[row[-1]] + [self.eos] for row in input_ids.tolist()]
        width = max(map(len, rows))
        rows = [row + [pad_token_id] * (width - len(row)) for row in rows]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_greedy_pass_at_1_grades_each_prompt_by_the_reward():
    tokenizer = build_tiny_tokenizer()
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    # four prompts of two lengths; the last token identifies the prompt
    prompts = [[5, 6, 10], [5, 11], [5, 6, 12], [5, 13]]
    golds = ["7", "8", "9", "10"]
    answers = {10: "7", 11: "3", 12: "9", 13: "11"}  # right, wrong, right, wrong
    model = _ScriptedModel({k: encode(f"<think>\nx\n</think>\n\\boxed{{{v}}}") for k, v in answers.items()},
                           tokenizer.eos_token_id)
    score = greedy_pass_at_1(model, prompts, golds, 64, tokenizer.eos_token_id, tokenizer.decode)
    assert score == 0.5
    assert sorted(model.lengths) == [2, 3]


def test_plateau_keeps_the_last_measurements():
    history = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5, "pass@1": 0.2},
               {"step": 30, "loss": 0.4, "pass@1": 0.1}, {"step": 40, "loss": 0.3, "pass@1": 0.15},
               {"step": 50, "loss": 0.3, "pass@1": 0.12}]
    assert plateau(history) == {"steps": [30, 40, 50], "pass@1": [0.1, 0.15, 0.12], "range": 0.15 - 0.1}
    assert plateau([{"step": 1, "loss": 1.0}]) == {"steps": [], "pass@1": [], "range": None}
