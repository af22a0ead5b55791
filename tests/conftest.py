"""Shared fixtures: a tiny Qwen2 model saved locally, a vLLM engine on it, and the optional DeepScaleR data folder.

Every vLLM engine in the tests is a ``deepscaler.rollout.RolloutEngine`` (the product's one construction path);
a guard installed around ``vllm.LLM`` fails any test that starts a CPU engine without an explicit KV-cache size.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

# vLLM's in-process engine (no engine-core subprocess) starts in seconds on CPU; set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

DATA_DIR_VARIABLE = "DEEPSCALER_DATA_DIR"
# The test configuration's default data folder: this project's own development layout keeps the DeepScaleR data
# sets beside the checkout. Only the tests look there; the product resolves data through DEEPSCALER_DATA_DIR.
_SIBLING_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepscaler"
if not os.environ.get(DATA_DIR_VARIABLE) and (_SIBLING_DATA / "test").is_dir():
    os.environ[DATA_DIR_VARIABLE] = str(_SIBLING_DATA)
CPU_ENGINE_WITHOUT_KV_SIZE = (
    "a CPU vLLM engine was built without kv_cache_memory_bytes, so vLLM sizes its KV cache as a share of RAM "
    "minus this process's memory (negative once the process holds more). Build engines with "
    "deepscaler.rollout.RolloutEngine, which always passes an explicit size on CPU")


def _guarded_llm_init(init):
    """``vllm.LLM.__init__`` that refuses a CPU engine without an explicit KV-cache size."""

    @functools.wraps(init)
    def guarded(self, *args, **kwargs):
        import torch

        if not torch.cuda.is_available() and kwargs.get("kv_cache_memory_bytes") is None:
            raise AssertionError(CPU_ENGINE_WITHOUT_KV_SIZE)
        return init(self, *args, **kwargs)

    guarded.deepscaler_kv_guard = True
    return guarded


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Install the KV-size guard once vLLM is imported (test modules import it at collection, before any of
    their fixtures builds an engine); importing vLLM here just for the guard would slow every session."""
    if "vllm" not in sys.modules:
        return
    from vllm.entrypoints.llm import LLM

    if not getattr(LLM.__init__, "deepscaler_kv_guard", False):
        LLM.__init__ = _guarded_llm_init(LLM.__init__)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised Qwen2 model + tokenizer saved with save_pretrained."""
    from deepscaler.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    """An in-process vLLM engine on the tiny model (float32, 256 positions; on CPU its KV cache is sized from the
    model by RolloutEngine); one per test module, since some modules change its weights."""
    pytest.importorskip("vllm")
    from deepscaler.rollout import EngineConfig, RolloutEngine

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256,
                                        precision="fp32"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The DeepScaleR data folder named by DEEPSCALER_DATA_DIR (``.ci/run`` sets it); tests that need it skip
    cleanly when it is unset or has no ``test`` split."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    if not value:
        pytest.skip(f"{DATA_DIR_VARIABLE} is not set (point it at a DeepScaleR data folder to run this test)")
    folder = Path(value).expanduser().resolve()
    if not (folder / "test").is_dir():
        pytest.skip(f"{DATA_DIR_VARIABLE}={value} has no test/ folder")
    return folder


@pytest.fixture
def fresh_console(monkeypatch, tmp_path):
    """The console module as a new process finds it, with stray records kept in this test's folder."""
    from deepscaler.console import logs

    monkeypatch.setenv("DEEPSCALER_LOG_DIR", str(tmp_path / "stray-logs"))
    logs._reset_for_tests()
    yield
    logs._reset_for_tests()
