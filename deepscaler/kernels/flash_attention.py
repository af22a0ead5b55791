"""Host side of the fp32-accurate flash attention: validation, launches and the autograd Function.

The kernels live in ``_flash_kernels.py``, their launch configurations in ``tiles.py``. On CUDA tensors they are
compiled once per variant; on CPU tensors they
run only under Triton's interpreter, which must be switched on *before* ``triton`` is imported
(``TRITON_INTERPRET=1``): triton decides between compiling and interpreting when each ``@triton.jit`` function,
including its own ``tl.sum``/``tl.max``, is defined. The interpreter is slow and meant for tests only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import torch

from deepscaler.kernels.tiles import TileConfig, choose_tiles

# triton and the kernel module (which imports triton at its top) are imported inside the functions that use them:
# triton is a heavy optional dependency, and without it this module still answers is_available() and validates.

PRECISIONS: tuple[str, ...] = ("ieee", "tf32x3", "bf16x6", "bf16x3")
"""Dot-product precisions for fp32 inputs (bf16x3 ~1e-5 relative error; the others fp32-accurate, <=1e-6)."""
FP32_ACCURATE_PRECISIONS: tuple[str, ...] = ("ieee", "tf32x3", "bf16x6")
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256


def kernel_module(device: torch.device) -> ModuleType:
    """The Triton kernel module, after checking it can run on ``device``."""
    from deepscaler.kernels import _flash_kernels as mod

    if device.type != "cuda" and not mod.INTERPRETED:
        raise ValueError(
            f"the deepscaler flash kernel got {device.type} tensors; it runs on CUDA GPUs (sm80+), or on CPU only "
            "under Triton's interpreter: export TRITON_INTERPRET=1 before Python imports triton (slow, tests only)")
    return mod


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one call. ``varlen``: packed ``[T, H, D]`` with cu_seqlens; else batched ``[B, S, H, D]``."""

    varlen: bool
    batch: int
    seq_q: int  # padded length (batched) or 0 (packed)
    seq_k: int
    max_q: int  # longest query sequence, sizes the grid
    max_k: int
    heads_q: int
    heads_kv: int
    head_dim: int


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _bsh_strides(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, token, head) strides; packed tensors have no batch axis (stride 0)."""
    return (0, x.stride(0), x.stride(1)) if varlen else (x.stride(0), x.stride(1), x.stride(2))


def split_operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """Operand parts the kernel loads: ``[PARTS, *x.shape]``.

    ``bf16x3``: ``x ~ x0 + x1`` (two bf16 parts, 16 significant bits); ``bf16x6``: ``x ~ x0 + x1 + x2`` (three
    parts, 24 bits = all of fp32); otherwise ``x`` itself as one part. Rounding is round-to-nearest-even, as
    the kernel's in-register split of P and dS.
    """
    if x.dtype != torch.float32 or precision not in ("bf16x3", "bf16x6"):
        return x.unsqueeze(0)
    parts = []
    rest = x
    for _ in range(2 if precision == "bf16x3" else 3):
        part = rest.to(torch.bfloat16)
        parts.append(part)
        rest = rest - part.float()
    return torch.stack(parts)


def _part_strides(parts: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(part, batch, token, head) strides of a ``split_operand`` result."""
    return (parts.stride(0), *_bsh_strides(parts[0], varlen))


def _contiguous_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _as_cu_seqlens(cu: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor [batch + 1] of cumulative sequence lengths starting at 0, "
                         f"got shape {tuple(cu.shape)}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {cu.dtype}; pass torch.tensor(..., dtype=torch.int32)")
    return cu.to(device=device, dtype=torch.int32).contiguous()


def _validate(q, k, v, causal, cu_q, cu_k, max_q, max_k, precision) -> _Geometry:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name}.dtype {x.dtype} differs from q.dtype {q.dtype}; cast all three to one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; move all three to one device")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q.dtype must be one of {_SUPPORTED_DTYPES}, got {q.dtype}")
    varlen = cu_q is not None
    want = 3 if varlen else 4
    layout = "[total_tokens, heads, head_dim] (packed, with cu_seqlens)" if varlen else \
        "[batch, seq, heads, head_dim] (pass cu_seqlens for packed [total_tokens, heads, head_dim])"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != want:
            raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
    head_dim, heads_q, heads_kv = q.shape[-1], q.shape[-2], k.shape[-2]
    if k.shape[-1] != head_dim or v.shape[-1] != head_dim or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must match each other and q's head_dim "
                         f"{head_dim}")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} > {MAX_HEAD_DIM} is not supported; use SDPA for this model")
    if heads_q % heads_kv != 0:
        raise ValueError(f"q heads ({heads_q}) must be a multiple of k/v heads ({heads_kv}) for GQA/MQA")
    if varlen:
        batch = cu_q.numel() - 1
        if cu_k.numel() != cu_q.numel():
            raise ValueError(f"cu_seqlens_k has {cu_k.numel()} entries but cu_seqlens has {cu_q.numel()}")
        if max_q is None:
            max_q = int((cu_q[1:] - cu_q[:-1]).max())
        if max_k is None:
            max_k = max_q if cu_k is cu_q else int((cu_k[1:] - cu_k[:-1]).max())
        if causal and cu_k is not cu_q and bool(((cu_k[1:] - cu_k[:-1]) < (cu_q[1:] - cu_q[:-1])).any()):
            raise ValueError("causal attention needs every key sequence at least as long as its query sequence "
                             "(bottom-right aligned); check cu_seqlens_k")
        return _Geometry(True, batch, 0, 0, int(max_q), int(max_k), heads_q, heads_kv, head_dim)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"q batch {q.shape[0]} != k batch {k.shape[0]}")
    if causal and k.shape[1] < q.shape[1]:
        raise ValueError(f"causal attention needs seq_k ({k.shape[1]}) >= seq_q ({q.shape[1]})")
    return _Geometry(False, q.shape[0], q.shape[1], k.shape[1], q.shape[1], k.shape[1], heads_q, heads_kv,
                     head_dim)


def _launch_common(geo: _Geometry, causal: bool, dtype: torch.dtype, precision: str, device: torch.device):
    """Kernel module and the constexpr kwargs shared by all three kernels."""
    mod = kernel_module(device)
    import triton

    kwargs = dict(HEAD_DIM=geo.head_dim, BLOCK_D=max(16, triton.next_power_of_2(geo.head_dim)), CAUSAL=causal,
                  VARLEN=geo.varlen, PRECISION=precision if dtype == torch.float32 else "native",
                  IN_DTYPE=_tl_dtype(dtype))
    return mod, kwargs


def _tile_kwargs(mod: ModuleType, kernel: str, kw: dict, tiles: dict[str, TileConfig] | None) -> dict:
    """Launch kwargs of ``kernel``'s tile config (tiles.choose_tiles); only the block sizes under the interpreter."""
    config, _ = choose_tiles(kernel, kw["PRECISION"], kw["HEAD_DIM"], interpreted=mod.INTERPRETED, override=tiles)
    if mod.INTERPRETED:
        return dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n)
    return config.launch_kwargs()


def _stats_buffer(geo: _Geometry, total_q: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """fp32 per-row softmax statistics: [Hq, T] (packed) or [B, Hq, S] (batched), with (batch, head) strides."""
    if geo.varlen:
        buf = torch.empty(geo.heads_q, total_q, device=device, dtype=torch.float32)
        return buf, 0, buf.stride(0)
    buf = torch.empty(geo.batch, geo.heads_q, geo.seq_q, device=device, dtype=torch.float32)
    return buf, buf.stride(0), buf.stride(1)


def _forward(q, k, v, cu_q, cu_k, geo: _Geometry, causal: bool, scale: float, precision: str,
             tiles: dict[str, TileConfig] | None = None, compiled: dict | None = None):
    """(out, lse). ``compiled``, when given, receives the launched kernel object under "fwd" (its register and
    spill counts are read by the benchmark)."""
    mod, kw = _launch_common(geo, causal, q.dtype, precision, q.device)
    import triton

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse, stride_lb, stride_lh = _stats_buffer(geo, q.shape[0], q.device)
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
    grid = lambda meta: (triton.cdiv(geo.max_q, meta["BLOCK_M"]), geo.batch * geo.heads_q)  # noqa: E731
    qp, kp, vp = (split_operand(x, precision) for x in (q, k, v))
    kernel = mod.attn_fwd_kernel[grid](
        qp, kp, vp, out, lse, cu_q if cu_q is not None else dummy, cu_k if cu_k is not None else dummy,
        geo.seq_q, geo.seq_k, scale * math.log2(math.e),
        *_part_strides(qp, geo.varlen), *_part_strides(kp, geo.varlen), *_part_strides(vp, geo.varlen),
        *_bsh_strides(out, geo.varlen), stride_lb, stride_lh,
        geo.heads_q, geo.heads_q // geo.heads_kv, **kw, **_tile_kwargs(mod, "fwd", kw, tiles))
    if compiled is not None:
        compiled["fwd"] = kernel
    return out, lse


def _backward(do, q, k, v, out, lse, cu_q, cu_k, geo: _Geometry, causal: bool, scale: float, precision: str,
              tiles: dict[str, TileConfig] | None = None, compiled: dict | None = None):
    """(dq, dk, dv); ``compiled`` as in :func:`_forward` ("dkdv", "dq")."""
    mod, kw = _launch_common(geo, causal, q.dtype, precision, q.device)
    import triton

    do = _contiguous_last(do)
    # delta_i = rowsum(dO_i * O_i), laid out like lse. Memory-bound and tiny next to the kernels.
    delta = (do.float() * out.float()).sum(-1)
    delta = delta.transpose(0, 1).contiguous() if geo.varlen else delta.transpose(1, 2).contiguous()
    stride_lb, stride_lh = (0, lse.stride(0)) if geo.varlen else (lse.stride(0), lse.stride(1))
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
    cu_q_arg = cu_q if cu_q is not None else dummy
    cu_k_arg = cu_k if cu_k is not None else dummy
    qk_scale = scale * math.log2(math.e)
    group = geo.heads_q // geo.heads_kv
    # Operand parts are re-split here rather than saved: a cheap elementwise pass, and no extra memory held
    # between forward and backward.
    qp, kp, vp, dop = (split_operand(x, precision) for x in (q, k, v, do))
    strides_qkv_do = (*_part_strides(qp, geo.varlen), *_part_strides(kp, geo.varlen),
                      *_part_strides(vp, geo.varlen), *_part_strides(dop, geo.varlen))
    grid_kv = lambda meta: (triton.cdiv(geo.max_k, meta["BLOCK_N"]), geo.batch * geo.heads_kv)  # noqa: E731
    kernel_dkdv = mod.attn_bwd_dkdv_kernel[grid_kv](
        qp, kp, vp, dop, lse, delta, dk, dv, cu_q_arg, cu_k_arg, geo.seq_q, geo.seq_k, qk_scale, scale,
        *strides_qkv_do, *_bsh_strides(dk, geo.varlen), *_bsh_strides(dv, geo.varlen), stride_lb, stride_lh,
        geo.heads_kv, group, **kw, **_tile_kwargs(mod, "dkdv", kw, tiles))
    grid_q = lambda meta: (triton.cdiv(geo.max_q, meta["BLOCK_M"]), geo.batch * geo.heads_q)  # noqa: E731
    kernel_dq = mod.attn_bwd_dq_kernel[grid_q](
        qp, kp, vp, dop, lse, delta, dq, cu_q_arg, cu_k_arg, geo.seq_q, geo.seq_k, qk_scale, scale,
        *strides_qkv_do, *_bsh_strides(dq, geo.varlen), stride_lb, stride_lh,
        geo.heads_q, group, **kw, **_tile_kwargs(mod, "dq", kw, tiles))
    if compiled is not None:
        compiled.update(dkdv=kernel_dkdv, dq=kernel_dq)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, out, lse); backward is the FA2 recompute scheme."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, geo, causal, scale, precision, tiles):
        out, lse = _forward(q, k, v, cu_q, cu_k, geo, causal, scale, precision, tiles)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.meta = (geo, causal, scale, precision, tiles)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        geo, causal, scale, precision, tiles = ctx.meta
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, cu_q, cu_k, geo, causal, scale, precision, tiles)
        return dq, dk, dv, None, None, None, None, None, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                    precision: str = "bf16x3", softmax_scale: float | None = None,
                    cu_seqlens_k: torch.Tensor | None = None, max_seqlen_k: int | None = None,
                    tiles: dict[str, TileConfig] | None = None) -> torch.Tensor:
    """Flash attention with fp32 softmax statistics and selectable dot precision; differentiable.

    Shapes: batched ``q [B, Sq, Hq, D]``, ``k, v [B, Sk, Hkv, D]`` -> ``[B, Sq, Hq, D]``; packed
    (``cu_seqlens`` given) ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]`` -> ``[Tq, Hq, D]``. ``Hq`` must be a
    multiple of ``Hkv`` (GQA/MQA). Causal masks are bottom-right aligned when ``Sk > Sq`` (KV-cache decoding).

    Args:
        causal: mask future keys.
        cu_seqlens: int32/int64 ``[num_seqs + 1]`` cumulative lengths of the packed query sequences.
        max_seqlen: longest packed query sequence (computed with a host sync when omitted).
        precision: dot precision for fp32 inputs, one of :data:`PRECISIONS` (``bf16x6``, ``tf32x3``, ``ieee``
            are fp32-accurate, ``bf16x3`` ~1e-5 relative). 16-bit inputs always use 16-bit dots.
        softmax_scale: defaults to ``head_dim ** -0.5``.
        cu_seqlens_k / max_seqlen_k: packed key lengths when they differ from the queries' (default: same).
        tiles: ``{"fwd" | "dkdv" | "dq": TileConfig}`` launch configurations replacing the measured defaults of
            :mod:`deepscaler.kernels.tiles` (for tuning; kernels not named keep their default).
    """
    if cu_seqlens is None and cu_seqlens_k is not None:
        raise ValueError("cu_seqlens_k was given without cu_seqlens; pass both for packed inputs")
    cu_q = cu_k = None
    if cu_seqlens is not None:
        cu_q = _as_cu_seqlens(cu_seqlens, "cu_seqlens", q.device)
        cu_k = cu_q if cu_seqlens_k is None else _as_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q.device)
        if cu_seqlens_k is None:
            max_seqlen_k = max_seqlen
    q, k, v = _contiguous_last(q), _contiguous_last(k), _contiguous_last(v)
    geo = _validate(q, k, v, causal, cu_q, cu_k, max_seqlen, max_seqlen_k, precision)
    scale = float(softmax_scale) if softmax_scale is not None else geo.head_dim ** -0.5
    if tiles is not None:
        unknown = set(tiles) - {"fwd", "dkdv", "dq"}
        if unknown or not all(isinstance(t, TileConfig) for t in tiles.values()):
            raise ValueError(f"tiles must map 'fwd', 'dkdv', 'dq' to deepscaler.kernels.tiles.TileConfig, got {tiles!r}")
    return FlashAttentionFunction.apply(q, k, v, cu_q, cu_k, geo, causal, scale, precision, tiles)
