"""The GPU device check: kernel tests, tile sweep, attention benchmark, policy update and doctor in one run.

Runs each part as a subprocess with its own time limit inside an overall budget, keeps going when a part fails,
and rewrites one JSON (``device_check.json``) and one Markdown summary (``device_check.md``) after every part, so
a run cut short still leaves what it measured. Without a CUDA GPU every GPU part reports itself skipped (the CPU
rehearsal checks that the script and its imports work).

    PYTHONPATH=. python benchmarks/device_check.py --out-dir results/        # or scripts/device_check.sh

Parts: (1) ``pytest tests/kernels/test_flash_attention_gpu.py`` (run beside (2a), which only compiles);
(2) ``benchmarks/tile_sweep.py`` at S = 8K; (3) ``benchmarks/attention_fp32.py`` at S = 8K and 2K with the sweep's
best tiles; (4) ``python -m deepscaler doctor``; (5) ``benchmarks/policy_update.py``. Goals are evaluated from
the measured numbers only (``goals`` in the JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.device_report import evaluate_goals, markdown, pytest_summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("device_check"))
    parser.add_argument("--work-dir", type=Path, default=None, help="parts' own files (default: out-dir/parts)")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole check")
    parser.add_argument("--commit", default=os.environ.get("DEVICE_CHECK_COMMIT", "unknown"))
    parser.add_argument("--parts", nargs="+", default=["pytest", "sweep", "attention", "policy", "doctor"])
    parser.add_argument("--compile-workers", type=int, default=10)
    parser.add_argument("--sweep-modes", nargs="+", default=["bf16x3", "bf16x6", "native"],
                        help="tile sweep precisions (ieee is far off the goals and slow to time; tf32x3 is "
                             "triton's own decomposition)")
    return parser.parse_args(argv)


# part -> time limit in seconds (each also stops at the overall budget)
LIMITS = {"ceiling": 15, "pytest": 150, "sweep_compile": 140, "sweep": 60, "attention": 90, "doctor": 45,
          "policy": 100}


class Check:
    """Runs parts, records their results and rewrites the report after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.out = args.out_dir
        self.work = args.work_dir or args.out_dir / "parts"
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "device_check.log", "a", buffering=1)  # noqa: SIM115 - closed in finish()
        self.report: dict = {"meta": self.meta(), "parts": {}}

    def meta(self) -> dict:
        import torch

        info = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": self.args.commit, "python": sys.version.split()[0], "torch": torch.__version__,
                "cuda": torch.version.cuda, "gpu": None}
        try:
            import transformers
            import triton

            info.update(transformers=transformers.__version__, triton=triton.__version__)
        except ImportError as exc:
            info["import_error"] = str(exc)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, capability=f"sm{props.major}{props.minor}",
                        memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
        return info

    def remaining(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def say(self, text: str) -> None:
        line = f"[{time.perf_counter() - self.started:6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def start(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen, float, object]:
        self.say(f"part {name}: {' '.join(cmd)}")
        handle = open(self.work / f"{name}.txt", "w")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=False)
        return proc, time.perf_counter(), handle

    def wait(self, name: str, job: tuple, limit: float, result_file: Path | None = None) -> dict:
        proc, began, handle = job
        timeout = max(5.0, min(limit, self.remaining()) - (time.perf_counter() - began))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = f"killed after {time.perf_counter() - began:.0f} s (limit)"
        handle.close()
        text = (self.work / f"{name}.txt").read_text(errors="replace")
        self.log.write(text)
        entry: dict = {"rc": rc, "seconds": round(time.perf_counter() - began, 1), "tail": text[-2500:]}
        if result_file is not None and result_file.exists():
            try:
                entry["result"] = json.loads(result_file.read_text())
            except json.JSONDecodeError as exc:
                entry["result_error"] = str(exc)
        self.report["parts"][name] = entry
        self.say(f"part {name}: rc={rc} in {entry['seconds']} s")
        self.write()
        return entry

    def run(self, name: str, cmd: list[str], result_file: Path | None = None) -> dict:
        if self.remaining() < 10:
            self.report["parts"][name] = {"rc": "skipped: overall budget spent"}
            self.write()
            return self.report["parts"][name]
        return self.wait(name, self.start(name, cmd), LIMITS[name], result_file)

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.report["goals"] = evaluate_goals(self.report)
        (self.out / "device_check.json").write_text(json.dumps(self.report, indent=1, default=str))
        (self.out / "device_check.md").write_text(markdown(self.report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    check = Check(args)
    gpu = torch.cuda.is_available()
    py = sys.executable
    check.say(f"device check on {check.report['meta'].get('gpu') or 'CPU (GPU parts skipped)'}, budget "
              f"{args.budget:.0f} s, commit {args.commit}")
    if not gpu:
        check.report["parts"] = {p: {"rc": "skipped: no CUDA GPU"} for p in args.parts}
    sweep_json, attn_json = check.work / "tile_sweep.json", check.work / "attention_fp32.json"
    policy_json, doctor_json = check.work / "policy_update.json", check.work / "doctor.json"
    if gpu:
        check.run("ceiling", [py, "-m", "benchmarks.device_report", "--ceiling", str(check.work / "ceiling.json")],
                  check.work / "ceiling.json")
    pytest_job = None
    if gpu and "pytest" in args.parts:
        workers = ["-n", "6"] if _has("xdist") else []
        pytest_job = check.start("pytest", [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *workers,
                                            "tests/kernels/test_flash_attention_gpu.py",
                                            f"--junitxml={check.work / 'pytest.xml'}"])
    if gpu and "sweep" in args.parts:  # compile beside the tests (CPU work), time after them (GPU alone)
        check.run("sweep_compile", [py, "-m", "benchmarks.tile_sweep", "--compile-only", "--compile-workers",
                                    str(args.compile_workers), "--modes", *args.sweep_modes, "--out",
                                    str(sweep_json)])
    if pytest_job is not None:
        entry = check.wait("pytest", pytest_job, LIMITS["pytest"])
        entry["summary"] = pytest_summary(check.work / "pytest.xml")
        check.write()
    if gpu and "sweep" in args.parts:
        check.run("sweep", [py, "-m", "benchmarks.tile_sweep", "--no-precompile", "--seq-len", "8192",
                            "--modes", *args.sweep_modes,
                            "--time-budget", str(LIMITS["sweep"] - 10), "--out", str(sweep_json)], sweep_json)
    if gpu and "attention" in args.parts:
        tiles = ["--tiles-json", str(sweep_json)] if sweep_json.exists() else []
        check.run("attention", [py, "benchmarks/attention_fp32.py", "--seqlens", "8192", "2048", *tiles,
                                "--time-budget", str(LIMITS["attention"] - 20), "--out", str(attn_json)], attn_json)
    if "doctor" in args.parts:  # runs on CPU too (the rehearsal checks it imports and reports)
        cmd = [py, "-m", "deepscaler", "doctor", "--json", str(doctor_json)] + ([] if gpu else ["--no-self-check"])
        check.run("doctor", cmd, doctor_json)
    if gpu and "policy" in args.parts:
        check.run("policy", [py, "benchmarks/policy_update.py", "--variants", "tf32-head", "head-chunk-4096",
                             "--out", str(policy_json)], policy_json)
    check.write()
    check.say(f"wrote {check.out / 'device_check.json'} and device_check.md in {check.report['elapsed_s']} s")
    print(markdown(check.report))
    check.log.close()
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
