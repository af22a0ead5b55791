"""Helpers of ``benchmarks/device_check.py``: the GPU's measured ceilings, the pytest summary, the goals evaluated
from measured numbers, and the Markdown report.

    python -m benchmarks.device_report --ceiling ceiling.json     # bf16 matmul rate and copy bandwidth
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FP32_ACCURATE = ("ieee", "tf32x3", "bf16x6")


def measure_ceiling(path: Path) -> int:
    """bf16 8192^3 matmul TFLOP/s (random data) and device-to-device copy GB/s (bytes read + written)."""
    import torch
    from triton.testing import do_bench

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=50, rep=300)
    src = torch.randn(2**29 // 4 * 4, device="cuda")  # 2 GiB of fp32
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=200)
    result = {"bf16_matmul_tflops": 2 * 8192**3 / ms / 1e9,
              "copy_gb_s": 2 * src.numel() * 4 / copy_ms / 1e6}
    path.write_text(json.dumps(result))
    print(result)
    return 0


def pytest_summary(junit: Path) -> dict:
    """tests / failures / errors / skipped and the failing test names from a junit XML file."""
    if not junit.exists():
        return {"error": "no junit xml (pytest did not finish)"}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}: "
              f"{(case.find('failure') if case.find('failure') is not None else case.find('error')).get('message', '')[:300]}"
              for case in suite.iter("testcase") if case.find("failure") is not None or case.find("error") is not None]
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {
        "failed": failed, "time_s": float(suite.get("time", 0))}


def _result(report: dict, part: str) -> dict:
    return report.get("parts", {}).get(part, {}).get("result") or {}


def _attention_rows(report: dict) -> list[dict]:
    return [r for r in _result(report, "attention").get("rows", []) if "error" not in r]


def _best(rows: list[dict], modes: tuple[str, ...], key: str, seq: int, max_err: float) -> dict | None:
    ok = [r for r in rows if r["seq_len"] == seq and any(r["path"] == f"deepscaler_flash fp32 {m}" for m in modes)
          and r.get("relerr", 1.0) <= max_err and r.get(key) is not None]
    return max(ok, key=lambda r: r[key]) if ok else None


def evaluate_goals(report: dict) -> list[dict]:
    """Each goal with the measured value it is judged on (None: not measured in this run)."""
    rows = _attention_rows(report)
    goals = []

    def goal(name: str, value, target: str, met, where: str = "") -> None:
        goals.append({"goal": name, "measured": value, "target": target, "met": met, "from": where})

    measured = any(r["seq_len"] == 8192 and r["path"].startswith("deepscaler_flash") for r in rows)
    for name, modes, key, max_err, target in (
            ("kernel fp32-accurate fwd, S=8K", FP32_ACCURATE, "fwd_tflops", 1e-6, 120),
            ("kernel fp32-accurate fwd+bwd, S=8K", FP32_ACCURATE, "fwd_bwd_tflops", 1e-6, 80),
            ("kernel bf16x3 fwd, S=8K", ("bf16x3",), "fwd_tflops", 1e-5, 200)):
        best = _best(rows, modes, key, 8192, max_err)
        goal(name, best and round(best[key], 1), f">= {target} TFLOP/s (error <= {max_err:g})",
             (best is not None and best[key] >= target) if measured else None,
             best["path"] if best else ("no row within the error bound" if measured else ""))
    policy = _result(report, "policy")
    ours = next((r for r in policy.get("results", []) if r.get("kind") == "deepscaler" and not r.get("variant")
                 and r.get("policy") == "bf16-mixed" and "error" not in r), None)
    ratios = policy.get("ratios", {})
    mfu = ours and ours.get("mfu")
    goal("policy update bf16-mixed MFU", mfu and round(100 * mfu, 1), ">= 45 %",
         mfu >= 0.45 if mfu is not None else None)
    speed = ratios.get("bf16-mixed tokens/s deepscaler / plain")
    goal("policy update tokens/s vs plain loop", speed and round(speed, 2), ">= 1.5x",
         speed >= 1.5 if speed is not None else None)
    memory = ratios.get("bf16-mixed peak memory deepscaler / plain")
    goal("policy update peak memory vs plain loop", memory and round(memory, 2), "<= 0.6x",
         memory <= 0.6 if memory is not None else None)
    tests = report.get("parts", {}).get("pytest", {}).get("summary") or {}
    passed = None if "tests" not in tests else tests["failures"] + tests["errors"] == 0 and tests["skipped"] == 0
    goal("GPU kernel tests pass", tests.get("tests") and
         f"{tests['tests'] - tests['failures'] - tests['errors'] - tests['skipped']}/{tests['tests']} passed",
         "all", passed)
    doctor = _result(report, "doctor")
    checks = [(d["preset"], d["self_check"]["passed"]) for d in doctor.get("decisions", []) if d.get("self_check")]
    goal("doctor self-checks pass", (checks or None) and ", ".join(f"{p}: {'pass' if ok else 'FAIL'}" for p, ok in checks),
         "all", all(ok for _, ok in checks) if checks else None)
    return goals


def _f(value, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def markdown(report: dict) -> str:
    meta = report.get("meta", {})
    lines = [f"# Device check {meta.get('date_utc', '')}", "",
             f"{meta.get('gpu') or 'no GPU'} ({meta.get('capability', '-')}, {meta.get('memory_gib', '-')} GiB), "
             f"torch {meta.get('torch')}, CUDA {meta.get('cuda')}, triton {meta.get('triton')}, transformers "
             f"{meta.get('transformers')}; commit {meta.get('commit')}; {report.get('elapsed_s', '-')} s.", ""]
    ceiling = _result(report, "ceiling")
    if ceiling:
        lines += [f"Measured ceilings: bf16 8192^3 matmul {_f(ceiling.get('bf16_matmul_tflops'))} TFLOP/s, "
                  f"device copy {_f(ceiling.get('copy_gb_s'), '.0f')} GB/s.", ""]
    lines += ["## Goals", "", "| goal | measured | target | met | from |", "|---|---|---|---|---|"]
    for g in report.get("goals", []):
        met = {True: "yes", False: "no", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['measured'] if g['measured'] is not None else '-'} | {g['target']} | "
                     f"{met} | {g['from']} |")
    rows = _result(report, "attention").get("rows", [])
    if rows:
        lines += ["", "## Attention (causal, 12 q / 2 kv heads, head dim 128, batch 1)", "",
                  "| path | S | fwd TFLOP/s | fwd+bwd TFLOP/s | rel. error out | dq | dk | dv |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['path']} | {r['seq_len']} | {r['error'][:80]} | | | | | |")
                continue
            lines.append(f"| {r['path']} | {r['seq_len']} | {_f(r.get('fwd_tflops'))} | "
                         f"{_f(r.get('fwd_bwd_tflops'))} | {_f(r.get('relerr'), '.1e')} | "
                         f"{_f(r.get('dq_relerr'), '.1e')} | {_f(r.get('dk_relerr'), '.1e')} | "
                         f"{_f(r.get('dv_relerr'), '.1e')} |")
    sweep = _result(report, "sweep")
    if sweep.get("rows"):
        lines += ["", "## Tile sweep (S = 8K): best per kernel and precision", "",
                  "| precision | kernel | tiles (M x N, warps, stages) | ms | regs | spills |", "|---|---|---|---|---|---|"]
        for mode, kernels in sweep.get("best", {}).items():
            for kernel, tiles in kernels.items():
                row = next(r for r in sweep["rows"] if r["mode"] == mode and r["kernel"] == kernel
                           and tuple(r["tiles"]) == tuple(tiles))
                lines.append(f"| {mode} | {kernel} | {row['tiles_str']} | {_f(row.get('ms'), '.3f')} | "
                             f"{row.get('n_regs')} | {row.get('n_spills')} |")
    policy = _result(report, "policy")
    if policy.get("results"):
        lines += ["", "## Policy update (R1-Distill-Qwen-1.5B geometry, random weights)", "",
                  "| update | policy | attention | s/update | tokens/s | TFLOP/s | MFU | peak GiB | predicted GiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in policy["results"]:
            if "error" in r:
                lines.append(f"| {r['kind']} | {r.get('policy')} | error: {r['error'][:100]} | | | | | | |")
                continue
            kind = r["kind"] + (f" ({r['variant']})" if r.get("variant") else "")
            lines.append(f"| {kind} | {r['policy']} | {r['attention']} | {_f(r['median_step_s'], '.3f')} | "
                         f"{_f(r['tokens_per_s'], '.0f')} | {_f(r['achieved_tflops'])} | "
                         f"{_f(100 * r['mfu'] if r.get('mfu') is not None else None)} | "
                         f"{_f((r['peak_bytes'] or 0) / 2**30)} | "
                         f"{_f(r['predicted_peak_bytes']['total'] / 2**30)} |")
        for key, value in policy.get("ratios", {}).items():
            lines.append(f"\n{key}: {value:.2f}")
    lines += ["", "## Parts", "", "| part | exit | seconds |", "|---|---|---|"]
    for name, part in report.get("parts", {}).items():
        lines.append(f"| {name} | {part.get('rc')} | {part.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ceiling", type=Path, required=True, help="write the measured ceilings here")
    return measure_ceiling(parser.parse_args(argv).ceiling)


if __name__ == "__main__":
    sys.exit(main())
