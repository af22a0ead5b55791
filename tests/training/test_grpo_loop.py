"""End-to-end GRPO on CPU with the tiny model and the real in-process vLLM engine.

One engine serves every run of this module (start-up is the expensive part). The reward is a toy,
deterministic function of the response text (it starts with an ASCII letter), so groups have signal and
learning can be measured exactly: the policy's probability of a rewarded first token must rise.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")

from deepscaler.data import Problem  # noqa: E402
from deepscaler.training.config import load_config  # noqa: E402
from deepscaler.training.loop import train  # noqa: E402
from deepscaler.training.metrics import read_metrics  # noqa: E402
from deepscaler.training.sync import WeightSyncError  # noqa: E402

REQUIRED_METRICS = [
    "reward/mean", "response_length/mean", "response_length/clip_ratio", "actor/kl", "actor/clipfrac",
    "actor/entropy", "actor/grad_norm", "actor/lr", "rollout/logprob_diff", "batch/solve_none", "batch/solve_all",
    "timing_s/rollout", "timing_s/reward", "timing_s/update", "timing_s/sync", "timing_s/step",
    "throughput/tokens_per_s",
]
PROBLEMS = [Problem(id=f"toy-{i}", problem=f"What is {i} + {2 * i}?", answers=[str(3 * i)], source="toy")
            for i in range(12)]
VAL = {"toy": [Problem(id=f"val-{i}", problem=f"What is {i} + 1?", answers=[str(i + 1)], source="toy")
               for i in range(3)]}


def starts_with_letter(text: str) -> bool:
    return bool(text) and text[0].isascii() and text[0].isalpha()


def letter_first(responses: list[str], problems: list[Problem]) -> list[float]:
    return [1.0 if starts_with_letter(text) else 0.0 for text in responses]


def config_for(model_dir, run_dir, *overrides: str):
    return load_config(None, [
        f"model.path={model_dir}", f"trainer.run_dir={run_dir}", "trainer.total_steps=3", "trainer.seed=1",
        "data.train_batch_size=4", "rollout.n=8", "algorithm.ppo_mini_batch_size=2",
        "data.max_prompt_length=128", "data.max_response_length=8", "algorithm.max_tokens_per_micro_batch=300",
        "optim.lr=2e-2", "validation.n=2", "validation.test_freq=2",
        "checkpoint.save_freq=2", "logging.progress=plain", "logging.log_rollouts_every=1", *overrides])


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from deepscaler.rollout import EngineConfig, RolloutEngine

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256,
                                        seed=0, enforce_eager=True))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, engine, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("grpo_full")
    result = train(config_for(tiny_model_dir, run_dir), train_problems=PROBLEMS, val_problems=VAL,
                   reward_fn=letter_first, engine=engine)
    return result


def rewarded_probability(model_dir, prompts: list[list[int]], temperature: float = 0.6) -> float:
    """Mean probability (at the sampling temperature) that the first response token earns the toy reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # an ASCII byte token decodes to its letter whatever follows, so this is exactly the reward's condition
    good = torch.tensor([starts_with_letter(tokenizer.decode([i], skip_special_tokens=True))
                         for i in range(model.config.vocab_size)])
    total = 0.0
    with torch.no_grad():
        for ids in prompts:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1] / temperature
            total += float(torch.softmax(logits, -1)[good].sum())
    return total / len(prompts)


def test_short_run_writes_metrics_checkpoints_plots_and_learns(full_run, tiny_model_dir):
    run_dir = full_run.run_dir
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # validation before training, then every step
    step_rows = rows[1:]
    for name in REQUIRED_METRICS:
        assert all(name in row for row in step_rows), f"{name} missing from metrics.jsonl"
    assert {"val/pass@1/toy"} <= set(rows[0]) and "val/pass@1/toy" in rows[2] and "val/pass@1/toy" in rows[3]
    assert all(row["actor/updates"] == 2 for row in step_rows)  # 4 prompts / mini-batch 2 = 2 updates per step
    assert all(row["rollout/logprob_diff"] < 1e-4 for row in step_rows)  # fp32 trainer == fp32 vLLM
    assert all(row["sync/probe_diff"] < 1e-4 for row in step_rows)
    assert step_rows[0]["response_length/max"] <= 8

    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step_000002", "step_000003"]
    assert {"reward.png", "response_length.png", "val_pass1.png"} <= {p.name for p in full_run.plots}
    assert (run_dir / "config.yaml").is_file() and (run_dir / "rollouts.jsonl").stat().st_size > 0

    from deepscaler.data import encode_prompts
    from deepscaler.models.tiny import build_tiny_tokenizer

    prompts = encode_prompts(PROBLEMS, build_tiny_tokenizer(), 128).prompt_token_ids
    before = rewarded_probability(tiny_model_dir, prompts)
    after = rewarded_probability(run_dir / "checkpoints" / "step_000003", prompts)
    assert after > before + 0.05, f"P(rewarded first token) {before:.3f} -> {after:.3f}: the policy did not learn"


def test_resumed_run_matches_the_uninterrupted_one(full_run, tiny_model_dir, engine, tmp_path):
    from safetensors.torch import load_file

    config = config_for(tiny_model_dir, tmp_path)

    def crash_after_step_2(step, metrics):
        if step == 2:
            raise KeyboardInterrupt("simulated crash after step 2's checkpoint")

    with pytest.raises(KeyboardInterrupt):
        train(config, train_problems=PROBLEMS, val_problems=VAL, reward_fn=letter_first, engine=engine,
              on_step_end=crash_after_step_2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    resumed = train(config_for(tiny_model_dir, tmp_path), train_problems=PROBLEMS, val_problems=VAL,
                    reward_fn=letter_first, engine=engine)
    assert resumed.step == 3

    expected = load_file(full_run.run_dir / "checkpoints" / "step_000003" / "model.safetensors")
    actual = load_file(tmp_path / "checkpoints" / "step_000003" / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), f"{name} differs after resume"

    def comparable(row):
        return {k: v for k, v in row.items() if not k.startswith(("timing_s/", "throughput/"))}

    uninterrupted, interrupted = read_metrics(full_run.run_dir), read_metrics(tmp_path)
    assert [r["step"] for r in interrupted] == [0, 1, 2, 3]
    for a, b in zip(uninterrupted, interrupted, strict=True):
        assert comparable(a) == comparable(b), f"step {a['step']} metrics differ after resume"


def test_learning_rate_zero_is_an_exact_no_op(tiny_model_dir, engine, tmp_path):
    result = train(config_for(tiny_model_dir, tmp_path, "optim.lr=0", "trainer.total_steps=1",
                              "validation.datasets=[]", "checkpoint.save_at_end=false", "logging.plots=false"),
                   train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    metrics = result.metrics
    assert metrics["actor/clipfrac"] == 0.0 and abs(metrics["actor/approx_kl"]) < 1e-6
    assert metrics["actor/kl"] < 1e-6  # policy == reference
    assert metrics["sync/trainer_change"] < 1e-6 and metrics["actor/grad_norm"] > 0


def test_a_stale_engine_is_caught_after_the_sync(tiny_model_dir, engine, tmp_path, monkeypatch):
    real_update = engine.update_weights
    calls: list[int] = []

    def first_update_only(named_tensors):
        calls.append(1)
        if len(calls) == 1:  # the start-up sync works, later ones silently do nothing
            real_update(named_tensors)
        else:
            list(named_tensors)

    monkeypatch.setattr(engine, "update_weights", first_update_only)
    # a huge tolerance leaves only the staleness test: the trainer moved, the engine did not
    config = config_for(tiny_model_dir, tmp_path, "trainer.total_steps=1", "validation.datasets=[]",
                        "rollout.sync_tolerance=100")
    with pytest.raises(WeightSyncError, match="stale rollout weights"):
        train(config, train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    monkeypatch.undo()


def test_dynamic_sampling_refills_with_signal_groups(tiny_model_dir, engine, tmp_path, monkeypatch):
    """Groups of odd-numbered problems get constant rewards (no signal) and are dropped; prompt batches are
    sampled until 4 groups with signal are kept. Also exercises bf16 autocast, gradient checkpointing,
    overlong reward shaping and truncated IS in the same step; then the skip and overlong-filter paths.
    The trainer's bf16 attention is whatever passes its self-check on this CPU (bf16 SDPA refuses to run on some
    CPUs), and the model is loaded with exactly that backend."""
    import deepscaler.training.setup as training_setup
    from deepscaler.precision.decision import ModelGeometry
    from deepscaler.precision.selfcheck import machine_self_check
    from deepscaler.training.checkpoint import DataPosition
    from deepscaler.training.stream import DataStream, derive_seed

    loaded = []
    real_load = training_setup.load_causal_lm

    def recording_load(*args, **kwargs):
        model, decision = real_load(*args, **kwargs)
        loaded.append((decision, model.config._attn_implementation, ModelGeometry.from_config(model.config)))
        return model, decision

    monkeypatch.setattr(training_setup, "load_causal_lm", recording_load)  # the trainer loads through setup

    index = {p.id: int(p.id.split("-")[1]) for p in PROBLEMS}

    def signal_on_even_problems(responses, problems):
        return [1.0 if index[p.id] % 2 == 0 and i % 8 == 0 else 0.0 for i, p in enumerate(problems)]

    stream = DataStream(len(PROBLEMS), DataPosition(seed=derive_seed(1, "data", 0)))
    batches, kept = 0, 0
    while kept < 4 and batches < 3:
        kept += sum(1 for i in stream.take(4) if i % 2 == 0)
        batches += 1
    result = train(config_for(tiny_model_dir, tmp_path, "trainer.total_steps=1", "validation.datasets=[]",
                              "algorithm.dynamic_sampling=true", "algorithm.max_rollout_batches=3",
                              "algorithm.overlong_buffer=4", "algorithm.tis_cap=2",
                              "precision.policy=bf16-mixed", "model.gradient_checkpointing=true",
                              "checkpoint.save_at_end=false", "logging.plots=false"),
                   train_problems=PROBLEMS, reward_fn=signal_on_even_problems, engine=engine)
    metrics = result.metrics
    assert metrics["batch/rollout_batches"] == batches and metrics["batch/groups_kept"] == min(kept, 4)
    assert metrics["batch/solve_none"] > 0  # measured over everything sampled, before filtering
    assert 0 < metrics["actor/tis_weight"] <= 2
    assert metrics["rollout/logprob_diff"] < 0.15  # bf16 trainer vs fp32 engine: rounding only
    decision, implementation, geometry = loaded[0]
    assert decision.compute_dtype == "bfloat16" and implementation == decision.backend
    assert machine_self_check(decision.backend, "bf16-mixed", geometry).passed, decision.describe()
    monkeypatch.undo()

    def nothing_to_learn(responses, problems):
        return [0.0] * len(responses)

    skipped = train(config_for(tiny_model_dir, tmp_path / "skip", "trainer.total_steps=1", "validation.datasets=[]",
                               "algorithm.dynamic_sampling=true", "algorithm.max_rollout_batches=2",
                               "checkpoint.save_at_end=false", "logging.plots=false"),
                    train_problems=PROBLEMS, reward_fn=nothing_to_learn, engine=engine)
    assert skipped.metrics["batch/skipped"] == 1.0 and skipped.metrics["batch/rollout_batches"] == 2

    # min_tokens = the limit: every response is truncated, so overlong filtering leaves nothing to train on
    filtered = train(config_for(tiny_model_dir, tmp_path / "filter", "trainer.total_steps=1",
                                "validation.datasets=[]", "algorithm.mask_truncated=true",
                                "rollout.min_tokens=8",
                                "checkpoint.save_at_end=false", "logging.plots=false"),
                     train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    assert filtered.metrics["response_length/clip_ratio"] == 1.0
    assert filtered.metrics["actor/updates"] == 0 and filtered.metrics["sync/trainer_change"] == 0


def test_stage_chain_carries_weights_and_resumes_at_the_boundary(tiny_model_dir, engine, tmp_path):
    """Two context-lengthening stages (8 then 12 response tokens), one step each: the stage-0 end checkpoint is
    kept (it is stage 1's reference model), and a run killed right after it resumes into a fresh stage 1 that
    ends with exactly the weights of the uninterrupted chain."""
    from safetensors.torch import load_file

    from deepscaler.training.config import StageConfig

    def chain_config(run_dir):
        config = config_for(tiny_model_dir, run_dir, "trainer.total_steps=2", "validation.datasets=[]",
                            "checkpoint.save_freq=0", "checkpoint.keep_last=1", "logging.plots=false")
        config.trainer.stages = [StageConfig(name="8tok", until_step=1),
                                 StageConfig(name="12tok", until_step=None,
                                             overrides={"data.max_response_length": 12, "optim.lr": 1e-2})]
        return config

    whole = train(chain_config(tmp_path / "whole"), train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    rows = read_metrics(whole.run_dir)
    assert [(r["step"], r["stage"]) for r in rows] == [(1, 0.0), (2, 1.0)]
    assert rows[0]["response_length/max"] <= 8 < rows[1]["response_length/max"] <= 12
    assert rows[1]["actor/lr"] == 1e-2 and rows[0]["actor/lr"] == 2e-2
    assert sorted(p.name for p in (whole.run_dir / "checkpoints").iterdir()) == ["step_000001", "step_000002"]

    def crash_at_boundary(step, metrics):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(chain_config(tmp_path / "split"), train_problems=PROBLEMS, reward_fn=letter_first, engine=engine,
              on_step_end=crash_at_boundary)
    train(chain_config(tmp_path / "split"), train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    expected = load_file(whole.run_dir / "checkpoints" / "step_000002" / "model.safetensors")
    actual = load_file(tmp_path / "split" / "checkpoints" / "step_000002" / "model.safetensors")
    assert all(torch.equal(tensor, actual[name]) for name, tensor in expected.items())
