"""Time every tile candidate of the flash kernels on a GPU and report the best per kernel and precision.

For each precision (fp32 inputs in ieee / tf32x3 / bf16x6 / bf16x3, and bf16 inputs: "native") and each kernel
(forward, dK/dV, dQ) it launches every ``deepscaler.kernels.tiles.SWEEP_CANDIDATES`` entry at one sequence length
(causal, Qwen2-1.5B geometry by default) and records: median milliseconds (``triton.testing.do_bench``), TFLOP/s,
registers per thread and spilled registers as the compiled kernel reports them (``n_regs``, ``n_spills``), shared
memory, and an error check (forward: relative error vs float64; backward: relative difference of dq/dk/dv to the
default tiles' gradients, which catches a broken variant). A backward candidate is timed as the whole backward
with the other backward kernel at its default, so the differences between candidates are that kernel's.

Every variant is compiled first in ``--compile-workers`` parallel processes on small inputs with the same
specialisation (triton's on-disk cache then serves the timed run), so compilation does not eat the time budget.

    python benchmarks/tile_sweep.py --seq-len 8192 --out tile_sweep.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

MODES = ("ieee", "tf32x3", "bf16x6", "bf16x3", "native")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--kernels", nargs="+", default=["fwd", "dkdv", "dq"], choices=["fwd", "dkdv", "dq"])
    parser.add_argument("--compile-workers", type=int, default=12)
    parser.add_argument("--compile-only", action="store_true", help="only fill triton's cache (parallel)")
    parser.add_argument("--no-precompile", action="store_true", help="skip the parallel compile (cache filled)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; later variants are skipped")
    parser.add_argument("--device", default="cuda",
                        help="cpu: rehearse the code path under TRITON_INTERPRET=1 (tiny, timings meaningless)")
    parser.add_argument("--out", type=Path, default=Path("tile_sweep.json"))
    return parser.parse_args(argv)


def _inputs(mode: str, seq: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0, device: str = "cuda"):
    import torch

    dtype = torch.bfloat16 if mode == "native" else torch.float32
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, seq, heads, head_dim, device=device, generator=gen).to(dtype)
    k, v = (torch.randn(1, seq, kv_heads, head_dim, device=device, generator=gen).to(dtype) for _ in range(2))
    grad = torch.randn(1, seq, heads, head_dim, device=device, generator=gen).to(dtype)
    return q, k, v, grad


def _precision(mode: str) -> str:
    return "bf16x3" if mode == "native" else mode  # ignored for bf16 inputs (the kernel runs "native")


def _call(mode, q, k, v, grad, kernel, tiles, compiled=None):
    """Run the forward (and backward for dkdv/dq) with ``tiles``; returns (out, lse, grads or None)."""
    fa = importlib.import_module("deepscaler.kernels.flash_attention")  # the package exports a function so named

    geo = fa._validate(q, k, v, True, None, None, None, None, _precision(mode))
    scale = q.shape[-1] ** -0.5
    out, lse = fa._forward(q, k, v, None, None, geo, True, scale, _precision(mode), tiles, compiled)
    if kernel == "fwd":
        return out, lse, None
    grads = fa._backward(grad, q, k, v, out, lse, None, None, geo, True, scale, _precision(mode), tiles, compiled)
    return out, lse, grads


def compile_job(job: tuple[str, str, tuple[int, int, int, int]], shape: tuple[int, int, int],
                device: str = "cuda") -> dict:
    """Worker: compile (and launch once on a small sequence) one variant; an error is returned, not raised."""
    import os

    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from deepscaler.kernels.tiles import TileConfig

    mode, kernel, cfg = job
    started = time.perf_counter()
    try:
        q, k, v, grad = _inputs(mode, 256 if device == "cuda" else 32, *shape, device=device)
        _call(mode, q, k, v, grad, kernel, {kernel: TileConfig(*cfg)})
        if device == "cuda":
            torch.cuda.synchronize()
        return {"job": job, "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result
        return {"job": job, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def compile_all(jobs: list, shape: tuple[int, int, int], workers: int, device: str = "cuda") -> dict:
    """Compile every job in parallel processes (spawned: each has its own CUDA context)."""
    import multiprocessing

    errors: dict = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(compile_job, job, shape, device) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            if "error" in result:
                errors[tuple(result["job"][:2]) + (tuple(result["job"][2]),)] = result["error"]
                print(f"  does not compile: {result['job']}: {result['error']}", flush=True)
    print(f"compiled {len(jobs)} variants in {time.perf_counter() - started:.1f} s with {workers} workers "
          f"({len(errors)} failed)", flush=True)
    return errors


def _relerr(x, ref) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":  # before triton is imported: it picks compile vs interpret then
        import os

        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/tile_sweep.py needs a CUDA GPU (none found); nothing measured.")
        return 0
    import triton

    from benchmarks.attention_fp32 import bench_ms

    def do_bench(fn, warmup: int, rep: int) -> float:
        return bench_ms(fn, args.device, warmup=warmup, rep=rep)

    from benchmarks.attention_fp32 import reference_attention
    from deepscaler.kernels.tiles import SWEEP_CANDIDATES, choose_tiles

    started = time.perf_counter()
    shape = (args.heads, args.kv_heads, args.head_dim)
    defaults = [(m, kern, astuple(choose_tiles(kern, "native" if m == "native" else m, args.head_dim)[0]))
                for m in args.modes for kern in ("fwd", "dkdv", "dq")]
    jobs = [(m, kern, astuple(c)) for m in args.modes for kern in args.kernels for c in SWEEP_CANDIDATES[kern]]
    compile_errors: dict = {}
    if not args.no_precompile:
        compile_all(list(dict.fromkeys(defaults)), shape, args.compile_workers, args.device)  # every job needs them
        compile_errors = compile_all([j for j in jobs if j not in defaults], shape, args.compile_workers,
                                     args.device)
    if args.compile_only:
        return 0

    seq = args.seq_len
    fwd_flops = 4 * args.heads * seq * seq * args.head_dim / 2
    rows: list[dict] = []
    meta = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                torch=torch.__version__, triton=triton.__version__,
                seq_len=seq, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim, causal=True,
                flops="fwd 4*Hq*S^2*D/2; bwd 2.5 x fwd")
    for mode in args.modes:
        q, k, v, grad = _inputs(mode, seq, *shape, seed=1, device=args.device)
        ref_out = reference_attention(q, k, v, causal=True) if "fwd" in args.kernels else None
        _, _, ref_grads = _call(mode, q, k, v, grad, "dq", None)
        for kernel in args.kernels:
            for cfg in SWEEP_CANDIDATES[kernel]:
                row = {"mode": mode, "kernel": kernel, "tiles": astuple(cfg), "tiles_str": str(cfg)}
                rows.append(row)
                error = compile_errors.get((mode, kernel, astuple(cfg)))
                if error:
                    row["error"] = error
                    continue
                if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
                    row["error"] = "skipped: time budget spent"
                    continue
                row.update(measure(mode, kernel, cfg, q, k, v, grad, ref_out, ref_grads, fwd_flops, do_bench))
                print(format_row(row), flush=True)
                write(args.out, meta, rows)
        del q, k, v, grad, ref_out, ref_grads
        torch.cuda.empty_cache()
    write(args.out, meta, rows)
    print_best(rows)
    return 0


def astuple(cfg) -> tuple[int, int, int, int]:
    return (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)


def measure(mode, kernel, cfg, q, k, v, grad, ref_out, ref_grads, fwd_flops, do_bench) -> dict:
    """Time one variant; read its compiled resources; check its result."""
    tiles = {kernel: cfg}
    compiled: dict = {}
    try:
        out, _, grads = _call(mode, q, k, v, grad, kernel, tiles, compiled)
        if kernel == "fwd":
            ms = do_bench(lambda: _call(mode, q, k, v, grad, "fwd", tiles), warmup=10, rep=60)
            check = {"relerr": _relerr(out, ref_out)}
            flops = fwd_flops
        else:
            fwd_ms = do_bench(lambda: _call(mode, q, k, v, grad, "fwd", None), warmup=10, rep=40)
            ms = do_bench(lambda: _call(mode, q, k, v, grad, kernel, tiles), warmup=10, rep=60) - fwd_ms
            check = {f"{n}_diff_vs_default": _relerr(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, ref_grads,
                                                                               strict=True)}
            flops = 2.5 * fwd_flops
    except Exception as exc:  # noqa: BLE001 - out of resources etc.
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    kern = compiled.get(kernel)
    resources = {"n_regs": getattr(kern, "n_regs", None), "n_spills": getattr(kern, "n_spills", None),
                 "shared_bytes": getattr(getattr(kern, "metadata", None), "shared", None)}
    finite = all(math.isfinite(x) for x in check.values())
    return {"ms": ms, "tflops": flops / ms / 1e9 if ms > 0 else None, **resources, **check, "finite": finite}


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['mode']:<7} {row['kernel']:<5} {row['tiles_str']:<16} {row['error']}"
    err = row.get("relerr", row.get("dq_diff_vs_default"))
    return (f"{row['mode']:<7} {row['kernel']:<5} {row['tiles_str']:<16} {row['ms']:8.3f} ms "
            f"{row['tflops'] or 0:7.1f} TFLOP/s  regs {row['n_regs']} spills {row['n_spills']} "
            f"smem {(row['shared_bytes'] or 0) / 1024:.0f} KiB  err {err:.1e}")


def best_per_mode(rows: list[dict]) -> dict[str, dict[str, tuple]]:
    """mode -> kernel -> fastest valid tiles (finite, and forward error within the mode's class)."""
    limit = {"ieee": 1e-6, "tf32x3": 1e-6, "bf16x6": 1e-6, "bf16x3": 1e-5, "native": 2e-2}
    best: dict[str, dict[str, tuple]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for kernel in ("fwd", "dkdv", "dq"):
            ok = [r for r in rows if r["mode"] == mode and r["kernel"] == kernel and "ms" in r and r["finite"]
                  and r.get("relerr", 0.0) <= limit[mode]
                  and all(r.get(f"{n}_diff_vs_default", 0.0) <= 10 * limit[mode] for n in ("dq", "dk", "dv"))]
            if ok:
                best.setdefault(mode, {})[kernel] = tuple(min(ok, key=lambda r: r["ms"])["tiles"])
    return best


def write(path: Path, meta: dict, rows: list[dict]) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": rows, "best": best_per_mode(rows)}, indent=1, default=str))


def print_best(rows: list[dict]) -> None:
    print("\nbest tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) per precision:")
    for mode, kernels in best_per_mode(rows).items():
        cells = []
        for kernel, tiles in kernels.items():
            row = next(r for r in rows if r["mode"] == mode and r["kernel"] == kernel and tuple(r["tiles"]) == tiles)
            cells.append(f"{kernel} {tiles} {row['ms']:.3f} ms ({row['tflops']:.0f} TF/s, spills {row['n_spills']})")
        print(f"  {mode:<7} " + " | ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
