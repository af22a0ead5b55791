"""Numerical self-checks run for real on CPU; deliberately broken kernels must be caught and named."""

from __future__ import annotations

import logging

import pytest
import torch

from deepscaler.precision import (
    PRECISION_TOLERANCES,
    ModelGeometry,
    SelfCheckError,
    get_policy,
    resolve_attention,
    self_check,
)
from deepscaler.precision.selfcheck import attention_function, machine_self_check

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

QWEN = dict(head_dim=128, num_heads=12, num_kv_heads=2)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("preset", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_cpu_backends_are_accurate_or_refuse_and_are_then_not_chosen(backend, preset):
    """Where a CPU kernel runs, it is accurate to its precision class. A kernel may refuse to run on a given CPU
    (bf16 SDPA raises "pack_vnni2 is only supported when avx512 is supported" on an AMX CPU limited to AVX2 by
    ATEN_CPU_CAPABILITY=avx2): that is a failed check carrying the kernel's error, never a wrong number, and the
    resolver then chooses another backend that passes."""
    result = self_check(backend, preset, seq_len=64, **QWEN)
    assert [c.name for c in result.cases] == ["causal", "packed"]
    klass = get_policy(preset).precision_class()
    assert result.tolerance == PRECISION_TOLERANCES[klass]
    if not result.passed:
        assert all(case.error for case in result.cases if not case.passed), result.summary()
        geometry = ModelGeometry(QWEN["num_heads"], QWEN["num_kv_heads"], QWEN["head_dim"])
        decision = resolve_attention("trainer", geometry, preset)  # this machine: its own self-checks
        assert decision.backend != backend and machine_self_check(decision.backend, preset, geometry).passed
        assert backend in decision.self_checks and "FAIL" in decision.self_checks[backend]
        return
    for case in result.cases:
        assert case.finite and 0 < case.rel_err <= result.tolerance
    if preset == "fp32":  # exact: far below the fp32 tolerance, far above bf16 rounding
        assert max(c.rel_err for c in result.cases) < 1e-6
    if preset == "bf16-mixed":  # 16-bit output rounding is really measured, not hidden by an fp32 path
        assert min(c.rel_err for c in result.cases) > 1e-4


def _register(name, fn):
    from transformers import AttentionInterface

    AttentionInterface.register(name, fn)


def _sdpa(*args, **kwargs):
    return attention_function("sdpa")(*args, **kwargs)


def test_nan_output_fails_loudly_and_names_the_backend(caplog):
    def nan_row(module, q, k, v, mask, **kwargs):
        out, weights = _sdpa(module, q, k, v, mask, **kwargs)
        out = out.clone()
        out[:, -1] = float("nan")
        return out, weights

    _register("test_nan_attention", nan_row)
    with caplog.at_level(logging.ERROR, logger="deepscaler.precision"):
        result = self_check("test_nan_attention", "fp32", head_dim=32, num_heads=4, num_kv_heads=2, seq_len=32)
    assert not result.passed
    assert all(not c.finite for c in result.cases)
    assert any("test_nan_attention" in r.getMessage() for r in caplog.records)
    with pytest.raises(SelfCheckError, match="test_nan_attention"):
        result.raise_if_failed()


def test_a_slightly_wrong_scale_fails_fp32_but_not_the_sdpa_reference():
    def wrong_scale(module, q, k, v, mask, scaling=None, **kwargs):
        return _sdpa(module, q, k, v, mask, scaling=scaling * 1.001, **kwargs)

    _register("test_wrong_scale", wrong_scale)
    result = self_check("test_wrong_scale", "fp32", head_dim=32, num_heads=4, num_kv_heads=2, seq_len=32)
    assert not result.passed
    assert all(c.finite and c.rel_err > PRECISION_TOLERANCES["fp32"] for c in result.cases)


def test_a_kernel_ignoring_document_boundaries_fails_only_the_packed_case():
    def causal_only(module, q, k, v, mask, **kwargs):
        return _sdpa(module, q, k, v, None, **kwargs)  # drops the block-diagonal mask: leaks across documents

    _register("test_causal_only", causal_only)
    # bf16 when SDPA runs it on this CPU (it may refuse, see above); the leak is as visible in fp32
    preset = "bf16-mixed" if self_check("sdpa", "bf16-mixed", head_dim=32, num_heads=4, num_kv_heads=1,
                                        seq_len=64).passed else "fp32"
    result = self_check("test_causal_only", preset, head_dim=32, num_heads=4, num_kv_heads=1, seq_len=64)
    by_name = {c.name: c for c in result.cases}
    assert by_name["causal"].passed
    assert not by_name["packed"].passed and by_name["packed"].rel_err > 0.05


def test_a_kernel_that_raises_is_a_failed_check_with_its_message():
    def refuses(module, q, k, v, mask, **kwargs):
        raise RuntimeError("No available kernel. Aborting execution.")

    _register("test_refuses", refuses)
    result = self_check("test_refuses", "fp32", head_dim=32, num_heads=2, num_kv_heads=2, seq_len=16)
    assert not result.passed and "No available kernel" in result.cases[0].error


def test_rollout_backends_are_skipped_with_a_reason():
    result = self_check("CPU_ATTN", "fp32", engine="rollout", **QWEN)
    assert result.skipped and not result.passed
    result.raise_if_failed()  # a skip is not a failure


def test_tf32_class_and_bad_geometry():
    assert get_policy("fp32-fast").precision_class() == "tf32"
    assert get_policy("fp32-fast").precision_class("rollout") == "fp32"
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        self_check("sdpa", "fp32", head_dim=32, num_heads=3, num_kv_heads=2)
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the check restores the global flag


def test_our_triton_kernel_passes_under_the_triton_interpreter():
    """deepscaler_flash through the same harness (packed case via position ids), on CPU with TRITON_INTERPRET=1.
    A subprocess, because the interpreter must be chosen before triton compiles anything."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = (
        "import json\n"
        "from deepscaler.kernels import register_transformers_attention\n"
        "from deepscaler.precision import self_check\n"
        "register_transformers_attention()\n"
        "out = {}\n"
        "for preset in ('fp32', 'bf16-mixed'):\n"
        "    r = self_check('deepscaler_flash', preset, head_dim=32, num_heads=4, num_kv_heads=2, seq_len=32,"
        " batch=1)\n"
        "    out[preset] = [r.passed, [c.rel_err for c in r.cases], r.summary()]\n"
        "print(json.dumps(out))\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and "deepscaler.kernels" in proc.stderr and "ImportError" in proc.stderr:
        pytest.skip("deepscaler.kernels not importable here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for passed, _errors, summary in result.values():
        assert passed, summary
    assert max(result["fp32"][1]) < 1e-6  # fp32-accurate, like SDPA fp32
