"""CPU tests of the Triton flash attention.

Kernel numerics run under Triton's interpreter in ONE subprocess (``_interpreter_cases.py``): triton decides
compile-vs-interpret when it is imported, so TRITON_INTERPRET=1 cannot be switched on inside this shared pytest
process without leaking into other tests. Everything else (validation, helpers, is_available branches, the
ahead-of-time GPU compile) runs in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepscaler.kernels import ATTENTION_NAME, flash_attention, is_available
from deepscaler.kernels.flash_attention import split_operand
from deepscaler.kernels.hf_attention import cu_seqlens_from_position_ids, set_attention_precision
from deepscaler.kernels.tiles import (
    DEFAULT_TILES,
    INTERPRETER_TILES,
    KERNELS,
    LARGE_HEAD_TILES,
    TileConfig,
    choose_tiles,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

CASES_SCRIPT = Path(__file__).with_name("_interpreter_cases.py")
FP32_TOL = 1e-6  # fp32-accurate modes vs float64 (measured ~1e-7 .. 3e-7)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("flash_cases") / "cases.json"
    # The subprocess must import this checkout's deepscaler (not an installed copy elsewhere).
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(CASES_SCRIPT), "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"interpreter cases crashed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def _case(cases: dict, name: str) -> dict:
    result = cases[name]
    assert "error" not in result, result["error"]
    return result


@pytest.mark.parametrize("name", ["causal_gqa_d32_ieee", "noncausal_mha_d64_ieee", "causal_gqa_d32_bf16x6",
                                  "causal_gqa_rectangular_tiles",
                                  "decode_bottom_right_causal", "varlen_causal_mqa", "varlen_noncausal_gqa",
                                  "varlen_causal_longer_keys"])
def test_fp32_accurate_forward_and_gradients(cases, name):
    result = _case(cases, name)
    for key in ("out", "dq", "dk", "dv"):
        assert result[key] < FP32_TOL, (key, result)


def test_bf16x3_is_near_fp32_forward_and_gradients(cases):
    result = _case(cases, "causal_gqa_d32_bf16x3")
    for key in ("out", "dq", "dk", "dv"):
        assert 1e-6 < result[key] < 5e-5, (key, result)


def test_precision_ladder_shows_the_bf16_split_happens(cases):
    """The interpreter runs ieee/tf32x3 in full fp32, so bf16x3's error can only come from the explicit bf16
    hi/lo split: clearly worse than fp32, far better than plain bf16 attention."""
    err = _case(cases, "precision_ladder")
    assert err["ieee"] < 3e-7 and err["bf16x6"] < 3e-7
    assert 1e-6 < err["bf16x3"] < 3e-5
    assert err["bf16x3"] > 10 * err["ieee"]
    assert 1e-3 < err["bf16"] < 2e-2
    assert err["bf16"] > 100 * err["bf16x3"]


@pytest.mark.parametrize("name,tol", [("bf16_inputs", 2e-2), ("fp16_inputs", 2e-3)])
def test_16bit_inputs_keep_their_dtype(cases, name, tol):
    result = _case(cases, name)
    dtype = "torch.bfloat16" if name == "bf16_inputs" else "torch.float16"
    assert result["out_dtype"] == dtype and result["dq_dtype"] == dtype
    for key in ("out", "dq", "dk", "dv"):
        assert result[key] < tol, (key, result)


def test_qwen2_logits_match_eager_fp32(cases):
    result = _case(cases, "qwen2_logits_vs_eager")
    assert result["attn_implementation"] == ATTENTION_NAME
    assert result["max_abs"] < 1e-5
    assert result["padded_max_abs"] < 1e-5
    assert result["precision_default_bf16x6_max_abs"] < 1e-5


def test_qwen2_packed_rows_do_not_attend_across_sequences(cases):
    result = _case(cases, "qwen2_packed_position_ids")
    assert result["packed_vs_separate_max_abs"] < 1e-5
    # Sanity check of the test itself: without packing support the logits differ a lot.
    assert result["eager_cross_contamination_max_abs"] > 1e-2


def test_qwen2_gradients_match_eager(cases):
    assert _case(cases, "qwen2_gradients_vs_eager")["max_param_grad_rel"] < 1e-5


def test_qwen2_generate_with_kv_cache_matches_eager(cases):
    result = _case(cases, "qwen2_generate_matches_eager")
    assert result["scores_max_abs"] < 1e-5
    # Same greedy tokens, except that two float32 kernels may break a near-tie differently: the sequences may
    # only part where eager's top-2 scores are within twice the measured score difference bound.
    start = result["prompt_length"]
    ours, eager = result["ours"][start:], result["eager"][start:]
    parted = next((i for i, (a, b) in enumerate(zip(ours, eager, strict=False)) if a != b), None)
    if parted is None:
        assert ours == eager
    else:
        assert result["eager_margins"][parted] < 2e-5, (parted, result)


# ----------------------------------------------------------------------------------------------------------
# in-process: pure helpers and validation
# ----------------------------------------------------------------------------------------------------------
def test_split_operand_reconstructs_fp32():
    x = torch.randn(3, 5, 2, 32) * torch.logspace(-3, 3, 32)
    two = split_operand(x, "bf16x3")
    three = split_operand(x, "bf16x6")
    assert two.shape == (2, *x.shape) and two.dtype == torch.bfloat16 and three.shape == (3, *x.shape)
    rel2 = ((two.float().sum(0) - x).abs() / x.abs()).max()
    rel3 = ((three.float().sum(0) - x).abs() / x.abs()).max()
    assert 2**-24 < rel2 <= 2**-16  # 16 significant bits
    assert rel3 <= 2**-24  # all 24 bits of fp32
    assert split_operand(x, "ieee").data_ptr() == x.data_ptr()  # no copy for unsplit modes


def test_cu_seqlens_from_position_ids():
    cu, longest = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    assert cu_seqlens_from_position_ids(torch.arange(7)[None]) is None  # one sequence: not packed
    assert cu_seqlens_from_position_ids(torch.arange(5, 12)) is None  # offset start (KV cache): not packed


@pytest.mark.parametrize("kwargs,match", [
    (dict(precision="tf32"), "precision must be one of"),
    (dict(k_shape=(1, 8, 3, 32)), "multiple of k/v heads"),
    (dict(q_shape=(8, 4, 32)), r"\[batch, seq, heads, head_dim\]"),
    (dict(k_dtype=torch.float64), "differs from q.dtype"),
    (dict(cu_seqlens=torch.tensor([0.0, 8.0])), "cu_seqlens must be int32 or int64"),
    (dict(q_shape=(1, 9, 4, 32), k_shape=(1, 8, 2, 32)), r"seq_k \(8\) >= seq_q \(9\)"),
])
def test_bad_inputs_name_the_field(kwargs, match):
    q = torch.randn(*kwargs.pop("q_shape", (1, 8, 4, 32)))
    k_shape = kwargs.pop("k_shape", (1, 8, 2, 32))
    k = torch.randn(*k_shape, dtype=kwargs.pop("k_dtype", torch.float32))
    v = torch.randn(*k_shape, dtype=k.dtype)
    if "cu_seqlens" in kwargs:
        q, k, v = q[0], k[0], v[0]
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, **kwargs)


def test_cpu_tensors_without_interpreter_are_refused():
    from deepscaler.kernels import _flash_kernels

    if _flash_kernels.INTERPRETED:
        pytest.skip("this process runs triton's interpreter")
    q = torch.randn(1, 8, 2, 32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        flash_attention(q, q, q)


def test_tiles_override_is_validated():
    q = torch.randn(1, 8, 2, 32)
    with pytest.raises(ValueError, match="tiles must map 'fwd', 'dkdv', 'dq'"):
        flash_attention(q, q, q, tiles={"forward": TileConfig(64, 32, 4, 2)})
    with pytest.raises(ValueError, match="tiles must map"):
        flash_attention(q, q, q, tiles={"fwd": (64, 32, 4, 2)})


# ----------------------------------------------------------------------------------------------------------
# choose_tiles: every branch
# ----------------------------------------------------------------------------------------------------------
def test_choose_tiles_default_table_for_each_kernel_and_precision():
    for kernel in KERNELS:
        for precision in ("native", "ieee", "tf32x3", "bf16x6", "bf16x3"):
            config, reason = choose_tiles(kernel, precision, 128)
            assert config == DEFAULT_TILES[(kernel, precision)] and "head dim <= 128" in reason


def test_choose_tiles_override_interpreter_and_large_heads():
    mine = TileConfig(64, 64, 4, 3)
    assert choose_tiles("dq", "bf16x3", 128, override={"dq": mine}) == (mine, "tiles= override")
    assert choose_tiles("fwd", "bf16x3", 128, override={"dq": mine})[0] == DEFAULT_TILES[("fwd", "bf16x3")]
    assert choose_tiles("fwd", "bf16x3", 128, interpreted=True)[0] == INTERPRETER_TILES
    config, reason = choose_tiles("dkdv", "bf16x6", 256)
    assert config == LARGE_HEAD_TILES["dkdv"] and "256 > 128" in reason
    with pytest.raises(ValueError, match="kernel must be one of"):
        choose_tiles("bwd", "bf16x3", 128)
    with pytest.raises(ValueError, match="no tile config"):
        choose_tiles("fwd", "fp8", 128)


def test_set_attention_precision_validates():
    class Config:
        pass

    config = Config()
    set_attention_precision(config, "bf16x3")
    assert config.deepscaler_attention_precision == "bf16x3"
    with pytest.raises(ValueError, match="precision must be one of"):
        set_attention_precision(config, "fp8")


# ----------------------------------------------------------------------------------------------------------
# is_available: every branch
# ----------------------------------------------------------------------------------------------------------
def test_is_available_interpreter_branch():
    ok, reason = is_available(env={"TRITON_INTERPRET": "1"})
    assert ok and "interpreter" in reason


def test_is_available_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    ok, reason = is_available(env={})
    assert not ok and "triton is not importable" in reason


@pytest.mark.parametrize("has_cuda,capability,expected", [(False, None, False), (True, (7, 5), False),
                                                          (True, (8, 0), True), (True, (9, 0), True)])
def test_is_available_gpu_branches(monkeypatch, has_cuda, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    monkeypatch.setattr(torch.version, "hip", None)
    ok, reason = is_available(env={})
    assert ok is expected
    if not has_cuda:
        assert "no CUDA GPU" in reason
    elif capability < (8, 0):
        assert "sm75" in reason and "sm80+" in reason
    else:
        assert "FakeGPU" in reason


# ----------------------------------------------------------------------------------------------------------
# ahead-of-time compile for the GPU (ptxas ships with triton; no GPU needed)
# ----------------------------------------------------------------------------------------------------------
def test_kernels_compile_for_hopper_with_tensor_cores():
    pytest.importorskip("triton.backends.nvidia")
    from deepscaler.kernels import aot

    for kernel, cfg in (("fwd", (64, 32, 4, 2)), ("dkdv", (32, 64, 4, 2)), ("dq", (64, 32, 4, 2))):
        result = aot.compile_kernel(kernel, "bf16x3", 64, *cfg, capability=90, causal=True, varlen=True)
        assert result.error == "", result
        assert result.tensor_core_ops > 0, result  # wgmma emitted for the split bf16 dots
        assert result.shared_bytes <= aot.SHARED_LIMIT[90]
