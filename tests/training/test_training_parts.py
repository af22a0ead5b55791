"""Checkpoints, data stream, seeds, sync check, LR schedule, metrics file, progress and plots (no vLLM)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from deepscaler.training import checkpoint as ckpt
from deepscaler.training.config import OptimConfig
from deepscaler.training.metrics import (
    MetricsLogger,
    group_solve_rates,
    read_metrics,
    response_metrics,
)
from deepscaler.training.schedule import build_optimizer, build_scheduler, lr_multiplier
from deepscaler.training.stream import DataStream, derive_seed
from deepscaler.training.sync import build_probe, check_sync


@pytest.fixture()
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _train_a_bit(model, optimizer, scheduler, steps=2):
    for _ in range(steps):
        loss = model(input_ids=torch.tensor([[1, 5, 9, 13, 7]]), labels=torch.tensor([[1, 5, 9, 13, 7]])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def test_checkpoint_round_trip_is_exact_and_loads_in_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    optim_config = OptimConfig(lr=1e-3, warmup_steps=3)
    optimizer = build_optimizer(model.parameters(), optim_config)
    scheduler = build_scheduler(optimizer, optim_config, total_steps=10)
    _train_a_bit(model, optimizer, scheduler)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    state = ckpt.TrainerState(step=2, stage=0, data=ckpt.DataPosition(epoch=1, index=8, seed=3), consumed_prompts=24)
    path = ckpt.save_checkpoint(tmp_path, state, model, tokenizer, optimizer, scheduler, config={"a": 1})
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    assert path.name == "step_000002" and (path / "config.json").is_file() and (path / "tokenizer.json").is_file()

    reloaded = AutoModelForCausalLM.from_pretrained(path)  # plain transformers, no deepscaler code
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "step_000002")
    fresh_opt = build_optimizer(fresh.parameters(), optim_config)
    fresh_sched = build_scheduler(fresh_opt, optim_config, total_steps=10)
    loaded = ckpt.load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert loaded == state
    assert (random.random(), np.random.rand()) == expected_draws[:2] and torch.equal(torch.rand(1), expected_draws[2])
    assert fresh_sched.last_epoch == scheduler.last_epoch and fresh_opt.param_groups[0]["lr"] == pytest.approx(
        optimizer.param_groups[0]["lr"])
    # continuing both gives identical weights: optimizer moments and schedule were restored exactly
    _train_a_bit(model, optimizer, scheduler, 1)
    _train_a_bit(fresh, fresh_opt, fresh_sched, 1)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_is_saved_by_name_and_positional_states_still_load(tiny):
    """Checkpoints key the optimizer state by parameter name (so it loads into any number of FSDP ranks); a
    positional ``optimizer.state_dict()`` from an older checkpoint loads to the same moments."""
    from deepscaler.training.distributed import full_optimizer_state, load_full_optimizer_state

    model, _ = tiny
    optim_config = OptimConfig(lr=1e-3)
    optimizer = build_optimizer(model.parameters(), optim_config)
    _train_a_bit(model, optimizer, build_scheduler(optimizer, optim_config, total_steps=10))
    named = full_optimizer_state(model, optimizer)
    assert set(named["state"]) == {name for name, p in model.named_parameters() if p.requires_grad}
    for saved in (named, optimizer.state_dict()):
        fresh = build_optimizer(model.parameters(), optim_config)
        build_scheduler(fresh, optim_config, total_steps=10)  # as on resume: the scheduler exists first
        load_full_optimizer_state(model, fresh, saved)
        for a, b in zip(optimizer.state_dict()["state"].values(), fresh.state_dict()["state"].values(), strict=True):
            assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tiny, tmp_path):
    model, tokenizer = tiny
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=step), model, tokenizer, keep_last=2,
                             protected_steps=[20])
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_000020", "step_000030", "step_000040"]  # 10 pruned, stage end 20 protected
    (tmp_path / "checkpoints" / ".tmp-step_000050").mkdir()  # a save killed mid-way
    (tmp_path / "checkpoints" / "step_000060").mkdir()  # no trainer_state.json: not complete
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000040"
    assert ckpt.latest_checkpoint(tmp_path / "nowhere") is None


def test_data_stream_resumes_mid_epoch_exactly():
    continuous = DataStream(10, ckpt.DataPosition(seed=5))
    drawn = [continuous.take(3) for _ in range(7)]  # crosses epochs (drop-last: 3 batches per epoch)
    assert len(set(drawn[0] + drawn[1] + drawn[2])) == 9  # one epoch: 9 distinct items, 1 dropped
    assert drawn[3] != drawn[0]  # a new shuffle each epoch
    position = ckpt.DataPosition(seed=5)
    first = DataStream(10, position)
    head = [first.take(3) for _ in range(4)]
    saved = ckpt.DataPosition(**vars(position))
    tail = [DataStream(10, saved).take(3)] + [DataStream(10, saved).take(3) for _ in range(2)]
    assert head + tail == drawn
    with pytest.raises(ValueError, match="lower data.train_batch_size to at most 10"):
        DataStream(10, ckpt.DataPosition()).take(11)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "rollout", 3, 0) == derive_seed(0, "rollout", 3, 0)
    seeds = {derive_seed(0, "rollout", step, k) for step in range(50) for k in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)


def test_sync_check_branches():
    trainer = [-1.0, -2.0, -0.5]
    ok = check_sync([-1.0, -2.0, -0.5], trainer, tolerance=1e-3)
    assert ok.ok and ok.diff == 0
    mismatch = check_sync([-1.5, -2.0, -0.5], trainer, tolerance=1e-3)
    assert not mismatch.ok and "rollout.sync_tolerance" in mismatch.message
    before = [-1.1, -2.1, -0.6]
    stale = check_sync(engine_now=[-1.0001, -2.0, -0.5], trainer_now=trainer, tolerance=0.5,
                       engine_before=[-1.0, -2.0, -0.5], trainer_before=before, noise_floor=1e-5)
    assert not stale.ok and "stale rollout weights" in stale.message  # within tolerance, but did not move
    moved = check_sync(engine_now=trainer, trainer_now=trainer, tolerance=0.5, engine_before=before,
                       trainer_before=before, noise_floor=1e-5)
    assert moved.ok and moved.engine_change == pytest.approx(0.1)
    tiny_update = check_sync(engine_now=trainer, trainer_now=trainer, tolerance=0.5, engine_before=trainer,
                             trainer_before=[-1.0, -2.0, -0.5000001], noise_floor=1e-3)
    assert tiny_update.ok  # a change below the noise floor cannot be checked
    assert build_probe([1, 2], [7, 8, 9], length=5) == ([1, 2, 7, 8, 9, 7, 8], 2)


def test_lr_schedules():
    assert lr_multiplier(0) == 1.0
    assert lr_multiplier(0, zero_lr_first_step=True) == 0.0 and lr_multiplier(1, zero_lr_first_step=True) == 1.0
    assert [lr_multiplier(s, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [lr_multiplier(s, schedule="cosine", total_steps=10, min_lr_ratio=0.1) for s in (0, 5, 10, 20)]
    assert cosine[0] == 1.0 and cosine[1] == pytest.approx(0.55) and cosine[2] == cosine[3] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_multiplier(3, schedule="linear")


def test_group_and_length_metrics():
    assert group_solve_rates([0, 0, 1, 1, 0, 1], 2) == {"batch/solve_none": 1 / 3, "batch/solve_all": 1 / 3}
    with pytest.raises(ValueError):
        group_solve_rates([0, 1, 1], 2)
    metrics = response_metrics([4, 8, 12, 16], [False, False, True, True])
    assert metrics == {"response_length/mean": 10.0, "response_length/max": 16.0, "response_length/min": 4.0,
                       "response_length/clip_ratio": 0.5}


def test_metrics_file_is_truncated_to_the_resume_step(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log(step, {"reward/mean": step / 10, "tensor": torch.tensor(2.0), "nan": float("nan")})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "rew')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    resumed = MetricsLogger(tmp_path, resume_step=3)
    resumed.log(4, {"reward/mean": 0.99})
    resumed.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["reward/mean"] == 0.99
    assert rows[0]["tensor"] == 2.0 and rows[0]["nan"] is None
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_missing_tracker_fails_with_the_install_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match=r"pip install wandb.*deepscaler\[wandb\]"):
        MetricsLogger(tmp_path, backends=["wandb"])


def test_plots_are_written_from_metrics(tmp_path):
    from deepscaler.cli.main import main
    from deepscaler.training.plots import plot_run

    log = MetricsLogger(tmp_path)
    for step in range(1, 7):
        row = {"reward/mean": step / 10, "response_length/mean": 100 + step, "response_length/max": 200,
               "actor/kl": 0.001 * step, "stage": float(step > 3)}
        if step % 3 == 0:
            row["val/pass@1/aime"] = step / 20
        log.log(step, row)
    log.close()
    written = {p.name for p in plot_run(tmp_path)}
    assert {"reward.png", "response_length.png", "val_pass1.png", "kl_entropy.png"} <= written
    assert "clip_ratio.png" not in written  # no such metric: panel skipped
    assert (tmp_path / "plots" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "val_pass1.png").is_file()
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_layout_choice_and_padded_planning():
    from deepscaler.training.micro_batches import plan_padded_micro_batches, resolve_layout

    assert resolve_layout("flash_attention_2")[0] == "packed"
    layout, reason = resolve_layout("sdpa")
    assert layout == "padded" and "no varlen" in reason
    assert resolve_layout("sdpa", "packed") == ("packed", "algorithm.sequence_layout=packed")
    lengths = [10, 50, 20, 45, 30, 5]
    plan = plan_padded_micro_batches(lengths, max_tokens=100)
    assert sorted(i for batch in plan for i in batch) == list(range(6))
    assert all(len(batch) * max(lengths[i] for i in batch) <= 100 for batch in plan)
    assert plan == [[1, 3], [4, 2, 0], [5]]  # longest first: padding only up to each batch's longest


def test_an_offloaded_reference_visits_the_device_only_for_its_log_probs(monkeypatch):
    from types import SimpleNamespace

    from deepscaler.training import logprobs

    moves: list = []

    class Model:
        def to(self, device):
            moves.append(str(device))
            return self

    monkeypatch.setattr(logprobs, "sequence_logprobs", lambda run, model, batch, t: moves.append("logprobs") or [])
    monkeypatch.setattr(logprobs, "empty_cuda_cache", lambda: moves.append("empty_cache"))
    run = SimpleNamespace(ref_model=Model(), decisions=SimpleNamespace(device="cuda:3"),
                          config=SimpleNamespace(model=SimpleNamespace(reference_offload=True)))
    logprobs.reference_logprobs(run, None, 0.6)
    assert moves == ["cuda:3", "logprobs", "cpu", "empty_cache"]
    moves.clear()
    run.config.model.reference_offload = False
    logprobs.reference_logprobs(run, None, 0.6)
    assert moves == ["logprobs"]
