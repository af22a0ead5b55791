"""Launch configurations (tiles, warps, pipeline stages) of the flash kernels: a measured table, no autotuning.

Each kernel launches with one fixed :class:`TileConfig` per (kernel, precision, head-dim class), chosen by
:func:`choose_tiles` with its reason. A fixed table instead of ``triton.autotune`` means one compilation per
variant (the autotuner compiled and timed every candidate on the first call of every new shape key), and a
launch that is the same on every run. ``benchmarks/tile_sweep.py`` times the candidates
(:data:`SWEEP_CANDIDATES`) on a GPU and prints the best; ``DEFAULT_TILES`` holds what it measured.
The one override: ``flash_attention(..., tiles={"fwd": TileConfig(...), ...})``.
"""

from __future__ import annotations

from dataclasses import dataclass

KERNELS: tuple[str, ...] = ("fwd", "dkdv", "dq")
"""The three kernels: forward, backward over key tiles (dK/dV), backward over query tiles (dQ)."""


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration. fwd/dq: BLOCK_M query rows stay resident, BLOCK_N key rows stream; dkdv: BLOCK_N
    key rows stay resident, BLOCK_M query rows stream."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def launch_kwargs(self) -> dict[str, int]:
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, num_warps=self.num_warps,
                    num_stages=self.num_stages)

    def __str__(self) -> str:
        return f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"


def _t(m: int, n: int, w: int, s: int) -> TileConfig:
    return TileConfig(m, n, w, s)


# Head dim <= 128. Precision "native" = 16-bit inputs. Timed with benchmarks/tile_sweep.py on one H200 (triton 3.6,
# causal, S = 8K, 12 q / 2 kv heads, 2026-12-04): the fastest candidate of each (kernel, precision), except
# native fwd, where 128x128 was 10 % faster at 8K but 40 % slower at 2K than 128x64, which is kept. tf32x3 was
# not swept (triton's own decomposition; 34 TFLOP/s forward at 8K with these): its tiles and ieee's dq come from
# the sm90 ptxas report (largest tiles that fit 227 KiB of shared memory without spills).
DEFAULT_TILES: dict[tuple[str, str], TileConfig] = {
    ("fwd", "native"): _t(128, 64, 8, 2), ("fwd", "bf16x3"): _t(128, 64, 8, 2),
    ("fwd", "bf16x6"): _t(128, 32, 8, 2), ("fwd", "tf32x3"): _t(128, 32, 8, 2), ("fwd", "ieee"): _t(64, 32, 4, 2),
    ("dkdv", "native"): _t(64, 64, 8, 2), ("dkdv", "bf16x3"): _t(32, 64, 4, 2), ("dkdv", "bf16x6"): _t(32, 64, 4, 2),
    ("dkdv", "tf32x3"): _t(32, 64, 4, 2), ("dkdv", "ieee"): _t(64, 64, 8, 2),
    ("dq", "native"): _t(64, 64, 4, 2), ("dq", "bf16x3"): _t(64, 64, 4, 2), ("dq", "bf16x6"): _t(64, 32, 4, 2),
    ("dq", "tf32x3"): _t(64, 32, 4, 2), ("dq", "ieee"): _t(64, 32, 4, 2),
}
MEASURED: frozenset[tuple[str, str]] = frozenset(
    {(k, p) for k in ("fwd", "dkdv", "dq") for p in ("native", "bf16x3", "bf16x6")} | {("fwd", "ieee"), ("dkdv", "ieee")})
"""Entries of :data:`DEFAULT_TILES` chosen from GPU timings (the others from the compiler's resource report)."""

# Head dim 129..256: registers and shared memory per row double, so the tiles halve.
LARGE_HEAD_TILES: dict[str, TileConfig] = {"fwd": _t(64, 32, 4, 2), "dkdv": _t(16, 32, 4, 2), "dq": _t(32, 32, 4, 2)}
# Triton's CPU interpreter: small fixed tiles keep tests on tiny shapes fast (no compilation there).
INTERPRETER_TILES = _t(16, 16, 4, 1)

SWEEP_CANDIDATES: dict[str, tuple[TileConfig, ...]] = {
    "fwd": (_t(128, 64, 8, 2), _t(128, 32, 8, 2), _t(64, 64, 4, 2), _t(128, 128, 8, 2), _t(64, 32, 4, 2)),
    "dkdv": (_t(32, 64, 4, 2), _t(64, 64, 8, 2), _t(16, 64, 4, 2), _t(32, 128, 8, 2)),
    "dq": (_t(64, 32, 4, 2), _t(64, 64, 4, 2), _t(128, 32, 8, 2), _t(32, 64, 4, 2)),
}
"""Candidates ``benchmarks/tile_sweep.py`` times per kernel and precision (head dim 128). Each variant takes
tens of seconds to compile for sm90 (bf16x6 most), so the list is short."""


def choose_tiles(kernel: str, precision: str, head_dim: int, interpreted: bool = False,
                 override: dict[str, TileConfig] | None = None) -> tuple[TileConfig, str]:
    """(tile config, reason) for one launch.

    Args:
        kernel: one of :data:`KERNELS`. precision: the kernel's PRECISION constexpr ("native" for 16-bit inputs).
        head_dim: the model's head dim (<= 256). interpreted: Triton's CPU interpreter is running.
        override: ``{kernel: TileConfig}`` from ``flash_attention(tiles=...)``; wins when it names ``kernel``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if override and kernel in override:
        return override[kernel], "tiles= override"
    if interpreted:
        return INTERPRETER_TILES, "Triton CPU interpreter: small fixed tiles"
    if head_dim > 128:
        return LARGE_HEAD_TILES[kernel], f"head dim {head_dim} > 128: halved tiles"
    key = (kernel, precision)
    if key not in DEFAULT_TILES:
        raise ValueError(f"no tile config for kernel {kernel!r} and precision {precision!r}")
    source = ("chosen from tile-sweep timings on an H200 (S = 8K)" if key in MEASURED
              else "largest sm90 tiles without spills (not timed)")
    return DEFAULT_TILES[key], f"{source}, head dim <= 128"
