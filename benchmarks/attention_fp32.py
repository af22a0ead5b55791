"""fp32 attention on a GPU: deepscaler's Triton flash kernel vs PyTorch's fp32 paths, side by side.

Measures TFLOP/s (median of ``triton.testing.do_bench``) and relative error against a float64 reference for

* ``deepscaler_flash`` fp32 in each precision (ieee, tf32x3, bf16x6, bf16x3), and on bf16 inputs;
* SDPA EFFICIENT fp32 (K/V repeated: it has no GQA), SDPA MATH fp32, FlexAttention fp32 (compiled, default
  IEEE precision);
* SDPA FLASH and cuDNN in bf16 as the speed reference,

for causal attention in Qwen2-1.5B geometry (12 query heads, 2 KV heads, head dim 128) at S = 2K, 8K, 16K,
forward and forward+backward. Prints a table with speed ratios to SDPA EFFICIENT fp32 and writes JSON.

    python benchmarks/attention_fp32.py                      # GPU run (writes attention_fp32.json)
    python benchmarks/attention_fp32.py --cpu-smoke          # no GPU: tiny run under Triton's interpreter
    python benchmarks/attention_fp32.py --compile-report     # no GPU: compile every tile config for sm90
    python benchmarks/attention_fp32.py --tiles-json tile_sweep.json   # ours with benchmarks/tile_sweep.py's best

FLOPs: forward = 4*B*Hq*S^2*D / 2 (causal), forward+backward = 3.5 x forward. relerr = ||out - ref||_F /
||ref||_F against float64 attention of the same (rounded) inputs; gradients likewise for S <= --grad-check-max.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

OURS_PRECISIONS = ("ieee", "tf32x3", "bf16x6", "bf16x3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12, help="query heads (Qwen2-1.5B: 12)")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (Qwen2-1.5B: 2)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--non-causal", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    parser.add_argument("--paths", nargs="+", default=None, help="subset of path names to run")
    parser.add_argument("--grad-check-max", type=int, default=4096,
                        help="measure gradient error against float64 up to this S (materializes S x S)")
    parser.add_argument("--out", type=Path, default=Path("attention_fp32.json"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny correctness run under the interpreter")
    parser.add_argument("--compile-report", action="store_true",
                        help="compile every autotune config with ptxas (no GPU) and report registers/spills")
    parser.add_argument("--arch", type=int, default=90, help="--compile-report target, e.g. 80 or 90")
    parser.add_argument("--precisions", nargs="+", default=list(OURS_PRECISIONS) + ["native"],
                        help="--compile-report precisions ('native' = bf16 inputs)")
    parser.add_argument("--device", default="cuda",
                        help="cpu: rehearse the GPU code path under TRITON_INTERPRET=1 (timings meaningless)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop starting new measurements after this many seconds (partial results are kept)")
    parser.add_argument("--tiles-json", type=Path, default=None,
                        help="a benchmarks/tile_sweep.py output: run our kernel with its best tiles per precision")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# float64 reference
# ----------------------------------------------------------------------------------------------------------
def reference_attention(q, k, v, causal: bool, chunk: int = 1024):
    """float64 attention, chunked over queries. q [B,S,Hq,D], k/v [B,S,Hkv,D] -> [B,S,Hq,D] float64."""
    import torch

    group = q.shape[2] // k.shape[2]
    k64 = k.double().repeat_interleave(group, dim=2).transpose(1, 2)
    v64 = v.double().repeat_interleave(group, dim=2).transpose(1, 2)
    q64 = q.double().transpose(1, 2)
    seq_q, seq_k = q.shape[1], k.shape[1]
    out = torch.empty_like(q64)
    scale = q.shape[-1] ** -0.5
    for start in range(0, seq_q, chunk):
        scores = q64[:, :, start:start + chunk] @ k64.transpose(-1, -2) * scale
        if causal:
            rows = torch.arange(start, min(start + chunk, seq_q), device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(seq_k, device=q.device)[None, :] > rows + seq_k - seq_q,
                                        float("-inf"))
        out[:, :, start:start + chunk] = scores.softmax(-1) @ v64
    return out.transpose(1, 2)


def relative_error(x, ref) -> float:
    return float((x.detach().double() - ref.detach()).norm() / ref.detach().norm())


# ----------------------------------------------------------------------------------------------------------
# attention paths: each maps (q, k, v) in [B, S, H, D] layout to [B, S, Hq, D]
# ----------------------------------------------------------------------------------------------------------
def load_best_tiles(path: Path | None) -> dict[str, dict]:
    """precision -> {kernel: TileConfig} from a benchmarks/tile_sweep.py JSON ("best"); {} without one."""
    if path is None:
        return {}
    from deepscaler.kernels.tiles import TileConfig

    best = json.loads(path.read_text()).get("best", {})
    return {precision: {kernel: TileConfig(*cfg) for kernel, cfg in kernels.items()}
            for precision, kernels in best.items()}


def build_paths(causal: bool, best_tiles: dict[str, dict] | None = None) -> dict[str, tuple[str, object]]:
    """name -> (input dtype, fn). Each fn takes q [B,S,Hq,D], k/v [B,S,Hkv,D]. ``best_tiles``: precision ->
    tile override of our kernel ("native" for bf16 inputs)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from deepscaler.kernels import flash_attention

    best_tiles = best_tiles or {}

    def ours(precision, tiles_key=None):
        tiles = best_tiles.get(tiles_key or precision)
        return lambda q, k, v: flash_attention(q, k, v, causal=causal, precision=precision, tiles=tiles)

    def sdpa(backend, repeat_kv: bool):
        def run(q, k, v):
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            if repeat_kv:
                group = qt.shape[1] // kt.shape[1]
                kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=not repeat_kv)
            return out.transpose(1, 2)
        return run

    flex_cache: dict = {}

    def flex(q, k, v):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if "fn" not in flex_cache:
            flex_cache["fn"] = torch.compile(flex_attention)
        key = (q.shape[1], k.shape[1])
        if key not in flex_cache:
            flex_cache[key] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, q.shape[1], k.shape[1],
                                                device=q.device) if causal else None
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        return flex_cache["fn"](qt, kt, vt, block_mask=flex_cache[key], enable_gqa=True).transpose(1, 2)

    paths: dict[str, tuple[str, object]] = {f"deepscaler_flash fp32 {p}": ("float32", ours(p)) for p in
                                            OURS_PRECISIONS}
    paths["deepscaler_flash bf16"] = ("bfloat16", ours("bf16x3", "native"))
    paths["SDPA EFFICIENT fp32 (KV repeated)"] = ("float32", sdpa(SDPBackend.EFFICIENT_ATTENTION, True))
    paths["SDPA MATH fp32"] = ("float32", sdpa(SDPBackend.MATH, False))
    paths["SDPA FLASH bf16"] = ("bfloat16", sdpa(SDPBackend.FLASH_ATTENTION, False))
    paths["SDPA cuDNN bf16"] = ("bfloat16", sdpa(SDPBackend.CUDNN_ATTENTION, False))
    paths["Flex fp32 (IEEE)"] = ("float32", flex)  # last: its first call compiles (tens of seconds)
    return paths


def run_gpu(args: argparse.Namespace) -> int:
    import torch

    causal = not args.non_causal
    started = time.perf_counter()
    paths = build_paths(causal, load_best_tiles(args.tiles_json))
    if args.paths:
        paths = {name: paths[name] for name in args.paths}
    device = torch.device(args.device)
    rows = []
    for seq in args.seqlens:
        gen = torch.Generator(device=device).manual_seed(seq)
        base = [torch.randn(args.batch, seq, h, args.head_dim, device=device, generator=gen)
                for h in (args.heads, args.kv_heads, args.kv_heads)]
        grad_out = torch.randn(args.batch, seq, args.heads, args.head_dim, device=device, generator=gen)
        fwd_flops = 4 * args.batch * args.heads * seq * seq * args.head_dim / (2 if causal else 1)
        refs: dict[str, object] = {}
        for name, (dtype_name, fn) in paths.items():
            dtype = getattr(torch, dtype_name)
            q, k, v = (x.to(dtype) for x in base)
            row = {"path": name, "dtype": dtype_name, "seq_len": seq}
            if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
                row["error"] = f"skipped: --time-budget {args.time_budget:.0f} s spent"
                rows.append(row)
                continue
            try:
                if dtype_name not in refs:  # reference from the same rounded inputs
                    refs[dtype_name] = reference_attention(q, k, v, causal)
                row.update(measure_path(fn, q, k, v, grad_out.to(dtype), refs[dtype_name], fwd_flops, causal,
                                        args.modes, grad_check=seq <= args.grad_check_max))
            except Exception as exc:  # noqa: BLE001 - an unsupported path is a result, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                torch.cuda.empty_cache()
            rows.append(row)
            print(format_row(row), flush=True)
            write_json(args, rows, causal, partial=True)
    add_ratios(rows)
    print_table(rows)
    write_json(args, rows, causal, partial=False)
    print(f"wrote {args.out}")
    return 0


def write_json(args: argparse.Namespace, rows: list[dict], causal: bool, partial: bool) -> None:
    import torch
    import triton

    gpu = args.device == "cuda"
    meta = dict(device=torch.cuda.get_device_name() if gpu else args.device,
                capability=torch.cuda.get_device_capability() if gpu else None,
                torch=torch.__version__, triton=triton.__version__, batch=args.batch, heads=args.heads,
                kv_heads=args.kv_heads, head_dim=args.head_dim, causal=causal, partial=partial,
                tiles=str(args.tiles_json) if args.tiles_json else "deepscaler.kernels.tiles.DEFAULT_TILES")
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def bench_ms(fn, device_type: str, grad_to_none=None, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on a GPU; on CPU (rehearsals only) a few
    wall-clock runs."""
    if device_type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return sorted(times)[1]


def measure_path(fn, q, k, v, grad_out, ref, fwd_flops: float, causal: bool, modes: list[str],
                 grad_check: bool) -> dict:
    """Error vs float64 and median times of one attention path (forward and/or forward+backward)."""
    def do_bench(f, grad_to_none=None):
        return bench_ms(f, q.device.type, grad_to_none)

    row = {"relerr": relative_error(fn(q, k, v), ref)}
    if "fwd" in modes:
        ms = do_bench(lambda: fn(q, k, v))
        row.update(fwd_ms=ms, fwd_tflops=fwd_flops / ms / 1e9)
    if "fwd_bwd" in modes:
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        ms = do_bench(lambda: fn(qg, kg, vg).backward(grad_out), grad_to_none=[qg, kg, vg])
        row.update(fwd_bwd_ms=ms, fwd_bwd_tflops=3.5 * fwd_flops / ms / 1e9)
        if grad_check:
            row.update(grad_relerr(fn, q, k, v, grad_out, causal))
    return row


def grad_relerr(fn, q, k, v, grad_out, causal: bool) -> dict[str, float]:
    """Relative errors of dq, dk, dv against float64 autograd through materialized attention."""
    import torch

    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    fn(qg, kg, vg).backward(grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference_attention(q64, k64, v64, causal, chunk=1 << 30).backward(grad_out.double())
    result = {f"{name}_relerr": relative_error(ours.grad, ref.grad)
              for name, ours, ref in (("dq", qg, q64), ("dk", kg, k64), ("dv", vg, v64))}
    del q64, k64, v64
    torch.cuda.empty_cache()
    return result


def add_ratios(rows: list[dict]) -> None:
    """Speed ratio of every row to SDPA EFFICIENT fp32 at the same S (measured in the same run)."""
    base = {r["seq_len"]: r for r in rows if r["path"].startswith("SDPA EFFICIENT fp32") and "error" not in r}
    for row in rows:
        ref = base.get(row["seq_len"])
        for mode in ("fwd", "fwd_bwd"):
            if ref and f"{mode}_ms" in row and f"{mode}_ms" in ref:
                row[f"{mode}_speedup_vs_efficient_fp32"] = ref[f"{mode}_ms"] / row[f"{mode}_ms"]


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['path']:<36} S={row['seq_len']:<6} {row['error']}"
    return (f"{row['path']:<36} S={row['seq_len']:<6} fwd {_fmt(row.get('fwd_tflops'), '7.1f')} TFLOP/s  "
            f"fwd+bwd {_fmt(row.get('fwd_bwd_tflops'), '7.1f')} TFLOP/s  relerr {_fmt(row.get('relerr'), '.1e')}")


def print_table(rows: list[dict]) -> None:
    header = (f"{'path':<36} {'S':>6} {'fwd TF/s':>9} {'x EFF':>6} {'f+b TF/s':>9} {'x EFF':>6} "
              f"{'relerr':>8} {'dq err':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['path']:<36} {row['seq_len']:>6}  {row['error'][:70]}")
            continue
        print(f"{row['path']:<36} {row['seq_len']:>6} {_fmt(row.get('fwd_tflops'), '9.1f')} "
              f"{_fmt(row.get('fwd_speedup_vs_efficient_fp32'), '6.2f')} {_fmt(row.get('fwd_bwd_tflops'), '9.1f')} "
              f"{_fmt(row.get('fwd_bwd_speedup_vs_efficient_fp32'), '6.2f')} {_fmt(row.get('relerr'), '8.1e')} "
              f"{_fmt(row.get('dq_relerr'), '8.1e')}")


# ----------------------------------------------------------------------------------------------------------
# no-GPU modes
# ----------------------------------------------------------------------------------------------------------
def run_cpu_smoke(args: argparse.Namespace) -> int:
    """Correctness of every precision on a tiny GQA shape under Triton's CPU interpreter (timings meaningless)."""
    import torch

    from deepscaler.kernels import flash_attention

    causal = not args.non_causal
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 48, 4, 32, generator=gen)
    k, v = (torch.randn(1, 48, 2, 32, generator=gen) for _ in range(2))
    grad_out = torch.randn(1, 48, 4, 32, generator=gen)
    ref = reference_attention(q, k, v, causal)
    print(f"{'precision':<10} {'relerr out':>10} {'dq':>9} {'dk':>9} {'dv':>9} {'seconds':>8} (interpreter)")
    for precision in OURS_PRECISIONS:
        start = time.perf_counter()
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
        out = flash_attention(qg, kg, vg, causal=causal, precision=precision)
        out.backward(grad_out)
        q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
        reference_attention(q64, k64, v64, causal).backward(grad_out.double())
        errs = [relative_error(out, ref)] + [relative_error(a.grad, b.grad) for a, b in
                                             ((qg, q64), (kg, k64), (vg, v64))]
        print(f"{precision:<10} " + " ".join(f"{e:9.1e}" for e in errs) + f" {time.perf_counter() - start:8.1f}")
    return 0


def run_compile_report(args: argparse.Namespace) -> int:
    from deepscaler.kernels import aot

    limit = aot.SHARED_LIMIT.get(args.arch)
    results = []
    print(f"{'kernel':<5} {'precision':<8} {'D':>4} {'tile':>8} {'warps':>5} {'stages':>6} {'regs':>5} "
          f"{'spill B':>7} {'smem KiB':>8} {'mma':>4}  note")
    for kernel in aot.KERNELS:
        for precision in args.precisions:
            for cfg in aot.configs(kernel):
                res = aot.compile_kernel(kernel, precision, args.head_dim, *cfg, capability=args.arch,
                                         causal=not args.non_causal,
                                         dtype="bf16" if precision == "native" else "fp32")
                note = res.error or ("exceeds shared memory" if limit and res.shared_bytes > limit else
                                     ("spills" if res.spill_stack else "ok"))
                results.append({**res.__dict__, "note": note})
                print(f"{kernel:<5} {precision:<8} {args.head_dim:>4} {res.block_m:>4}x{res.block_n:<3} "
                      f"{res.num_warps:>5} {res.num_stages:>6} {res.registers:>5} {res.spill_stack:>7} "
                      f"{res.shared_bytes / 1024:>8.0f} {res.tensor_core_ops:>4}  {note}", flush=True)
    args.out.write_text(json.dumps({"arch": args.arch, "head_dim": args.head_dim, "results": results}, indent=1))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        # Must precede the first triton import: triton picks compile vs interpret when kernels are defined.
        os.environ["TRITON_INTERPRET"] = "1"
        return run_cpu_smoke(args)
    if args.compile_report:
        if args.out == Path("attention_fp32.json"):
            args.out = Path(f"attention_fp32_compile_sm{args.arch}_d{args.head_dim}.json")
        return run_compile_report(args)
    if args.device == "cpu":  # before triton is imported: it picks compile vs interpret then
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/attention_fp32.py needs a CUDA GPU for timings (none found). Without one, run "
              "--cpu-smoke (interpreter correctness) or --compile-report (ptxas resource report).")
        return 0
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
