"""The rollout engine's sleep/wake/load sequence, with a fake vLLM ``LLM`` that records every call (vLLM's sleep
mode needs CUDA), and the per-device start-up choices, each branch forced."""

from __future__ import annotations

import types

import pytest

from deepscaler.rollout import engine as engine_module
from deepscaler.rollout.engine import RolloutEngine
from deepscaler.rollout.engine_setup import (
    check_vllm_features,
    enforce_eager_choice,
    executor_choice,
    precision_env,
    sleep_level_choice,
)


class FakeLLM:
    """Records the calls RolloutEngine makes; ``wake_result`` / ``reset_result`` / ``fail_load`` inject failures."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.wake_result: bool | None = True
        self.reset_result: bool | None = True
        self.fail_load = False

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool | None:
        self.calls.append(("wake_up", tuple(tags or ())))
        return self.wake_result

    def collective_rpc(self, method: str, kwargs: dict) -> list:
        names = [name for name, _ in kwargs["weights_iterator"]]
        self.calls.append((method, tuple(names)))
        if self.fail_load:
            raise RuntimeError("weight load failed on the worker")
        return [None]

    def reset_prefix_cache(self) -> bool | None:
        self.calls.append(("reset_prefix_cache",))
        return self.reset_result


def fake_engine(sleep_level: int, monkeypatch) -> tuple[RolloutEngine, list]:
    calls: list = []
    monkeypatch.setattr(engine_module, "empty_cuda_cache", lambda: calls.append(("empty_cache",)))
    engine = object.__new__(RolloutEngine)  # the API under test needs no vLLM start-up
    engine.llm, engine.sleep_level, engine._asleep = FakeLLM(calls), sleep_level, False
    engine.tied_embeddings = False
    return engine, calls


WEIGHTS = [("model.embed_tokens.weight", 0), ("lm_head.weight", 1)]
LOADED = ("reload_weights", ("model.embed_tokens.weight", "lm_head.weight"))


@pytest.mark.parametrize("level", [1, 2])
def test_a_step_sleeps_then_wakes_weights_loads_wakes_kv_and_resets(level, monkeypatch):
    engine, calls = fake_engine(level, monkeypatch)
    engine.release_memory()  # after the rollouts: old/reference log-probs and the update run with the GPU
    assert engine.asleep
    engine.release_memory()  # idempotent: no second sleep
    engine.load_weights_and_resume(WEIGHTS)
    assert calls == [("sleep", level), ("empty_cache",), ("wake_up", ("weights",)), LOADED,
                     ("wake_up", ("kv_cache",)), ("reset_prefix_cache",)]
    assert not engine.asleep


def test_without_sleep_mode_release_is_a_no_op_and_a_load_only_loads_and_resets(monkeypatch):
    engine, calls = fake_engine(0, monkeypatch)  # CPU: vLLM has no sleep mode
    engine.release_memory()
    assert not engine.asleep
    engine.load_weights_and_resume(WEIGHTS)
    engine.resume()  # awake already: nothing to do
    assert calls == [LOADED, ("reset_prefix_cache",)]


def test_a_skipped_update_wakes_the_last_weights_at_level_1(monkeypatch):
    engine, calls = fake_engine(1, monkeypatch)
    engine.release_memory()
    engine.resume()  # no update this step: level 1 kept the weights in host memory
    assert calls == [("sleep", 1), ("empty_cache",), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",)),
                     ("reset_prefix_cache",)]
    assert not engine.asleep


def test_level_2_refuses_to_wake_without_weights(monkeypatch):
    engine, calls = fake_engine(2, monkeypatch)
    engine.release_memory()
    with pytest.raises(RuntimeError, match="level 2, which discards its weights"):
        engine.resume()
    assert engine.asleep and calls == [("sleep", 2)]
    engine.load_weights_and_resume(WEIGHTS)  # the full sync the trainer does instead
    assert not engine.asleep


def test_generating_or_scoring_while_asleep_is_refused(monkeypatch):
    engine, _ = fake_engine(1, monkeypatch)
    engine.release_memory()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate([[1, 2]], engine_module.SamplingSettings())
    with pytest.raises(RuntimeError, match="asleep"):
        engine.score([[1, 2, 3]], [1])


def test_a_failed_load_leaves_the_engine_asleep(monkeypatch):
    engine, calls = fake_engine(1, monkeypatch)
    engine.release_memory()
    engine.llm.fail_load = True
    with pytest.raises(RuntimeError, match="weight load failed"):
        engine.load_weights_and_resume(WEIGHTS)
    # the KV cache was never mapped and nothing may sample from half-loaded weights
    assert engine.asleep and ("wake_up", ("kv_cache",)) not in calls
    with pytest.raises(RuntimeError, match="asleep"):
        engine.score([[1, 2, 3]], [1])


def test_a_refused_prefix_cache_reset_or_partial_wake_is_an_error(monkeypatch):
    engine, _ = fake_engine(1, monkeypatch)
    engine.llm.reset_result = False
    with pytest.raises(RuntimeError, match="prefix cache"):
        engine.load_weights_and_resume(WEIGHTS)
    engine, _ = fake_engine(1, monkeypatch)
    engine.release_memory()
    engine.llm.wake_result = False
    with pytest.raises(RuntimeError, match="left part of the engine asleep"):
        engine.load_weights_and_resume(WEIGHTS)


def test_start_up_choices_each_branch():
    assert sleep_level_choice(None, "cuda")[0] == 1
    assert sleep_level_choice(2, "cuda") == (2, "rollout.sleep_level=2")
    assert sleep_level_choice(None, "cpu")[0] == 0
    assert sleep_level_choice(1, "cpu") == (0, "rollout.sleep_level=1 ignored: vLLM has no sleep mode on cpu")
    with pytest.raises(ValueError, match="sleep_level=3"):
        sleep_level_choice(3, "cuda")
    assert enforce_eager_choice(None, "cuda")[0] is False  # CUDA graphs on
    assert enforce_eager_choice(None, "cpu")[0] is True
    assert enforce_eager_choice(True, "cuda") == (True, "rollout.enforce_eager")
    assert executor_choice(None, 8, "cuda")[0] == "external_launcher"
    assert executor_choice(None, 1, "cuda")[0] is None
    assert executor_choice(None, 2, "cpu")[0] is None  # gloo ranks keep vLLM's single-process executor
    assert executor_choice("mp", 8, "cuda")[0] == "mp"


def test_float32_rollouts_on_cuda_pin_triton_to_ieee(monkeypatch):
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    assert precision_env("float32", "cuda")[0] == {"TRITON_F32_DEFAULT": "ieee"}
    assert precision_env("bfloat16", "cuda")[0] == {}
    assert precision_env("float32", "cpu")[0] == {}
    monkeypatch.setenv("TRITON_F32_DEFAULT", "tf32")
    env, reason = precision_env("float32", "cuda")
    assert env == {} and "set by the user" in reason


def test_missing_vllm_features_are_named():
    pytest.importorskip("vllm")
    import vllm

    check_vllm_features(vllm, sleep_level=1, explicit_kv=True)  # the installed vLLM has everything

    class OldArgs:  # an engine-args dataclass from before logprobs_mode and sleep mode
        __dataclass_fields__: dict = {}

    old = types.SimpleNamespace(__version__="0.9.0", EngineArgs=OldArgs,
                                LLM=types.SimpleNamespace(wake_up=lambda self: None))
    with pytest.raises(ImportError, match=r"vLLM 0.9.0 lacks .*logprobs_mode.*enable_sleep_mode.*wake_up\(tags") as e:
        check_vllm_features(old, sleep_level=1, explicit_kv=False)
    assert "vLLM >= 0.32" in str(e.value)


def test_close_drops_the_llm_vllms_groups_and_the_cuda_cache(monkeypatch):
    pytest.importorskip("vllm")
    from vllm.distributed import parallel_state

    engine, calls = fake_engine(1, monkeypatch)
    monkeypatch.setattr(parallel_state, "destroy_model_parallel", lambda: calls.append(("destroy_model_parallel",)))
    monkeypatch.setattr(parallel_state, "destroy_distributed_environment",
                        lambda: pytest.fail("the world group belongs to the trainer"))
    engine.close()
    assert not hasattr(engine, "llm")
    assert calls == [("destroy_model_parallel",), ("empty_cache",)]
    engine.close()  # closing twice is harmless
