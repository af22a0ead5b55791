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

from deepscaler.kernels._flash_common import (  # noqa: F401 - INTERPRETED: the host reads it through this module
    INTERPRETED,
    _key_range,
    _load_parts,
    _mma,
    _mma_into,
    _split,
    _tile_program,
    _trans,
)


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
