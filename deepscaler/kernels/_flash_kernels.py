"""Triton kernels of the fp32-accurate flash attention (forward, dK/dV, dQ).

Import it lazily (through :func:`deepscaler.kernels.flash_attention`): importing it imports triton. On CPU it runs
only when ``TRITON_INTERPRET=1`` was set before triton was imported (see ``flash_attention.kernel_module``).

Operands: q, k, v (and dO) arrive as *part* tensors ``[PARTS, ...]``: for ``bf16x3``/``bf16x6`` the host has
split each fp32 tensor into 2/3 bf16 parts (``x ~ x0 + x1 (+ x2)``), otherwise ``PARTS=1`` holds the input
itself. Pre-split parts are loaded straight into shared memory as tensor-core operands (pipelined, no fp32
round trip through registers); only the tiles computed in the kernel (P, dS) are split here, by ``_split``.

Layout (all kernels): element ``(part, b, t, h, d)`` is at ``base + part*stride_p + b*stride_b + t*stride_t +
h*stride_h + d``. Batched inputs pass their batch stride and ``VARLEN=False``; packed inputs pass
``stride_b=0`` and ``VARLEN=True``, and sequence ``b`` starts at row ``cu_seqlens[b]``. Softmax statistics
(``LSE``, ``DELTA``) are fp32 ``[B, H, S]`` (batched) or ``[H, T]`` (packed) buffers addressed the same way.

Scores are kept in log2 units, ``s2 = (q . k) * softmax_scale * log2(e)``, so the softmax uses ``exp2`` and the
stored LSE is ``log2(sum exp2(s2))``. Causal masks are bottom-right aligned (key ``j`` is visible to query ``i``
iff ``j <= i + len_k - len_q``), as in FlashAttention >= 2.1, so decoding with a KV cache works.

Precision modes (``PRECISION`` constexpr) for every dot product:

* ``"ieee"`` / ``"tf32x3"``: ``tl.dot(..., input_precision=...)`` on fp32 operands.
* ``"bf16x3"``: ``a@b ~ a0.b0 + a0.b1 + a1.b0`` from 2-way bf16 splits (~16 mantissa bits, ~1e-5 relative).
* ``"bf16x6"``: 3-way splits, the six terms of order <= 2 (~24 bits: fp32-accurate).
* ``"native"``: 16-bit inputs; dots in the input dtype with fp32 accumulation (what FlashAttention does).

The bf16 split is written out (not ``input_precision="bf16x3"``) so that it is the same on every Triton version
and testable under the CPU interpreter.
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


def parts_for(precision: str) -> int:
    """Number of operand parts the host passes for ``precision``."""
    return {"bf16x3": 2, "bf16x6": 3}.get(precision, 1)


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


# ----------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(acc, l_i, m_i, q0, q1, q2, K, V, stride_kp, stride_kt, stride_vp, stride_vt, k_len, offs_m,
               offs_d, start, end, diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    for col in range(start, end, BLOCK_N):
        offs_n = col + tl.arange(0, BLOCK_N)
        n_ok = offs_n < k_len
        k0, k1, k2 = _load_parts(K + offs_n[None, :] * stride_kt + offs_d[:, None], n_ok[None, :] & d_ok[:, None],
                                 stride_kp, PRECISION)
        qk = _mma(q0, q1, q2, k0, k1, k2, tl.zeros((q0.shape[0], BLOCK_N), dtype=tl.float32), PRECISION)
        qk = qk * qk_scale
        if MASKED:
            keep = n_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v0, v1, v2 = _load_parts(V + offs_n[:, None] * stride_vt + offs_d[None, :], n_ok[:, None] & d_ok[None, :],
                                 stride_vp, PRECISION)
        p0, p1, p2 = _split(p, PRECISION, IN_DTYPE)
        acc = _mma_into(p0, p1, p2, v0, v1, v2, acc, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd_kernel(Q, K, V, O, LSE, cu_q, cu_k, seq_len_q, seq_len_k, qk_scale,  # noqa: E741 - O: the output
                    stride_qp, stride_qb, stride_qt, stride_qh, stride_kp, stride_kb, stride_kt, stride_kh,
                    stride_vp, stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
                    stride_lb, stride_lh, NUM_HEADS, GROUP,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                    PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program = one BLOCK_M query tile of one (sequence, query head). Grid: (cdiv(max_q, BLOCK_M), B*Hq)."""
    b, h, kv_h, q_start, q_len, k_start, k_len, row0, diag, live = _tile_program(
        cu_q, cu_k, seq_len_q, seq_len_k, NUM_HEADS, GROUP, BLOCK_M, VARLEN, False)
    if not live:
        return
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (offs_m < q_len)[:, None] & (offs_d < HEAD_DIM)[None, :]

    q_ptrs = Q + b * stride_qb + h * stride_qh + (q_start + offs_m[:, None]) * stride_qt + offs_d[None, :]
    q0, q1, q2 = _load_parts(q_ptrs, row_mask, stride_qp, PRECISION)
    K_seq = K + b * stride_kb + kv_h * stride_kh + k_start * stride_kt
    V_seq = V + b * stride_vb + kv_h * stride_vh + k_start * stride_vt

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    full_end, end = _key_range(row0, k_len, diag, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q0, q1, q2, K_seq, V_seq, stride_kp, stride_kt, stride_vp,
                               stride_vt, k_len, offs_m, offs_d, 0, full_end, diag, qk_scale, HEAD_DIM, BLOCK_N,
                               False, CAUSAL, PRECISION, IN_DTYPE)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q0, q1, q2, K_seq, V_seq, stride_kp, stride_kt, stride_vp,
                               stride_vt, k_len, offs_m, offs_d, full_end, end, diag, qk_scale, HEAD_DIM, BLOCK_N,
                               True, CAUSAL, PRECISION, IN_DTYPE)
    acc = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + (q_start + offs_m[:, None]) * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_mask)
    lse_ptrs = LSE + b * stride_lb + h * stride_lh + q_start + offs_m
    tl.store(lse_ptrs, m_i + tl.math.log2(l_i), mask=offs_m < q_len)


# ----------------------------------------------------------------------------------------------------------
# backward: dK/dV (one program per key tile, loops over the query tiles of every query head of its group)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _dkdv_inner(dk, dv, k0, k1, k2, v0, v1, v2, Q, DO, LSE, DELTA, stride_qp, stride_qt, stride_dop, stride_dot,
                q_len, offs_n, offs_d, start, end, diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                MASKED: tl.constexpr, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    for row in range(start, end, BLOCK_M):
        offs_m = row + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        qt0, qt1, qt2 = _load_parts(Q + offs_m[None, :] * stride_qt + offs_d[:, None], m_ok[None, :] & d_ok[:, None],
                                    stride_qp, PRECISION)
        # Rows past the sequence get LSE=+inf so their probabilities are exactly 0.
        lse = tl.load(LSE + offs_m, mask=m_ok, other=float("inf"))
        qkt = _mma(k0, k1, k2, qt0, qt1, qt2, tl.zeros((k0.shape[0], BLOCK_M), dtype=tl.float32), PRECISION)
        qkt = qkt * qk_scale
        if MASKED:
            qkt = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, qkt, float("-inf"))
        pt = tl.math.exp2(qkt - lse[None, :])
        do0, do1, do2 = _load_parts(DO + offs_m[:, None] * stride_dot + offs_d[None, :],
                                    m_ok[:, None] & d_ok[None, :], stride_dop, PRECISION)
        pt0, pt1, pt2 = _split(pt, PRECISION, IN_DTYPE)
        dv = _mma_into(pt0, pt1, pt2, do0, do1, do2, dv, PRECISION)
        dot0, dot1, dot2 = _trans(do0, do1, do2)
        dpt = _mma(v0, v1, v2, dot0, dot1, dot2, tl.zeros((v0.shape[0], BLOCK_M), dtype=tl.float32), PRECISION)
        delta = tl.load(DELTA + offs_m, mask=m_ok, other=0.0)
        dst = pt * (dpt - delta[None, :])
        ds0, ds1, ds2 = _split(dst, PRECISION, IN_DTYPE)
        q0, q1, q2 = _trans(qt0, qt1, qt2)
        dk = _mma_into(ds0, ds1, ds2, q0, q1, q2, dk, PRECISION)
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k, seq_len_q, seq_len_k, qk_scale, sm_scale,
                         stride_qp, stride_qb, stride_qt, stride_qh, stride_kp, stride_kb, stride_kt, stride_kh,
                         stride_vp, stride_vb, stride_vt, stride_vh, stride_dop, stride_dob, stride_dot, stride_doh,
                         stride_dkb, stride_dkt, stride_dkh, stride_dvb, stride_dvt, stride_dvh,
                         stride_lb, stride_lh, NUM_KV_HEADS, GROUP,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                         VARLEN: tl.constexpr, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(max_k, BLOCK_N), B*Hkv). GQA: the group's query heads are summed here, so no atomics."""
    b, _, kv_h, q_start, q_len, k_start, k_len, col0, diag, live = _tile_program(
        cu_q, cu_k, seq_len_q, seq_len_k, NUM_KV_HEADS, GROUP, BLOCK_N, VARLEN, True)
    if not live:
        return
    offs_n = col0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n < k_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k0, k1, k2 = _load_parts(K + b * stride_kb + kv_h * stride_kh + (k_start + offs_n[:, None]) * stride_kt
                             + offs_d[None, :], kv_mask, stride_kp, PRECISION)
    v0, v1, v2 = _load_parts(V + b * stride_vb + kv_h * stride_vh + (k_start + offs_n[:, None]) * stride_vt
                             + offs_d[None, :], kv_mask, stride_vp, PRECISION)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)

    # Query rows that see at least one key of this tile start at col0 - diag; rows from
    # col0 + BLOCK_N - 1 - diag on see all of them (no mask needed).
    if CAUSAL:
        row_lo = tl.maximum(col0 - diag, 0) // BLOCK_M * BLOCK_M
        row_full = tl.minimum(tl.maximum(col0 + BLOCK_N - 1 - diag + BLOCK_M - 1, 0) // BLOCK_M * BLOCK_M,
                              q_len)
        row_full = tl.maximum(row_full, row_lo)
    else:
        row_lo = 0
        row_full = 0
    for g in range(GROUP):
        h = kv_h * GROUP + g
        Q_seq = Q + b * stride_qb + h * stride_qh + q_start * stride_qt
        DO_seq = DO + b * stride_dob + h * stride_doh + q_start * stride_dot
        LSE_seq = LSE + b * stride_lb + h * stride_lh + q_start
        DELTA_seq = DELTA + b * stride_lb + h * stride_lh + q_start
        dk, dv = _dkdv_inner(dk, dv, k0, k1, k2, v0, v1, v2, Q_seq, DO_seq, LSE_seq, DELTA_seq, stride_qp,
                             stride_qt, stride_dop, stride_dot, q_len, offs_n, offs_d, row_lo, row_full, diag,
                             qk_scale, HEAD_DIM, BLOCK_M, True, PRECISION, IN_DTYPE)
        dk, dv = _dkdv_inner(dk, dv, k0, k1, k2, v0, v1, v2, Q_seq, DO_seq, LSE_seq, DELTA_seq, stride_qp,
                             stride_qt, stride_dop, stride_dot, q_len, offs_n, offs_d, row_full, q_len, diag,
                             qk_scale, HEAD_DIM, BLOCK_M, False, PRECISION, IN_DTYPE)
    dk = dk * sm_scale
    dk_ptrs = DK + b * stride_dkb + kv_h * stride_dkh + (k_start + offs_n[:, None]) * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + kv_h * stride_dvh + (k_start + offs_n[:, None]) * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


# ----------------------------------------------------------------------------------------------------------
# backward: dQ (one program per query tile, loops over key tiles like the forward)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _dq_inner(dq, q0, q1, q2, do0, do1, do2, lse, delta, K, V, stride_kp, stride_kt, stride_vp, stride_vt, k_len,
              offs_m, offs_d, start, end, diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    for col in range(start, end, BLOCK_N):
        offs_n = col + tl.arange(0, BLOCK_N)
        n_ok = offs_n < k_len
        t_mask = n_ok[None, :] & d_ok[:, None]
        kt0, kt1, kt2 = _load_parts(K + offs_n[None, :] * stride_kt + offs_d[:, None], t_mask, stride_kp, PRECISION)
        qk = _mma(q0, q1, q2, kt0, kt1, kt2, tl.zeros((q0.shape[0], BLOCK_N), dtype=tl.float32), PRECISION)
        qk = qk * qk_scale
        if MASKED:
            keep = n_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        p = tl.math.exp2(qk - lse[:, None])
        vt0, vt1, vt2 = _load_parts(V + offs_n[None, :] * stride_vt + offs_d[:, None], t_mask, stride_vp, PRECISION)
        dp = _mma(do0, do1, do2, vt0, vt1, vt2, tl.zeros((q0.shape[0], BLOCK_N), dtype=tl.float32), PRECISION)
        ds = p * (dp - delta[:, None])
        ds0, ds1, ds2 = _split(ds, PRECISION, IN_DTYPE)
        k0, k1, k2 = _trans(kt0, kt1, kt2)
        dq = _mma_into(ds0, ds1, ds2, k0, k1, k2, dq, PRECISION)
    return dq


@triton.jit
def attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k, seq_len_q, seq_len_k, qk_scale, sm_scale,
                       stride_qp, stride_qb, stride_qt, stride_qh, stride_kp, stride_kb, stride_kt, stride_kh,
                       stride_vp, stride_vb, stride_vt, stride_vh, stride_dop, stride_dob, stride_dot, stride_doh,
                       stride_dqb, stride_dqt, stride_dqh, stride_lb, stride_lh, NUM_HEADS, GROUP,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                       VARLEN: tl.constexpr, PRECISION: tl.constexpr, IN_DTYPE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(max_q, BLOCK_M), B*Hq). Each query tile owns its dQ rows, so no atomics."""
    b, h, kv_h, q_start, q_len, k_start, k_len, row0, diag, live = _tile_program(
        cu_q, cu_k, seq_len_q, seq_len_k, NUM_HEADS, GROUP, BLOCK_M, VARLEN, False)
    if not live:
        return
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    row_mask = m_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    q0, q1, q2 = _load_parts(Q + b * stride_qb + h * stride_qh + (q_start + offs_m[:, None]) * stride_qt
                             + offs_d[None, :], row_mask, stride_qp, PRECISION)
    do0, do1, do2 = _load_parts(DO + b * stride_dob + h * stride_doh + (q_start + offs_m[:, None]) * stride_dot
                                + offs_d[None, :], row_mask, stride_dop, PRECISION)
    lse = tl.load(LSE + b * stride_lb + h * stride_lh + q_start + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + b * stride_lb + h * stride_lh + q_start + offs_m, mask=m_ok, other=0.0)
    K_seq = K + b * stride_kb + kv_h * stride_kh + k_start * stride_kt
    V_seq = V + b * stride_vb + kv_h * stride_vh + k_start * stride_vt

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    full_end, end = _key_range(row0, k_len, diag, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _dq_inner(dq, q0, q1, q2, do0, do1, do2, lse, delta, K_seq, V_seq, stride_kp, stride_kt, stride_vp,
                   stride_vt, k_len, offs_m, offs_d, 0, full_end, diag, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL,
                   PRECISION, IN_DTYPE)
    dq = _dq_inner(dq, q0, q1, q2, do0, do1, do2, lse, delta, K_seq, V_seq, stride_kp, stride_kt, stride_vp,
                   stride_vt, k_len, offs_m, offs_d, full_end, end, diag, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL,
                   PRECISION, IN_DTYPE)
    dq = dq * sm_scale
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + (q_start + offs_m[:, None]) * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_mask)
