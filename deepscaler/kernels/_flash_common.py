"""Device helpers shared by the flash-attention kernels of ``_flash_kernels.py``: split-precision dot products
(the ``bf16x3`` / ``bf16x6`` / ``ieee`` / ``tf32x3`` / ``native`` modes described there) and the sequence
bookkeeping of batched and packed (varlen) inputs, causal key ranges and tile scheduling.

Imported with ``_flash_kernels`` (importing it imports triton); see that module for the operand layout.
"""

from __future__ import annotations

import triton
import triton.language as tl

# True when triton runs kernels in its CPU interpreter. Checked on triton's own ``tl.zeros`` too: if triton was
# imported before TRITON_INTERPRET=1 was set, its standard library is compiled-only and cannot be interpreted.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret) and not isinstance(tl.zeros, triton.runtime.jit.JITFunction)
# The interpreter multiplies bf16 tiles as raw uint16 bit patterns (triton 3.9 ``create_dot``), so there each
# low-precision operand is widened to fp32 first. bf16*bf16 products are exact in fp32, so this computes
# exactly what a bf16 tensor-core dot with fp32 accumulation computes, up to summation order.
_WIDEN_LOW_PRECISION_DOTS = tl.constexpr(INTERPRETED)


# ----------------------------------------------------------------------------------------------------------
# split-precision dot products
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _load_parts(ptrs, mask, stride_p, PRECISION: tl.constexpr):
    """Load the operand parts of one tile: ``(x0, x1, x2)``, unused parts repeated (and never read)."""
    x0 = tl.load(ptrs, mask=mask, other=0.0)
    if PRECISION == "bf16x3":
        x1 = tl.load(ptrs + stride_p, mask=mask, other=0.0)
        return x0, x1, x1
    elif PRECISION == "bf16x6":
        x1 = tl.load(ptrs + stride_p, mask=mask, other=0.0)
        x2 = tl.load(ptrs + 2 * stride_p, mask=mask, other=0.0)
        return x0, x1, x2
    else:
        return x0, x0, x0


@triton.jit
def _to_bf16(x):
    """fp32 -> bf16, round to nearest even. The interpreter's own cast truncates, so there it is done on the
    bits (exact for finite values) to compute what the GPU's ``cvt.rn.bf16.f32`` computes."""
    if _WIDEN_LOW_PRECISION_DOTS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def _split(x, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr):
    """Split an fp32 tile computed in the kernel (P, dS) into operand parts, as the host splits inputs."""
    if PRECISION == "bf16x3":
        x0 = _to_bf16(x)
        x1 = _to_bf16(x - x0.to(tl.float32))
        return x0, x1, x1
    elif PRECISION == "bf16x6":
        x0 = _to_bf16(x)
        rest = x - x0.to(tl.float32)
        x1 = _to_bf16(rest)
        x2 = _to_bf16(rest - x1.to(tl.float32))
        return x0, x1, x2
    elif PRECISION == "native":
        y = x.to(IN_DTYPE)
        return y, y, y
    else:
        return x, x, x


@triton.jit
def _trans(x0, x1, x2):
    return tl.trans(x0), tl.trans(x1), tl.trans(x2)


@triton.jit
def _dot_lp(a, b, acc):
    """``acc + a @ b`` for 16-bit tiles with fp32 accumulation."""
    if _WIDEN_LOW_PRECISION_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _mma(a0, a1, a2, b0, b1, b2, acc, PRECISION: tl.constexpr):
    """``acc + a @ b`` in fp32 from operand parts, accumulated in place; the small terms go first."""
    if PRECISION == "bf16x3":
        acc = _dot_lp(a1, b0, acc)
        acc = _dot_lp(a0, b1, acc)
        return _dot_lp(a0, b0, acc)
    elif PRECISION == "bf16x6":
        acc = _dot_lp(a1, b1, acc)
        acc = _dot_lp(a0, b2, acc)
        acc = _dot_lp(a2, b0, acc)
        acc = _dot_lp(a0, b1, acc)
        acc = _dot_lp(a1, b0, acc)
        return _dot_lp(a0, b0, acc)
    elif PRECISION == "native":
        return _dot_lp(a0, b0, acc)
    else:
        return tl.dot(a0, b0, acc, input_precision=PRECISION)


@triton.jit
def _mma_into(a0, a1, a2, b0, b1, b2, acc, PRECISION: tl.constexpr):
    """``acc + a @ b`` for a long-lived accumulator (the output, dK, dV, dQ), which sums thousands of tiles.

    Tensor cores accumulate with truncation (Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ
    Comput. Sci. 2021), so chaining every tile's split product into one accumulator biases the sum: bf16x6
    reached 1.4e-5 relative error at S = 8K on an H200 (and dK 5.9e-5 at 2K) instead of ~1e-7. So the split
    modes multiply each tile into a fresh zero accumulator and add it in fp32 (round to nearest); the other
    modes accumulate in place (16-bit inputs as FlashAttention does: their error is the inputs' rounding)."""
    if PRECISION == "bf16x3" or PRECISION == "bf16x6":
        return acc + _mma(a0, a1, a2, b0, b1, b2, tl.zeros(acc.shape, dtype=tl.float32), PRECISION)
    else:
        return _mma(a0, a1, a2, b0, b1, b2, acc, PRECISION)


# ----------------------------------------------------------------------------------------------------------
# sequence bookkeeping
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _seq_bounds(cu_q, cu_k, b, seq_len_q, seq_len_k, VARLEN: tl.constexpr):
    """(first row of sequence b in the token axis, its query length, first key row, key length)."""
    if VARLEN:
        q_start = tl.load(cu_q + b)
        q_len = tl.load(cu_q + b + 1) - q_start
        k_start = tl.load(cu_k + b)
        k_len = tl.load(cu_k + b + 1) - k_start
    else:
        q_start = 0
        q_len = seq_len_q
        k_start = 0
        k_len = seq_len_k
    return q_start, q_len, k_start, k_len


@triton.jit
def _key_range(row0, k_len, diag, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key columns a query tile starting at ``row0`` visits: ``[0, full_end)`` need no mask, ``[full_end, end)``
    need the causal and/or length mask. Tiles above the diagonal are never visited (causal early exit)."""
    if CAUSAL:
        end = tl.minimum(k_len, row0 + BLOCK_M + diag)
        full_end = tl.minimum(end, row0 + diag + 1) // BLOCK_N * BLOCK_N
    else:
        end = k_len
        full_end = k_len // BLOCK_N * BLOCK_N
    return full_end, end


@triton.jit
def _tile_program(cu_q, cu_k, seq_len_q, seq_len_k, NUM_HEADS, GROUP, BLOCK: tl.constexpr, VARLEN: tl.constexpr,
                  OVER_KEYS: tl.constexpr):
    """The prologue all three kernels share: which (sequence, head, tile) this program owns.

    Grid axis 0 walks tiles of BLOCK rows (query rows, or key rows when ``OVER_KEYS``), axis 1 (sequence,
    head) pairs over ``NUM_HEADS`` heads. Returns ``(b, h, kv_h, q_start, q_len, k_start, k_len, row0, diag,
    live)``: ``h`` is the query head (the KV head itself when ``OVER_KEYS``), ``row0`` the tile's first row,
    ``diag = k_len - q_len`` the causal offset, ``live`` whether the tile starts inside its sequence (programs of
    shorter sequences in a packed batch have nothing to do)."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    q_start, q_len, k_start, k_len = _seq_bounds(cu_q, cu_k, b, seq_len_q, seq_len_k, VARLEN)
    row0 = pid_t * BLOCK
    if OVER_KEYS:
        kv_h = h
        live = row0 < k_len
    else:
        kv_h = h // GROUP
        live = row0 < q_len
    return b, h, kv_h, q_start, q_len, k_start, k_len, row0, k_len - q_len, live
