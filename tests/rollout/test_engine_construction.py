"""Every vLLM engine is built by RolloutEngine, and on CPU it always passes an explicit KV-cache size.

vLLM's CPU worker otherwise sizes the KV cache as ``gpu_memory_utilization x RAM - this process's memory``, which
goes negative once a trainer holds memory (seen on a machine whose NUMA node 0 has 10 GiB). These tests record
what RolloutEngine hands to ``vllm.LLM`` (no engine starts), check that a direct construction is refused by the
suite's guard (tests/conftest.py), and that no file of the project builds ``LLM(...)`` anywhere else.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm")

from deepscaler.rollout import EngineConfig, RolloutEngine  # noqa: E402
from deepscaler.rollout.memory import cpu_kv_cache_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class RecordedLLM:
    """Stands in for ``vllm.LLM``: keeps the constructor's kwargs, starts nothing."""

    built: list[dict] = []

    def __init__(self, **kwargs):
        RecordedLLM.built.append(kwargs)

    def get_tokenizer(self):
        return None


@pytest.fixture
def recorded(monkeypatch):
    """vllm.LLM replaced by RecordedLLM, and the machine probed as a CPU one (so this runs on GPU hosts too)."""
    import deepscaler.rollout.engine_setup as setup_module

    real_probe = setup_module.probe_environment
    cpu = dataclasses.replace(real_probe(), device_type="cpu", gpu_name=None, compute_capability=None)
    monkeypatch.setattr(setup_module, "probe_environment", lambda: cpu)
    monkeypatch.setattr(vllm, "LLM", RecordedLLM)
    RecordedLLM.built = []
    return RecordedLLM.built


def test_a_cpu_engine_without_a_size_gets_one_computed_from_the_model(recorded, tiny_model_dir):
    from transformers import AutoConfig

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256,
                                        gpu_memory_utilization=0.1))
    (kwargs,) = recorded
    expected, _ = cpu_kv_cache_bytes(AutoConfig.from_pretrained(tiny_model_dir), 256, 256, "float32")
    assert kwargs["kv_cache_memory_bytes"] == expected > 0
    assert kwargs["gpu_memory_utilization"] == 0.1  # passed on; vLLM's CPU worker ignores it given a size
    assert engine.decision.device_type == "cpu"


def test_an_explicit_cpu_size_is_passed_as_given(recorded, tiny_model_dir):
    RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256,
                               extra_engine_kwargs={"kv_cache_memory_bytes": 96 << 20}))
    RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="bfloat16", max_model_len=512, max_num_seqs=8,
                               extra_engine_kwargs={"kv_cache_memory_bytes": None}))
    given, computed = recorded
    assert given["kv_cache_memory_bytes"] == 96 << 20
    from transformers import AutoConfig

    assert computed["kv_cache_memory_bytes"] == cpu_kv_cache_bytes(
        AutoConfig.from_pretrained(tiny_model_dir), 512, 8, "bfloat16")[0]


def test_a_cpu_engine_built_directly_is_refused(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the guard concerns CPU engines")
    with pytest.raises(AssertionError, match="without kv_cache_memory_bytes"):
        vllm.LLM(model=str(tiny_model_dir), gpu_memory_utilization=0.1)


def _llm_calls(tree: ast.AST) -> list[int]:
    """Line numbers of ``LLM(...)`` / ``<x>.LLM(...)`` calls in ``tree``, including code held in string constants
    (scripts a test runs in a subprocess)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == "LLM") or (
                    isinstance(func, ast.Attribute) and func.attr == "LLM"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "LLM(" in node.value:
            try:
                inner = ast.parse(node.value)
            except SyntaxError:  # prose (a docstring naming vllm.LLM), not code
                continue
            lines += [node.lineno] * len(_llm_calls(inner))
    return lines


def test_no_file_builds_a_vllm_engine_outside_rollout_engine():
    constructions = []
    engine_file = REPO / "deepscaler" / "rollout" / "engine.py"
    for folder in ("deepscaler", "tests", "benchmarks", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path in (Path(__file__).resolve(), engine_file):
                continue
            for number in _llm_calls(ast.parse(path.read_text(encoding="utf-8"))):
                constructions.append(f"{path.relative_to(REPO)}:{number}")
    assert not constructions, "build vLLM engines with deepscaler.rollout.RolloutEngine: " + ", ".join(constructions)
    assert len(_llm_calls(ast.parse(engine_file.read_text(encoding="utf-8")))) == 1


def test_the_scan_finds_direct_and_embedded_constructions():
    code = 'import vllm\nengine = vllm.LLM(model="m")\nSCRIPT = """from vllm import LLM\nLLM(model=1)\n"""\n'
    assert _llm_calls(ast.parse(code)) == [2, 3]
    assert _llm_calls(ast.parse('"""Pass it to ``vllm.LLM(dtype=...)``."""')) == []
