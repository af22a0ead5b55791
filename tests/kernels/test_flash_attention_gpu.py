"""GPU tests of the Triton flash attention on realistic shapes (skipped without a CUDA sm80+ GPU).

Tolerances follow the precision classes (relative Frobenius error vs float64 of the same inputs): fp32-accurate
modes <= 1e-6 forward, bf16x3 <= 3e-5; gradients get a few times more headroom (longer reductions).
"""

from __future__ import annotations

import os

import pytest
import torch

from deepscaler.kernels import FP32_ACCURATE_PRECISIONS, flash_attention, is_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
                       or not is_available()[0], reason="needs a CUDA GPU with compute capability >= 8.0"),
]

FWD_TOL = {**{p: 1e-6 for p in FP32_ACCURATE_PRECISIONS}, "bf16x3": 3e-5}
GRAD_TOL = {**{p: 5e-6 for p in FP32_ACCURATE_PRECISIONS}, "bf16x3": 1e-4}


def _reference(q, k, v, causal):
    group = q.shape[2] // k.shape[2]
    k, v = (x.double().repeat_interleave(group, dim=2) for x in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * q.shape[-1] ** -0.5
    if causal:
        visible = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril(k.shape[1] - q.shape[1])
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _relerr(x, ref):
    return float((x.detach().double() - ref.detach()).norm() / ref.detach().norm())


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "bf16x6", "bf16x3"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_qwen2_geometry_fwd_bwd(precision, causal, head_dim):
    """Qwen2-1.5B head layout (12 query / 2 KV heads), S=1000 (not a tile multiple)."""
    torch.manual_seed(0)
    q = torch.randn(2, 1000, 12, head_dim, device="cuda", requires_grad=True)
    k = torch.randn(2, 1000, 2, head_dim, device="cuda", requires_grad=True)
    v = torch.randn(2, 1000, 2, head_dim, device="cuda", requires_grad=True)
    grad = torch.randn_like(q)
    out = flash_attention(q, k, v, causal=causal, precision=precision)
    out.backward(grad)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _reference(q64, k64, v64, causal)
    ref.backward(grad.double())
    assert _relerr(out, ref) < FWD_TOL[precision]
    for ours, theirs in ((q, q64), (k, k64), (v, v64)):
        assert _relerr(ours.grad, theirs.grad) < GRAD_TOL[precision]


def test_varlen_matches_per_sequence_reference():
    torch.manual_seed(1)
    lengths = [100, 513, 7, 300]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lengths), 12, 128, device="cuda", requires_grad=True)
    k = torch.randn(sum(lengths), 2, 128, device="cuda", requires_grad=True)
    v = torch.randn(sum(lengths), 2, 128, device="cuda", requires_grad=True)
    out = flash_attention(q, k, v, causal=True, cu_seqlens=cu, max_seqlen=max(lengths), precision="bf16x6")
    grad = torch.randn_like(out)
    out.backward(grad)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = torch.cat([_reference(q64[a:b][None], k64[a:b][None], v64[a:b][None], True)[0]
                     for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)])
    ref.backward(grad.double())
    assert _relerr(out, ref) < 1e-6
    for ours, theirs in ((q, q64), (k, k64), (v, v64)):
        assert _relerr(ours.grad, theirs.grad) < 5e-6


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_16bit_inputs(dtype, tol):
    torch.manual_seed(2)
    q = torch.randn(1, 2048, 12, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, 2048, 2, 128, device="cuda", dtype=dtype) for _ in range(2))
    out = flash_attention(q, k, v, causal=True)
    assert out.dtype == dtype
    assert _relerr(out, _reference(q, k, v, True)) < tol


def test_tiny_qwen2_logits_match_eager_on_gpu(tmp_path):
    from transformers import AutoModelForCausalLM

    from deepscaler.kernels import register_transformers_attention, set_attention_precision
    from deepscaler.models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "tiny")
    name = register_transformers_attention()
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").cuda().eval()
    ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name).cuda().eval()
    set_attention_precision(ours, "bf16x6")
    ids = torch.randint(8, 200, (4, 300), device="cuda")
    with torch.no_grad():
        assert float((ours(ids).logits - eager(ids).logits).abs().max()) < 1e-5


def test_rectangular_tile_override_matches_float64():
    """A launch configuration other than the defaults (tiles= override, as benchmarks/tile_sweep.py uses it)
    computes the same function: bf16x6 at head dim 128, S=1000 (no tile multiple), every kernel overridden."""
    from deepscaler.kernels.tiles import TileConfig

    torch.manual_seed(3)
    tiles = {"fwd": TileConfig(64, 32, 4, 2), "dkdv": TileConfig(16, 64, 4, 2), "dq": TileConfig(32, 32, 4, 2)}
    q = torch.randn(1, 1000, 12, 128, device="cuda", requires_grad=True)
    k, v = (torch.randn(1, 1000, 2, 128, device="cuda", requires_grad=True) for _ in range(2))
    grad = torch.randn_like(q)
    out = flash_attention(q, k, v, causal=True, precision="bf16x6", tiles=tiles)
    out.backward(grad)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _reference(q64, k64, v64, True)
    ref.backward(grad.double())
    assert _relerr(out, ref) < FWD_TOL["bf16x6"]
    for ours, theirs in ((q, q64), (k, k64), (v, v64)):
        assert _relerr(ours.grad, theirs.grad) < GRAD_TOL["bf16x6"]
