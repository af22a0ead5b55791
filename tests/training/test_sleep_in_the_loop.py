"""Sleep mode inside the GRPO loop: the real CPU engine behind a vLLM ``LLM`` that emulates sleep/wake (vLLM's
sleep mode needs CUDA) and records every call, so the order of a whole step can be checked: rollouts, sleep,
(log-probs and update), wake the weights, load, wake the KV cache, reset the prefix cache, probe, validation."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")

from deepscaler.data import Problem  # noqa: E402
from deepscaler.rollout import engine as engine_module  # noqa: E402
from deepscaler.training.config import load_config  # noqa: E402
from deepscaler.training.loop import train  # noqa: E402

PROBLEMS = [Problem(id=f"toy-{i}", problem=f"What is {i} + {2 * i}?", answers=[str(3 * i)], source="toy")
            for i in range(12)]
VAL = {"toy": [Problem(id="val-0", problem="What is 1 + 1?", answers=["2"], source="toy")]}


class SleepEmulatingLLM:
    """Forwards to the real ``LLM``; records sleep/wake/load/reset/generate; refuses to generate while asleep."""

    def __init__(self, real, calls: list) -> None:
        self.real, self.calls, self.asleep = real, calls, False

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep{level}")
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(f"wake_{'+'.join(tags or ['all'])}")
        self.asleep = "kv_cache" not in (tags or ["kv_cache"])
        return not self.asleep

    def collective_rpc(self, method, kwargs=None, **other):
        self.calls.append("load")
        return self.real.collective_rpc(method, kwargs=kwargs, **other)

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset")
        return self.real.reset_prefix_cache()

    def generate(self, prompts, params, use_tqdm=False):
        assert not self.asleep, "generated while asleep"
        first = params[0] if isinstance(params, list) else params
        self.calls.append("score" if first.prompt_logprobs is not None else "generate")
        return self.real.generate(prompts, params, use_tqdm=use_tqdm)

    def get_tokenizer(self):
        return self.real.get_tokenizer()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from deepscaler.rollout import EngineConfig, RolloutEngine

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256, seed=0))
    yield engine
    engine.close()


@pytest.fixture
def sleeping(engine, monkeypatch):
    """The engine with emulated sleep mode at a given level; returns (set_level, calls)."""
    calls: list = []
    real = engine.llm
    monkeypatch.setattr(engine_module, "empty_cuda_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(engine, "llm", SleepEmulatingLLM(real, calls))

    def set_level(level: int):
        monkeypatch.setattr(engine, "sleep_level", level)
        return engine

    yield set_level, calls
    engine._asleep = False


def config_for(model_dir, run_dir, *overrides: str):
    return load_config(None, [
        f"model.path={model_dir}", f"trainer.run_dir={run_dir}", "trainer.total_steps=2", "trainer.seed=1",
        "data.train_batch_size=2", "rollout.n=4", "algorithm.ppo_mini_batch_size=2", "data.max_prompt_length=128",
        "data.max_response_length=4", "algorithm.max_tokens_per_micro_batch=300", "validation.n=1",
        "validation.test_freq=1", "validation.before_train=false", "checkpoint.save_freq=0",
        "checkpoint.save_at_end=false", "logging.progress=none", "logging.plots=false", *overrides])


def letter_first(responses, problems):
    return [1.0 if text[:1].isascii() and text[:1].isalpha() else 0.0 for text in responses]


def nothing_to_learn(responses, problems):
    return [0.0] * len(responses)


WAKE_LOAD = ["empty_cache", "wake_weights", "load", "wake_kv_cache", "reset", "score"]


def test_each_step_sleeps_after_rollouts_and_wakes_through_the_sync(tiny_model_dir, tmp_path, sleeping):
    set_level, calls = sleeping
    train(config_for(tiny_model_dir, tmp_path), train_problems=PROBLEMS, val_problems=VAL, reward_fn=letter_first,
          engine=set_level(1))
    initial = ["load", "reset", "score"]  # the stage's first sync: the engine is awake, nothing to wake
    step = ["generate", "sleep1", *WAKE_LOAD, "generate"]  # rollouts, sleep, sync + probe, validation
    assert calls == initial + step + step


def test_a_skipped_update_wakes_the_old_weights_at_level_1_and_syncs_at_level_2(tiny_model_dir, tmp_path, sleeping):
    set_level, calls = sleeping
    skip = ["algorithm.dynamic_sampling=true", "algorithm.max_rollout_batches=1", "trainer.total_steps=1"]
    metrics = train(config_for(tiny_model_dir, tmp_path / "one", *skip), train_problems=PROBLEMS, val_problems=VAL,
                    reward_fn=nothing_to_learn, engine=set_level(1)).metrics
    assert metrics["batch/skipped"] == 1.0
    assert calls[3:] == ["generate", "sleep1", "empty_cache", "wake_weights", "wake_kv_cache", "reset", "generate"]
    calls.clear()
    train(config_for(tiny_model_dir, tmp_path / "two", *skip), train_problems=PROBLEMS, val_problems=VAL,
          reward_fn=nothing_to_learn, engine=set_level(2))
    # level 2 discarded the weights: the unchanged ones are loaded again (and checked) before validation
    assert calls[3:] == ["generate", "sleep2", *WAKE_LOAD, "generate"]


def test_an_offloaded_reference_model_trains_the_same(tiny_model_dir, tmp_path, engine):
    """model.reference_offload only moves the reference model between phases: the same run with it on ends with
    the same metrics (on CPU both devices are the host, so this checks the path end to end)."""
    results = [train(config_for(tiny_model_dir, tmp_path / str(flag), "trainer.total_steps=1",
                                f"model.reference_offload={flag}"), train_problems=PROBLEMS, val_problems=VAL,
                     reward_fn=letter_first, engine=engine).metrics for flag in (False, True)]
    assert "actor/kl" in results[0]
    for key in ("actor/kl", "actor/pg_loss", "actor/grad_norm", "reward/mean"):
        assert results[1][key] == results[0][key], key
