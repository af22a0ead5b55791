"""Ahead-of-time compilation of the flash kernels for a CUDA target, without a GPU.

Triton ships ``ptxas`` and ``cuobjdump``, so the kernels can be compiled for sm80/sm90 on any machine. That
checks the GPU code path (the CPU interpreter accepts programs the compiler may reject) and reports what a GPU
run would need: registers per thread, spill stack, shared memory, and whether Hopper ``wgmma`` was emitted.
Used by ``benchmarks/attention_fp32.py --compile-report`` and by a CPU test.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from deepscaler.kernels.tiles import SWEEP_CANDIDATES

# triton and the kernel module (which imports triton at its top) are imported inside the functions that use them:
# triton is a heavy optional dependency.

KERNELS = ("fwd", "dkdv", "dq")
_OPERANDS = ("Q", "K", "V", "DO")  # operand parts: bf16 for the split precisions
_OUTPUTS = ("O", "DK", "DV", "DQ")
_STAT_POINTERS = ("LSE", "DELTA")
_FLOATS = ("qk_scale", "sm_scale")
# Per-block shared-memory limits (bytes) of the targets we report on.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


@dataclass
class CompileResult:
    """Resource usage of one compiled kernel variant (numbers from ptxas / the compiled binary)."""

    kernel: str  # "fwd", "dkdv" or "dq"
    precision: str  # precision constexpr ("native" for 16-bit inputs)
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    registers: int  # per thread, from cuobjdump
    spill_stack: int  # bytes of stack per thread; > 0 means register spills
    shared_bytes: int  # dynamic shared memory the launch needs
    tensor_core_ops: int  # wgmma (sm90) or mma.sync instructions in the PTX
    error: str = ""  # compiler error (e.g. out of shared memory); numbers are 0 then


def _kernel_fn(kernel: str):
    from deepscaler.kernels import _flash_kernels as mod

    jit = {"fwd": mod.attn_fwd_kernel, "dkdv": mod.attn_bwd_dkdv_kernel, "dq": mod.attn_bwd_dq_kernel}[kernel]
    return jit


def configs(kernel: str) -> list[tuple[int, int, int, int]]:
    """The sweep candidates of ``kernel`` (tiles.SWEEP_CANDIDATES) as (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    return [(c.block_m, c.block_n, c.num_warps, c.num_stages) for c in SWEEP_CANDIDATES[kernel]]


def _resources(cubin: bytes) -> tuple[int, int]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(cubin)
        path = handle.name
    try:
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)
    match = re.search(r"REG:(\d+).*?STACK:(\d+)", text)
    if match is None:
        raise RuntimeError(f"could not parse cuobjdump output: {text!r}")
    return int(match[1]), int(match[2])


def compile_kernel(kernel: str, precision: str, head_dim: int, block_m: int, block_n: int, num_warps: int,
                   num_stages: int, *, capability: int = 90, causal: bool = True, varlen: bool = False,
                   dtype: str = "fp32") -> CompileResult:
    """Compile one kernel variant for ``sm{capability}`` and report its resources.

    ``dtype`` is the q/k/v element type ("fp32", "bf16", "fp16"); 16-bit inputs use ``precision="native"``.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    fn = _kernel_fn(kernel)
    block_d = max(16, triton.next_power_of_2(head_dim))
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=causal, VARLEN=varlen, PRECISION=precision,
                      IN_DTYPE={"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[dtype],
                      BLOCK_M=block_m, BLOCK_N=block_n)
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _OPERANDS:
            signature[name] = "*bf16" if precision in ("bf16x3", "bf16x6") else f"*{dtype}"
        elif name in _OUTPUTS:
            signature[name] = f"*{dtype}"
        elif name in _STAT_POINTERS:
            signature[name] = "*fp32"
        elif name in ("cu_q", "cu_k"):
            signature[name] = "*i32"
        elif name in _FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    # What the JIT sees at run time for realistic shapes: 16-byte aligned pointers and strides/lengths that are
    # multiples of 16 (it specializes on that). Without it no load is vectorized or pipelined.
    aligned = [["tt.divisibility", 16]]
    attrs = {(i,): aligned for i, name in enumerate(fn.arg_names)
             if signature[name].startswith("*") or name.startswith(("stride_", "seq_len"))}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    base = dict(kernel=kernel, precision=precision, head_dim=head_dim, block_m=block_m, block_n=block_n,
                num_warps=num_warps, num_stages=num_stages)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as exc:  # noqa: BLE001 - report any compiler failure as data
        return CompileResult(**base, registers=0, spill_stack=0, shared_bytes=0, tensor_core_ops=0,
                             error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    registers, stack = _resources(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    mma = len(re.findall(r"wgmma\.mma_async|mma\.sync", ptx))
    return CompileResult(**base, registers=registers, spill_stack=stack, shared_bytes=compiled.metadata.shared,
                         tensor_core_ops=mma)
