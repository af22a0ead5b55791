"""Config: presets load and validate, overrides are type-checked, impossible configs name the field and the fix."""

from __future__ import annotations

import pytest
import yaml

from deepscaler.training.config import (
    ConfigError,
    TrainConfig,
    all_keys,
    apply_override,
    dump_yaml,
    list_presets,
    load_config,
    parse_overrides,
    resolve_config_path,
    stage_config,
    validate,
)
from deepscaler.training.geometry import batch_geometry


def test_every_preset_loads_validates_and_has_a_command_header():
    presets = list_presets()
    assert {"deepscaler-1.5b-8k", "deepscaler-1.5b-16k", "deepscaler-1.5b-24k", "deepscaler-1.5b"} <= set(presets)
    for name in presets:
        config = load_config(name)  # every preset (the demo's too) loads and validates
        header = [line for line in resolve_config_path(name).read_text().splitlines() if line.startswith("#")]
        assert any("deepscaler train" in line for line in header), f"{name}: header must hold its command"
        if not name.startswith("deepscaler-"):
            continue
        assert any(f"deepscaler train --config {name}" in line for line in header)
        assert config.optim.lr == 1e-6 and config.data.train_batch_size == 128
        assert config.algorithm.ppo_mini_batch_size == 64 and config.algorithm.kl_coef == 0.001
        assert config.algorithm.kl_estimator == "low_var_kl" and config.algorithm.entropy_coef == 0.001
        assert config.algorithm.clip_ratio_low == config.algorithm.clip_ratio_high == 0.2
        assert config.optim.grad_clip == 1.0 and config.rollout.temperature == 0.6
        assert config.algorithm.max_tokens_per_micro_batch == 32768 and config.data.max_prompt_length == 1024
        assert config.model.path.startswith(("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "runs/"))
        assert config.validation.datasets == ["aime"]


@pytest.mark.parametrize("name, response, n, n_val, freq", [
    ("deepscaler-1.5b-8k", 8192, 8, 8, 20), ("deepscaler-1.5b-16k", 16384, 16, 16, 10),
    ("deepscaler-1.5b-24k", 24576, 16, 16, 10)])
def test_stage_presets_carry_deepscaler_values(name, response, n, n_val, freq):
    config = load_config(name)
    assert (config.data.max_response_length, config.rollout.n, config.validation.n) == (response, n, n_val)
    assert config.checkpoint.save_freq == config.validation.test_freq == freq
    assert batch_geometry(config).updates_per_step == 2


def test_chained_recipe_stages_match_the_stage_presets():
    chain = load_config("deepscaler-1.5b")
    assert [(s.name, s.until_step) for s in chain.trainer.stages] == [("8k", 1040), ("16k", 1520), ("24k", None)]
    for stage, preset in zip(chain.trainer.stages, ["deepscaler-1.5b-8k", "deepscaler-1.5b-16k",
                                                    "deepscaler-1.5b-24k"], strict=True):
        staged, alone = stage_config(chain, stage), load_config(preset)
        for section in ("data", "rollout", "algorithm", "optim", "validation"):
            assert getattr(staged, section) == getattr(alone, section), (stage.name, section)
        assert staged.checkpoint.save_freq == alone.checkpoint.save_freq


def test_overrides_are_dotted_typed_and_listed():
    config = load_config("deepscaler-1.5b-8k", ["optim.lr=2e-6", "rollout.n=16", "data.train=[aime,math]",
                                                 "validation.datasets=aime,amc", "model.gradient_checkpointing=false",
                                                 "algorithm.tis_cap=null", "algorithm.ppo_mini_batch_size=32"])
    assert config.optim.lr == 2e-6 and isinstance(config.rollout.n, int) and config.rollout.n == 16
    assert config.data.train == ["aime", "math"] and config.validation.datasets == ["aime", "amc"]
    assert config.model.gradient_checkpointing is False and config.algorithm.tis_cap is None
    with pytest.raises(ConfigError, match="rollout.n: expected an integer, got 'eight'"):
        load_config(None, ["rollout.n=eight"])
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: expected true/false"):
        load_config(None, ["model.gradient_checkpointing=maybe"])
    with pytest.raises(ConfigError, match="has no '='"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="'optim.lr' is a value, not a section"):
        apply_override(TrainConfig(), "optim.lr.x", 1)


def test_unknown_keys_list_close_matches():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*optim.lr"):
        load_config(None, ["optim.lrr=1e-6"])
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.kl_coef'.*algorithm.kl_coef"):
        load_config(None, ["rollout.kl_coef=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'algorithm.bogus'"):
        load_config(None, [("algorithm.bogus", 1)])


@pytest.mark.parametrize("override, message", [
    ("algorithm.kl_type=k1", "'algorithm.kl_type' no longer exists: renamed to algorithm.kl_estimator"),
    ("algorithm.entropy_coeff=0", "renamed to algorithm.entropy_coef"),
    ("algorithm.norm_adv_by_std=false", "Dr. GRPO (no division by the group std) is algorithm.advantage=drgrpo"),
    ("algorithm.policy_loss=ppo_clip", "the policy loss is PPO's clipped surrogate"),
    ("trainer.reward_timeout_s=3", "moved to reward.timeout_s"),
])
def test_retired_keys_say_what_replaced_them(override, message):
    with pytest.raises(ConfigError, match="no longer exists") as error:
        load_config("deepscaler-1.5b-8k", [override])
    assert message in str(error.value)


def test_reward_section_reaches_the_reward_settings():
    config = load_config("deepscaler-1.5b-8k", ["reward.think_format=strict", "reward.num_workers=2"])
    assert config.reward.think_format == "strict" and config.reward.num_workers == 2
    assert config.reward.timeout_s == 10.0  # the presets keep their 10 s grading limit


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 1e-6\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="neither a file nor a preset.*deepscaler-1.5b-8k"):
        load_config("deepscaler-1.5b-8kk")


@pytest.mark.parametrize("overrides, message", [
    (["data.train_batch_size=100"], "data.train_batch_size=100 is not a multiple of algorithm.ppo_mini_batch_size=64"),
    (["rollout.n=1"], "rollout.n=1: GRPO needs at least 2 samples"),
    (["algorithm.max_tokens_per_micro_batch=4096"], "raise it to >= 9216"),
    (["algorithm.ppo_mini_batch_size=256"], "larger than data.train_batch_size=128"),
    (["rollout.temperature=0"], "rollout.temperature=0.0 must be > 0"),
    (["algorithm.kl_estimator=k5"], "unknown KL estimator 'k5' for `algorithm.kl_estimator`"),
    (["algorithm.advantage=grop"], "unknown advantage estimator 'grop' for `algorithm.advantage` (did you mean 'grpo'"),
    (["algorithm.loss_agg_mode=tokn-mean"], "for `algorithm.loss_agg_mode` (did you mean 'token-mean'"),
    (["precision.policy=bf16"], "for `precision.policy` (did you mean 'bf16-mixed'"),
    (["reward.grader=llm"], "reward.grader: 'llm' is not one of"),
    (["reward.timeout_s=0"], "reward: RewardConfig.timeout_s must be > 0"),
    (["logging.backends=[mlflow]"], "logging.backends has 'mlflow'"),
    (["checkpoint.resume=/no/such/dir"], "checkpoint.resume='/no/such/dir'"),
    (["algorithm.overlong_buffer=9000"], "algorithm.overlong_buffer=9000 must be in [0, data.max_response_length)"),
])
def test_impossible_configs_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config("deepscaler-1.5b-8k", overrides)
    assert message in str(error.value)


def test_stage_problems_are_reported_with_the_stage():
    config = load_config("deepscaler-1.5b")
    config.trainer.stages[1].overrides["algorithm.max_tokens_per_micro_batch"] = 10000
    with pytest.raises(ConfigError, match=r"trainer.stages\[1\] \(16k\).*raise it to >= 17408"):
        validate(config)
    config = load_config("deepscaler-1.5b")
    config.trainer.stages[1].overrides["algorithm.sequence_layout"] = "padded"
    with pytest.raises(ConfigError, match=r"trainer.stages\[1\].overrides sets algorithm.sequence_layout, which is "
                                          "decided once for the whole run"):
        validate(config)
    config = load_config("deepscaler-1.5b")
    config.trainer.stages[1].until_step = 500
    with pytest.raises(ConfigError, match=r"until_step=500 must be larger than the previous stage's \(1040\)"):
        validate(config)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config("deepscaler-1.5b", ["optim.lr=3e-6"])
    dump_yaml(config, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == config
    assert set(yaml.safe_load((tmp_path / "config.yaml").read_text())) == {
        "model", "data", "rollout", "algorithm", "optim", "precision", "validation", "checkpoint", "logging",
        "trainer", "reward", "faults"}


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import deepscaler.training.config as module

    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, item in enumerate(body):
                if isinstance(item, ast.AnnAssign):
                    following = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), (
                        f"{node.name}.{item.target.id} has no docstring")
    assert "optim.lr" in all_keys() and "trainer.stages" in all_keys()


def test_batch_geometry_of_the_8k_recipe():
    geometry = batch_geometry(load_config("deepscaler-1.5b-8k"), train_problems=40315)
    assert geometry.sequences_per_step == 1024 and geometry.sequences_per_update == 512
    assert geometry.max_sequence_length == 9216 and geometry.steps_per_epoch == 314
    assert geometry.total_steps == 1040
    assert geometry.max_generated_tokens_per_step == 8_388_608
    assert "128 prompts x 8 samples = 1024 sequences" in geometry.lines()[0]
