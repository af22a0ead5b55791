"""Checkpoints that survive damage: a truncated or incomplete checkpoint is skipped (named) for the previous
one, a failed save (ENOSPC) leaves the previous checkpoints intact and says so, and a re-save never leaves a
moment without a complete checkpoint of that step."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer
from deepscaler.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def parts():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    return model, tokenizer, optimizer


def save(run_dir, step, parts, **kwargs):
    model, tokenizer, optimizer = parts
    return ckpt.save_checkpoint(run_dir, ckpt.TrainerState(step=step), model, tokenizer, optimizer, **kwargs)


def test_whole_checkpoint_passes_and_lists_its_files(tmp_path, parts):
    path = save(tmp_path, 1, parts)
    assert ckpt.checkpoint_problem(path) is None
    assert ckpt.load_trainer_state(path).step == 1
    listed = json.loads((path / ckpt.STATE_FILE).read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "rng.pt", "config.json"} <= set(listed)


@pytest.mark.parametrize("damage", ["truncate_weights", "truncate_weights_keep_size_record", "drop_optimizer",
                                    "truncate_optimizer", "garble_state"])
def test_damaged_newest_checkpoint_is_skipped_with_a_message(tmp_path, parts, damage, capsys):
    good = save(tmp_path, 1, parts)
    bad = save(tmp_path, 2, parts)
    weights, optimizer_file = bad / "model.safetensors", bad / "optimizer.pt"
    if damage.startswith("truncate_weights"):
        with weights.open("r+b") as handle:
            handle.truncate(weights.stat().st_size // 2)
        if damage.endswith("size_record"):  # a checkpoint without the size list (older format): framing check
            state = json.loads((bad / ckpt.STATE_FILE).read_text())
            state.pop("files")
            (bad / ckpt.STATE_FILE).write_text(json.dumps(state))
    elif damage == "drop_optimizer":
        optimizer_file.unlink()
    elif damage == "truncate_optimizer":
        with optimizer_file.open("r+b") as handle:
            handle.truncate(100)
    else:
        (bad / ckpt.STATE_FILE).write_text('{"step": 2, "data":')
    expected = {"truncate_weights": "model.safetensors", "truncate_weights_keep_size_record": "model.safetensors",
                "drop_optimizer": "optimizer.pt", "truncate_optimizer": "optimizer.pt",
                "garble_state": "trainer_state.json"}[damage]
    assert expected in ckpt.checkpoint_problem(bad)
    assert ckpt.latest_checkpoint(tmp_path) == good
    out = capsys.readouterr().out
    assert f"skipping checkpoint {bad}" in out and expected in out and "step_000001" in out


def test_every_truncation_point_of_the_weights_is_caught(tmp_path, parts):
    """A cut anywhere in model.safetensors (header, tensor data, last byte) is detected by its framing alone."""
    path = save(tmp_path, 1, parts)
    weights = path / "model.safetensors"
    blob = weights.read_bytes()
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    state.pop("files")
    (path / ckpt.STATE_FILE).write_text(json.dumps(state))
    for cut in [0, 4, 8, 20, len(blob) // 3, len(blob) - 1]:
        weights.write_bytes(blob[:cut])
        assert "model.safetensors" in ckpt.checkpoint_problem(path), cut
    weights.write_bytes(blob)
    assert ckpt.checkpoint_problem(path) is None


def test_no_usable_checkpoint_says_so(tmp_path, parts, capsys):
    bad = save(tmp_path, 1, parts)
    (bad / "optimizer.pt").unlink()
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert "no older checkpoint left" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["torch.save", "save_pretrained", "publish"])
def test_enospc_during_save_keeps_the_previous_checkpoint(tmp_path, parts, monkeypatch, where):
    previous = save(tmp_path, 1, parts)
    before = {f.name: f.read_bytes() for f in previous.iterdir() if f.is_file()}
    full = OSError(errno.ENOSPC, "No space left on device")

    def fail(*args, **kwargs):
        raise full

    if where == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", fail)
    elif where == "save_pretrained":
        monkeypatch.setattr(type(parts[0]), "save_pretrained", fail)
    else:
        monkeypatch.setattr(ckpt, "_publish", fail)
    with pytest.raises(ckpt.CheckpointSaveError) as caught:
        save(tmp_path, 2, parts, keep_last=1)
    message = str(caught.value)
    assert "step_000002" in message and "No space left" in message and "disk is full" in message
    assert f"previous checkpoint {previous} is intact" in message and "resume=auto" in message
    assert caught.value.__cause__ is full
    assert {f.name: f.read_bytes() for f in previous.iterdir() if f.is_file()} == before
    assert ckpt.latest_checkpoint(tmp_path) == previous
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001"]  # temp folder gone


def test_resave_of_a_step_keeps_a_complete_copy_until_the_new_one_is_in(tmp_path, parts, monkeypatch):
    first = save(tmp_path, 3, parts)
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        real_replace(src, dst)
        if os.path.basename(dst) == "step_000003":
            # the moment the new folder lands, the old copy still exists (aside), never neither
            seen.append(sorted(p.name for p in first.parent.iterdir()))

    monkeypatch.setattr(ckpt.os, "replace", replace)
    save(tmp_path, 3, parts)
    assert seen == [[".old-step_000003", "step_000003"]]
    assert sorted(p.name for p in first.parent.iterdir()) == ["step_000003"]
    assert ckpt.checkpoint_problem(first) is None


def test_stale_temp_folders_are_cleared_and_pruning_ignores_newer_skipped_ones(tmp_path, parts):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step_000009").mkdir(parents=True)
    (root / ".tmp-step_000009" / "model.safetensors").write_bytes(b"partial")
    newer = save(tmp_path, 5, parts)
    (newer / "optimizer.pt").unlink()  # a damaged step 5: a resumed run continues from step 2
    save(tmp_path, 2, parts)
    save(tmp_path, 3, parts, keep_last=1)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step_000003", "step_000005"]  # step 3 (just saved) kept; step 2 pruned; 5 left alone
