"""``deepscaler train --dry-run`` prints the memory plan and refuses what cannot fit, for a GPU that is not here
(``--gpu-memory``). The model's config (DeepSeek-R1-Distill-Qwen-1.5B's geometry) is written locally: the plan
needs no weights."""

from __future__ import annotations

import pytest

from deepscaler.cli.main import main


@pytest.fixture(scope="module")
def r1_config_dir(tmp_path_factory):
    from transformers import Qwen2Config

    folder = tmp_path_factory.mktemp("r1_distill_1_5b_config")
    Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False,
                max_position_embeddings=131072).save_pretrained(folder)
    return folder


def dry_run(capsys, folder, *extra: str) -> tuple[int, str, str]:
    """Options first, then key=value overrides (argparse reads the overrides as one trailing list)."""
    options = [x for x in extra if "=" not in x]
    overrides = [x for x in extra if "=" in x]
    code = main(["train", "--config", "deepscaler-1.5b-8k", "--dry-run", *options, f"model.path={folder}",
                 *overrides])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_8k_recipe_on_one_80_gib_gpu_sleeps_and_fits(capsys, r1_config_dir):
    code, out, _ = dry_run(capsys, r1_config_dir, "--gpu-memory", "80GiB")
    assert code == 0
    assert "# memory plan (1 x 80.0 GiB; per rank; sleep mode level 1" in out
    assert "gpu_memory_utilization 0.63" in out and "verdict: fits" in out


def test_deepscalers_fraction_without_sleep_mode_is_refused_naming_the_fix(capsys, r1_config_dir):
    code, out, err = dry_run(capsys, r1_config_dir, "--gpu-memory", "80GiB", "rollout.sleep_level=0",
                             "rollout.gpu_memory_utilization=0.85")
    assert code == 2 and "memory plan does not fit" in err
    assert "verdict: does not fit" in out
    assert "fixes that fit: rollout.gpu_memory_utilization=null (the plan chooses): gpu_memory_utilization 0.45" in out


def test_without_checkpointing_the_fix_is_checkpointing(capsys, r1_config_dir):
    code, out, _ = dry_run(capsys, r1_config_dir, "--gpu-memory", "80GiB", "model.gradient_checkpointing=false")
    assert code == 2 and "model.gradient_checkpointing=true: gpu_memory_utilization" in out


def test_eight_ranks_and_another_card(capsys, r1_config_dir):
    code, out, _ = dry_run(capsys, r1_config_dir, "--gpu-memory", "80GiB", "--ranks", "8")
    assert code == 0 and "memory plan (8 x 80.0 GiB" in out and "gpu_memory_utilization 0.84" in out
    code, out, _ = dry_run(capsys, r1_config_dir, "--gpu-memory", "141GiB")
    assert code == 0 and "gpu_memory_utilization 0.77" in out


def test_no_gpu_and_no_size_means_no_plan(capsys, r1_config_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the plan uses its memory")
    code, out, _ = dry_run(capsys, r1_config_dir)
    assert code == 0 and "no memory plan: no CUDA GPU here (plan for one with --gpu-memory 80GiB)" in out


def test_a_bad_size_is_a_config_error(capsys, r1_config_dir):
    code, _, err = dry_run(capsys, r1_config_dir, "--gpu-memory", "lots")
    assert code == 2 and "precision.gpu_memory: memory size 'lots'" in err


def test_on_a_gpu_the_run_decides_the_engine_fraction_from_the_plan_or_stops(tiny_model_dir, monkeypatch):
    """decide() on a (pretended) CUDA machine: the plan is part of the run's decisions and sets the engine's
    fraction; a plan that cannot fit raises before any model loads."""
    import torch

    from deepscaler.rollout.memory_plan import MemoryPlanError
    from deepscaler.training import decisions as decisions_module
    from deepscaler.training.config import load_config

    monkeypatch.setattr(decisions_module, "engine_device_type", lambda: "cuda")
    monkeypatch.setattr(decisions_module, "decide_device", lambda request: (torch.device("cuda"), "pretended"))
    base = [f"model.path={tiny_model_dir}", "precision.gpu_memory=8GiB", "precision.policy=fp32",
            "data.max_prompt_length=64", "data.max_response_length=64", "algorithm.max_tokens_per_micro_batch=128"]
    decided = decisions_module.decide(load_config(None, base))
    plan = decided.memory_plan
    assert plan is not None and plan.fits and plan.inputs.sleep_level == 1
    # 95 % of 8 GiB less the trainer's 1 GiB CUDA context (the tiny model's own bytes are under 1 MiB): 0.825
    assert decided.engine_memory.gpu_memory_utilization == plan.gpu_memory_utilization == 0.82
    assert any(line.startswith("memory plan (1 x 8.0 GiB") for line in decided.lines())
    with pytest.raises(MemoryPlanError, match="rollout.gpu_memory_utilization=null"):
        decisions_module.decide(load_config(None, [*base, "rollout.sleep_level=0", "rollout.gpu_memory_utilization=1"]))


def test_the_recipes_model_is_planned_offline_from_its_published_geometry(capsys, r1_config_dir, monkeypatch):
    """With no files and no network the recipe's hub id still plans, with the same figures as its config."""
    import deepscaler.training.memory as memory

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(memory.AutoConfig, "from_pretrained", unreachable)
    code, out, _ = dry_run(capsys, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "--gpu-memory", "80GiB")
    assert code == 0 and "gpu_memory_utilization 0.63" in out and "published geometry" in out
    code, out, _ = dry_run(capsys, r1_config_dir.parent / "no-such-model", "--gpu-memory", "80GiB")
    assert "no memory plan: cannot read the model config" in out
