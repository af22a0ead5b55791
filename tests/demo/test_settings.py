"""The demo's settings: override routing and type checks, validation naming the field, the thread choice's
branches, and the demo recipe."""

from __future__ import annotations

import pytest

from deepscaler.demo.settings import DemoSettings, choose_num_threads, split_overrides
from deepscaler.training.config import ConfigError, load_config


def test_choose_num_threads_each_branch():
    threads, reason = choose_num_threads("auto", cpu_count=2, load_average=0.2)
    assert threads == 2 and "idle" in reason
    threads, reason = choose_num_threads("auto", cpu_count=2, load_average=4.0)
    assert threads == 1 and "stalling" in reason
    assert choose_num_threads("auto", cpu_count=1, load_average=0.0)[0] == 1
    assert choose_num_threads("3", cpu_count=2, load_average=9.0) == (3, "demo.threads")
    with pytest.raises(ValueError, match="demo.threads"):
        choose_num_threads("many")
    with pytest.raises(ValueError, match="demo.threads"):
        choose_num_threads("0")


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
