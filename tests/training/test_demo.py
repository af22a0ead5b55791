"""The CPU demo pipeline at toy scale: warm-up -> Pass@1 -> GRPO through the real loop -> Pass@1 -> summary, and a
rerun that skips finished phases and resumes GRPO from its checkpoint. The full demo (minutes) is not a unit
test; these check the plumbing, the resume logic and the demo's own choices."""

from __future__ import annotations

import json

import pytest

from deepscaler.training.demo import DemoSettings, choose_num_threads, split_overrides

TOY = [
    "demo.sft_steps=12", "demo.sft_batch_size=8", "demo.train_problems=64", "demo.eval_problems=20",
    "demo.val_problems=4", "demo.hidden_size=64", "demo.intermediate_size=128", "demo.threads=1",
    "data.train_batch_size=4", "algorithm.ppo_mini_batch_size=4", "rollout.n=4", "checkpoint.save_freq=1",
    "validation.test_freq=1", "logging.progress=none",
]


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
    from deepscaler.training.config import ConfigError

    settings, rest = split_overrides(["demo.sft_steps=7", "optim.lr=1e-4", "demo.operations=+"])
    assert settings == DemoSettings(sft_steps=7, operations="+")
    assert rest == ["optim.lr=1e-4"]
    with pytest.raises(ConfigError, match="demo.sft_step"):
        split_overrides(["demo.sft_step=7"])
    with pytest.raises(ConfigError, match="demo.sft_steps"):
        split_overrides(["demo.sft_steps=many"])


def test_demo_recipe_loads_and_validates():
    from deepscaler.training.config import load_config

    config = load_config("demo", ["model.path=/tmp/x", "trainer.run_dir=/tmp/y"])
    assert config.algorithm.kl_coef == 0.0 and config.precision.device == "cpu"
    assert config.data.train_batch_size % config.algorithm.ppo_mini_batch_size == 0
    assert config.checkpoint.resume == "auto"


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    pytest.importorskip("vllm")
    from deepscaler.training.demo import run_demo

    run_dir = tmp_path / "demo"
    first = run_demo([f"demo.run_dir={run_dir}", "trainer.total_steps=1", *TOY])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(first))
    for key in ("pass@1_before", "pass@1_after", "wall_time_s", "steps"):
        assert key in summary
    assert summary["steps"] == 1
    assert 0.0 <= summary["pass@1_before"] <= 1.0 and 0.0 <= summary["pass@1_after"] <= 1.0
    assert summary["eval"]["problems"] == 20
    assert set(summary["eval"]["before"]) == {"greedy", "T=0.6"}
    assert summary["phases_s"]["supervised warm-up"] > 0
    assert (run_dir / "sft" / "sft.json").is_file() and (run_dir / "grpo" / "checkpoints" / "step_000001").is_dir()
    assert (run_dir / "demo.png").is_file()
    sft_weights = (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns
    before = (run_dir / "eval_before.json").read_text()

    # A rerun asking for one more step: warm-up and the "before" measurement are reused, GRPO resumes at step 2.
    second = run_demo([f"demo.run_dir={run_dir}", "trainer.total_steps=2", *TOY])
    assert second["steps"] == 2
    assert second["phases_s"]["supervised warm-up"] == 0.0
    assert second["phases_s"]["Pass@1 before RL"] == 0.0
    assert second["phases_s"]["GRPO"] > 0 and second["phases_s"]["Pass@1 after RL"] > 0
    assert (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns == sft_weights
    assert (run_dir / "eval_before.json").read_text() == before
    assert json.loads((run_dir / "eval_after.json").read_text())["checkpoint"].endswith("step_000002")
    rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in rows if row["step"] > 0}) == [1, 2]


def test_sft_collate_masks_the_prompt_and_training_lowers_the_loss():
    import torch

    from deepscaler.data import render_prompt
    from deepscaler.data.arithmetic import sample_problems
    from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer
    from deepscaler.training.sft import SFTConfig, SFTExample, collate, train_sft

    batch = collate([SFTExample([1, 2, 3], [4, 5]), SFTExample([1, 2], [6])], pad_token_id=0)
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5], [-100, -100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    examples = [SFTExample(tokenizer.encode(render_prompt(p.problem, tokenizer), add_special_tokens=False),
                           tokenizer.encode(p.gold_response(), add_special_tokens=False) + [tokenizer.eos_token_id])
                for p in sample_problems(64, seed=0)]
    history = train_sft(model, examples, SFTConfig(steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=3,
                                                   log_every=10), tokenizer.pad_token_id)
    assert [r["step"] for r in history] == [10, 20, 30]
    # uniform guessing over the 279-token vocabulary is ln(279) = 5.6 nats
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and history[-1]["loss"] < 3.5
