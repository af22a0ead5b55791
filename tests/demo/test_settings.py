"""The demo's settings: override routing and type checks, validation naming the field, the thread choice's
branches, and the demo recipe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepscaler.demo import settings as settings_module
from deepscaler.demo.settings import DemoSettings, choose_num_threads, idle_cores, split_overrides
from deepscaler.training.config import ConfigError, load_config


def test_choose_num_threads_each_branch(monkeypatch):
    threads, reason = choose_num_threads("auto", cpu_count=2, idle=(1.9, "over the last 0.5s"))
    assert threads == 2 and "1.9 of 2 cores idle over the last 0.5s" in reason
    threads, reason = choose_num_threads("auto", cpu_count=2, idle=(0.4, "over the last 0.5s"))
    assert threads == 1 and "stalling" in reason
    assert choose_num_threads("auto", cpu_count=1) == (1, "auto: one core")
    assert choose_num_threads("3", cpu_count=2, idle=(0.0, "")) == (3, "demo.threads")
    with pytest.raises(ValueError, match="demo.threads"):
        choose_num_threads("many")
    with pytest.raises(ValueError, match="demo.threads"):
        choose_num_threads("0")
    # Without /proc/stat the 1-minute load average decides.
    monkeypatch.setattr(settings_module, "idle_cores", lambda: None)
    monkeypatch.setattr(settings_module.os, "getloadavg", lambda: (3.5, 3.0, 3.0))
    threads, reason = choose_num_threads("auto", cpu_count=2)
    assert threads == 1 and "1-min load average 3.5" in reason
    monkeypatch.setattr(settings_module.os, "getloadavg", lambda: (0.1, 3.0, 3.0))
    assert choose_num_threads("auto", cpu_count=2)[0] == 2


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
def test_idle_cores_sees_a_busy_core():
    """A process spinning on one core during the sample leaves at most cores - 0.5 idle, whatever else runs."""
    cores = os.cpu_count() or 1
    idle, how = idle_cores(0.05)
    assert 0.0 <= idle <= cores + 1e-6 and how == "over the last 0.05s"
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        busy_idle, _ = idle_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy_idle <= cores - 0.5


def test_split_overrides_routes_demo_keys_and_checks_types():
    settings, rest = split_overrides(["demo.warmup_steps=7", "optim.lr=1e-4", "demo.operations=+"])
    assert settings == DemoSettings(warmup_steps=7, operations="+")
    assert rest == ["optim.lr=1e-4"]
    with pytest.raises(ConfigError, match="demo.warmup_step"):
        split_overrides(["demo.warmup_step=7"])
    with pytest.raises(ConfigError, match="demo.warmup_steps"):
        split_overrides(["demo.warmup_steps=many"])


@pytest.mark.parametrize("override, field", [
    ("demo.hidden_size=100", "demo.hidden_size"),
    ("demo.teacher_flaw_fraction=1.0", "demo.teacher_flaw_fraction"),
    ("demo.val_problems=900", "demo.val_problems"),
    ("demo.warmup_steps=0", "demo.warmup_steps"),
])
def test_impossible_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        split_overrides([override])


def test_model_spec_follows_the_width():
    spec = DemoSettings(hidden_size=128, num_layers=3).model_spec()
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim) == (4, 2, 32)
    assert spec.num_hidden_layers == 3


def test_demo_recipe_loads_and_validates():
    config = load_config("demo", ["model.path=/tmp/x", "trainer.run_dir=/tmp/y"])
    assert config.algorithm.kl_coef == 0.0 and config.precision.device == "cpu"
    assert config.data.train_batch_size % config.algorithm.ppo_mini_batch_size == 0
    assert config.checkpoint.resume == "auto"


def test_deepscaler_train_without_config_routes_to_the_demo_and_rejects_bad_keys_before_anything_runs(
        tmp_path, capsys):
    from deepscaler.cli.main import main

    run_dir = tmp_path / "demo"
    assert main(["train", f"demo.run_dir={run_dir}", "demo.warmup_stepz=3"]) == 2
    assert "demo.warmup_stepz" in capsys.readouterr().err
    assert main(["train", f"demo.run_dir={run_dir}", "optim.lrr=3"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not run_dir.exists()  # nothing was written
