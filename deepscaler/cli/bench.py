"""`deepscaler bench attention`: every available attention backend x dtype x sequence length.

Causal attention in the Qwen2-1.5B head geometry (12 query heads, 2 KV heads, head dim 128) by default. For
each cell: forward and forward+backward time (median), TFLOP/s (forward = 4*B*H*S^2*D/2 for causal, fwd+bwd =
3.5x forward, the convention of the reference measurements), and max / relative error against float64 on the
same rounded inputs. Writes a rich table, ``attention_bench.json`` and ``attention_bench.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deepscaler.precision.policy import to_torch_dtype
from deepscaler.precision.probe import probe_environment
from deepscaler.precision.selfcheck import (
    allowed_mask,
    compare,
    make_inputs,
    reference_attention,
    run_backend,
)

# torch is imported inside the functions that use it, matplotlib inside plot(): `deepscaler --help` imports this
# module to build its parser and must stay free of torch; matplotlib is a heavy optional dependency.

CPU_LENGTHS = (128, 256)
GPU_LENGTHS = (1024, 2048, 4096, 8192)
SDPA_SUB = {"sdpa:math": "MATH", "sdpa:flash": "FLASH_ATTENTION", "sdpa:efficient": "EFFICIENT_ATTENTION",
            "sdpa:cudnn": "CUDNN_ATTENTION"}


def register(subparsers: Any) -> None:
    """Add ``bench`` with sub-command ``attention``."""
    parser = subparsers.add_parser("bench", help="micro-benchmarks (attention backends)")
    targets = parser.add_subparsers(dest="bench_target", required=True)
    attention = targets.add_parser(
        "attention", help="time and check every attention backend x dtype x length",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    attention.add_argument("--lengths", type=_int_list, default=None,
                           help=f"sequence lengths (default CPU {CPU_LENGTHS}, GPU {GPU_LENGTHS})")
    attention.add_argument("--dtypes", type=_str_list, default=None,
                           help="dtypes (default CPU float32,bfloat16; GPU bfloat16,float16,float32)")
    attention.add_argument("--backends", type=_str_list, default=None,
                           help="backends (default: all available; e.g. sdpa,eager,sdpa:efficient,flash_attention_2)")
    attention.add_argument("--iters", type=int, default=None, help="timed iterations (default CPU 3, GPU 20)")
    attention.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations")
    attention.add_argument("--batch", type=int, default=None, help="batch size (default CPU 1, GPU 4)")
    attention.add_argument("--heads", type=int, default=12, help="query heads (Qwen2-1.5B: 12)")
    attention.add_argument("--kv-heads", type=int, default=2, help="key/value heads (Qwen2-1.5B: 2)")
    attention.add_argument("--head-dim", type=int, default=128, help="head dim (Qwen2-1.5B: 128)")
    attention.add_argument("--no-backward", action="store_true", help="forward only")
    attention.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    attention.add_argument("--out", type=Path, default=Path("runs/bench_attention"), help="output folder")
    attention.set_defaults(func=run)
    parser.set_defaults(func=run)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def available_backends(device: str) -> list[str]:
    """Backends runnable here: transformers implementations + SDPA sub-kernels forced one at a time."""

    if device != "cuda":
        return ["eager", "sdpa", "sdpa:math"]  # CPU: keep the default run under a minute on small machines
    env = probe_environment()
    names = ["eager", "sdpa", "sdpa:math", "sdpa:flash", "sdpa:efficient", "sdpa:cudnn", "flex_attention"]
    if env.flash_attn_version:
        names.append("flash_attention_2")
    if env.flash_attn_3_version:
        names.append("flash_attention_3")
    if env.deepscaler_kernel_available:
        names.append("deepscaler_flash")
    return names


def causal_flops(batch: int, heads: int, seq_len: int, head_dim: int) -> float:
    """Forward FLOPs of causal attention: two S x S x D matmuls, half masked."""
    return 4.0 * batch * heads * seq_len * seq_len * head_dim / 2


def _timed(fn, device: str, iters: int, warmup: int) -> float:
    """Median milliseconds of ``fn()``."""
    import torch

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _kernel_context(backend: str):
    if backend in SDPA_SUB:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, SDPA_SUB[backend]))
    return contextlib.nullcontext()


def _reference(q, k, v):
    """float64 causal reference, one head at a time to bound memory."""
    import torch

    seq_len = q.shape[2]
    allowed = allowed_mask(None, 1, seq_len, q.device)
    groups = q.shape[1] // k.shape[1]
    outs = []
    for b in range(q.shape[0]):
        heads = [reference_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h // groups:h // groups + 1],
                                     v[b:b + 1, h // groups:h // groups + 1], allowed) for h in range(q.shape[1])]
        outs.append(torch.cat(heads, dim=2))
    return torch.cat(outs, dim=0)


def bench_cell(backend: str, dtype_name: str, seq_len: int, *, batch: int, heads: int, kv_heads: int,
               head_dim: int, device: str, iters: int, warmup: int, backward: bool,
               inputs: tuple | None = None) -> dict[str, Any]:
    """Measure one (backend, dtype, length); failures are recorded in ``status``, never raised.
    ``inputs`` = (q, k, v, float64 reference) shared across backends of the same dtype and length."""
    import torch

    row: dict[str, Any] = {"backend": backend, "dtype": dtype_name, "seq_len": seq_len, "batch": batch,
                           "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "device": device}
    impl = "sdpa" if backend in SDPA_SUB else backend
    if inputs is None:
        q, k, v = make_inputs(batch, seq_len, heads, kv_heads, head_dim, to_torch_dtype(dtype_name), device)
        inputs = (q, k, v, _reference(q, k, v))
    q, k, v, ref = inputs
    flops = causal_flops(batch, heads, seq_len, head_dim)
    try:
        with _kernel_context(backend), torch.no_grad():
            out = run_backend(impl, q, k, v, poison=False)
            row["fwd_ms"] = _timed(lambda: run_backend(impl, q, k, v, poison=False), device, iters, warmup)
        row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
        rel, max_abs, finite = compare(out, ref)
        row.update(rel_err=rel, max_abs_err=max_abs, finite=finite)
        if backward:
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            grad = torch.randn_like(out)

            def step():
                o = run_backend(impl, qg, kg, vg, poison=False)
                o.backward(grad)

            with _kernel_context(backend):
                row["fwd_bwd_ms"] = _timed(step, device, iters, warmup)
            row["fwd_bwd_tflops"] = 3.5 * flops / (row["fwd_bwd_ms"] * 1e-3) / 1e12
        row["status"] = "ok"
    except Exception as exc:  # an unsupported combination is a result, e.g. SDPA FLASH + fp32
        row["status"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return row


def bench_attention(backends: list[str], dtypes: list[str], lengths: list[int], *, batch: int, heads: int,
                    kv_heads: int, head_dim: int, device: str, iters: int, warmup: int,
                    backward: bool) -> list[dict[str, Any]]:
    """All cells, sorted backend-major; inputs and the float64 reference are built once per (dtype, length)."""
    rows = []
    for d in dtypes:
        for s in lengths:
            q, k, v = make_inputs(batch, s, heads, kv_heads, head_dim, to_torch_dtype(d), device)
            shared = (q, k, v, _reference(q, k, v))
            rows += [bench_cell(b, d, s, batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                device=device, iters=iters, warmup=warmup, backward=backward, inputs=shared)
                     for b in backends]
    order = {b: i for i, b in enumerate(backends)}
    return sorted(rows, key=lambda r: (order[r["backend"]], dtypes.index(r["dtype"]), r["seq_len"]))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], title: str) -> None:

    table = Table(title=title)
    for column in ("backend", "dtype", "S", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s",
                   "rel err", "max err", "status"):
        table.add_column(column, justify="left" if column in ("backend", "dtype", "status") else "right")
    for r in rows:
        table.add_row(r["backend"], r["dtype"], str(r["seq_len"]), _fmt(r.get("fwd_ms"), ".3f"),
                      _fmt(r.get("fwd_tflops"), ".3f"), _fmt(r.get("fwd_bwd_ms"), ".3f"),
                      _fmt(r.get("fwd_bwd_tflops"), ".3f"), _fmt(r.get("rel_err"), ".1e"),
                      _fmt(r.get("max_abs_err"), ".1e"), r["status"])
    Console(width=200).print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """TFLOP/s vs sequence length, one line per backend/dtype; forward and forward+backward panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], "fwd_tflops", "forward"), (axes[1], "fwd_bwd_tflops", "forward+backward")):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["status"] == "ok" and r.get(key) is not None:
                series.setdefault(f"{r['backend']} {r['dtype']}", []).append((r["seq_len"], r[key]))
        for name, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"causal attention, {label}")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "bench_target", None) != "attention":
        print("usage: deepscaler bench attention [options]")
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device == "cuda"
    lengths = args.lengths or list(GPU_LENGTHS if on_gpu else CPU_LENGTHS)
    dtypes = args.dtypes or (["bfloat16", "float16", "float32"] if on_gpu else ["float32", "bfloat16"])
    backends = args.backends or available_backends(device)
    iters = args.iters or (20 if on_gpu else 3)
    batch = args.batch or (4 if on_gpu else 1)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows measure exact fp32, never silent TF32
    rows = bench_attention(backends, dtypes, lengths, batch=batch, heads=args.heads, kv_heads=args.kv_heads,
                           head_dim=args.head_dim, device=device, iters=iters, warmup=args.warmup,
                           backward=not args.no_backward)
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    title = (f"causal attention on {name}: B={batch} Hq={args.heads} Hkv={args.kv_heads} D={args.head_dim}, "
             f"median of {iters}")
    print_table(rows, title)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": name, "torch": torch.__version__, "batch": batch, "iters": iters, "title": title}
    (args.out / "attention_bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, args.out / "attention_bench.png")
    print(f"wrote {args.out / 'attention_bench.json'} and {args.out / 'attention_bench.png'}")
    return 0
