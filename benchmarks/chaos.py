"""Chaos benchmark: a GRPO run killed with ``kill -9`` at random moments and resumed each time ends exactly as the
run that was never interrupted; an injected engine death and an injected non-finite step are survived too.

1. Reference: the run from start to end, uninterrupted (with the same injected non-finite step, which skips
   one optimizer step and so is part of the trajectory).
2. Chaos: the same command started again and again in a fresh run directory; each start is killed (SIGKILL) at a
   chosen point — inside a rollout, a reward phase, a log-prob pass, an update, a weight sync, a validation, or
   between the files of a checkpoint — after a random delay, and the next start resumes (``resume=auto``). One
   rollout-engine death is injected as well. A last start runs to the end.
3. Compared: every checkpoint's weights (bitwise), and every metrics row apart from timings, throughput and the
   fault counters; data loss = a metrics row missing or duplicated, or a checkpoint missing or unreadable.

The run is the CPU demo's GRPO phase in size (tiny Qwen2 policy, 16 prompts x 8 samples, 64-token responses,
arithmetic prompts, fp32 on CPU), with a toy reward with signal (the response starts with a letter) instead of
the demo's supervised warm-up, and fewer steps so that 1 + kills + 1 starts fit a 2-core machine.

Run: ``python benchmarks/chaos.py --kills 10 [--steps 12] [--seed 0] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IGNORED_PREFIXES = ("timing_s/", "throughput/", "faults/")
# (trace point, description); the kill lands at the point after a random delay within the phase
KILL_POINTS = [
    ("rollout", "inside a rollout"), ("update", "inside an update"), ("sync", "inside a weight sync"),
    ("validation", "inside a validation"), ("checkpoint:optimizer", "between checkpoint files (weights written)"),
    ("reward", "inside a reward phase"), ("checkpoint:state", "between checkpoint files (before the state file)"),
    ("old_logprob", "inside a log-prob pass"), ("checkpoint:publish", "before a checkpoint's rename"),
    ("checkpoint:rng", "between checkpoint files (optimizer written)"),
]
SHORT_PHASE_S = 0.05
CHECKPOINT_POINTS = {"checkpoint:model", "checkpoint:optimizer", "checkpoint:rng", "checkpoint:state",
                     "checkpoint:publish"}


# ----------------------------------------------------------------------------------------------- the child run
def letter_first(responses: list[str], problems: list) -> list[float]:
    """Toy reward with signal for an untrained policy: 1 when the response starts with an ASCII letter."""
    return [1.0 if text[:1].isascii() and text[:1].isalpha() else 0.0 for text in responses]


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch

    torch.set_num_threads(1)
    from deepscaler.data.arithmetic import ArithmeticTaskConfig, sample_problems, to_problems
    from deepscaler.training.config import load_config
    from deepscaler.training.loop import train

    task = ArithmeticTaskConfig()
    problems = to_problems(sample_problems(200, task, split="train", seed=0))
    val = {"arithmetic": to_problems(sample_problems(16, task, split="test", seed=0))}
    config = load_config("demo", [
        f"model.path={args.model}", f"trainer.run_dir={args.run_dir}", f"trainer.total_steps={args.steps}",
        "checkpoint.save_freq=2", "checkpoint.keep_last=0", "validation.test_freq=3", "logging.plots=false",
        "logging.progress=plain", "rollout.kv_cache_memory_bytes=67108864"])
    train(config, train_problems=problems, val_problems=val, reward_fn=letter_first)


# ----------------------------------------------------------------------------------------------- the driver
def start(run_dir: Path, model: Path, steps: int, trace: Path, env_extra: dict[str, str], log: Path):
    env = {**os.environ, "DEEPSCALER_TRACE_FILE": str(trace), "OMP_NUM_THREADS": "1", **env_extra}
    command = [sys.executable, __file__, "--child", "--run-dir", str(run_dir), "--model", str(model),
               "--steps", str(steps)]
    return subprocess.Popen(command, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def read_trace(trace: Path, offset: int) -> tuple[list[tuple[int, str, float]], int]:
    if not trace.exists():
        return [], offset
    data = trace.read_bytes()
    lines = data[offset:].decode(errors="replace").splitlines()
    complete = lines if data.endswith(b"\n") else lines[:-1]
    used = offset + sum(len(line) + 1 for line in complete)
    out = []
    for line in complete:
        step, point, stamp = (line.split(" ") + ["", ""])[:3]
        out.append((int(step) if step.lstrip("-").isdigit() else -1, point, float(stamp or 0.0)))
    return out, used


def phase_durations(trace: Path) -> dict[str, float]:
    """Median seconds from entering each point to the next event, in the uninterrupted run: how long a random
    kill delay may be to still land inside that phase."""
    events, _ = read_trace(trace, 0)
    spans: dict[str, list[float]] = {}
    for (_, point, start), (_, _, end) in zip(events, events[1:], strict=False):
        spans.setdefault(point, []).append(end - start)
    return {point: sorted(values)[len(values) // 2] for point, values in spans.items()}


def run_to_end(run_dir: Path, model: Path, steps: int, trace: Path, env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    process = start(run_dir, model, steps, trace, env, log)
    if process.wait() != 0:
        raise SystemExit(f"run in {run_dir} failed (exit {process.returncode}); see {log}")
    return time.perf_counter() - started


def kill_at(run_dir: Path, model: Path, steps: int, trace: Path, env: dict[str, str], log: Path, point: str,
            target_step: int, rng: random.Random, duration: float) -> tuple[str, list[int]]:
    """Start the run (it resumes), wait until it reaches ``point`` at ``target_step`` (a phase: at or after it, then
    a random delay within the phase's typical ``duration``), SIGKILL it. Returns where it landed and the
    checkpoints this start published."""
    offset = trace.stat().st_size if trace.exists() else 0
    # a checkpoint file, or a phase shorter than this driver can react (the toy reward), takes milliseconds: the
    # run is stopped right at its start; a longer phase is killed after a random part of its usual duration
    exact = point in CHECKPOINT_POINTS or duration < SHORT_PHASE_S
    pause = {"DEEPSCALER_TRACE_PAUSE": f"{point}@{target_step}"} if exact else {}
    process = start(run_dir, model, steps, trace, {**env, **pause}, log)
    last, published = (None, "start"), []
    while process.poll() is None:
        events, offset = read_trace(trace, offset)
        for step, name, _ in events:
            last = (step, name)
            if name == "checkpoint:prune":
                published.append(step)
            if name == point and (step == target_step if exact else step >= target_step):
                if not exact:
                    time.sleep(rng.uniform(0.0, 0.5 * duration))  # a random moment within the phase
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                more, offset = read_trace(trace, offset)
                for more_step, more_name, _ in more:
                    last = (more_step, more_name)
                    if more_name == "checkpoint:prune":
                        published.append(more_step)
                return f"step {last[0]} {last[1]}", published
        time.sleep(0.005)
    raise SystemExit(f"the run ended (exit {process.returncode}) before reaching {point} at step {target_step}; "
                     f"see {log}")


def target_for(point: str, floor: int, resumed_at: int, steps: int) -> int:
    """The step to kill at: >= floor and after the checkpoint the run resumes from; checkpoints are written on
    even steps and validation runs every 3 steps (and at the end)."""
    step = min(max(floor, resumed_at + 1), steps)
    if point in CHECKPOINT_POINTS:
        step = min(step + step % 2, steps)
    elif point == "validation":
        step = min(3 * -(-step // 3), steps)
    return step


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    expected, actual = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return expected.keys() == actual.keys() and all(bool((expected[k] == actual[k]).all()) for k in expected)


def compare(reference: Path, chaos: Path) -> tuple[bool, list[str]]:
    """(identical, problems): bitwise weights of every checkpoint, metrics rows apart from timings/faults."""
    from safetensors.torch import load_file

    from deepscaler.training.checkpoint import checkpoint_problem, list_checkpoints
    from deepscaler.training.metrics import read_metrics

    problems = []
    ref_ckpts = {p.name: p for p in list_checkpoints(reference)}
    chaos_ckpts = {p.name: p for p in list_checkpoints(chaos)}
    if set(ref_ckpts) != set(chaos_ckpts):
        problems.append(f"checkpoints differ: {sorted(set(ref_ckpts) ^ set(chaos_ckpts))}")
    for name in sorted(set(ref_ckpts) & set(chaos_ckpts)):
        if checkpoint_problem(chaos_ckpts[name]):
            problems.append(f"{name}: {checkpoint_problem(chaos_ckpts[name])}")
            continue
        expected, actual = load_file(ref_ckpts[name] / "model.safetensors"), load_file(
            chaos_ckpts[name] / "model.safetensors")
        if expected.keys() != actual.keys() or any(not (expected[k] == actual[k]).all() for k in expected):
            problems.append(f"{name}: weights differ")
    ref_rows, chaos_rows = read_metrics(reference), read_metrics(chaos)
    if [r["step"] for r in chaos_rows] != [r["step"] for r in ref_rows]:
        problems.append(f"metrics rows: {[r['step'] for r in chaos_rows]} vs {[r['step'] for r in ref_rows]}")
    for ref_row, chaos_row in zip(ref_rows, chaos_rows, strict=False):
        keep = lambda row: {k: v for k, v in row.items() if not k.startswith(IGNORED_PREFIXES)}  # noqa: E731
        if keep(ref_row) != keep(chaos_row):
            diff = sorted(k for k in keep(ref_row) | keep(chaos_row) if keep(ref_row).get(k) != keep(chaos_row).get(k))
            problems.append(f"metrics step {ref_row['step']} differ in {diff[:5]}")
    return not problems, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps of the run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from deepscaler.models.tiny import save_tiny_model

    work = args.work or Path(tempfile.mkdtemp(prefix="deepscaler-chaos-"))
    shutil.rmtree(work / "reference", ignore_errors=True)
    shutil.rmtree(work / "chaos", ignore_errors=True)
    for stale in ("reference.trace", "chaos.trace", "runs.log"):
        (work / stale).unlink(missing_ok=True)
    model = save_tiny_model(work / "model")
    rng = random.Random(args.seed)
    nonfinite_step = max(2, args.steps // 2)
    engine_step = max(1, args.steps // 3)
    log = work / "runs.log"

    reference_s = run_to_end(work / "reference", model, args.steps, work / "reference.trace",
                             {"DEEPSCALER_INJECT_FAULTS": f"nonfinite@{nonfinite_step}"}, log)
    print(f"reference: {args.steps} steps uninterrupted in {reference_s:.0f} s (non-finite step injected at "
          f"step {nonfinite_step})", flush=True)

    durations = phase_durations(work / "reference.trace")
    chaos_env = {"DEEPSCALER_INJECT_FAULTS": f"nonfinite@{nonfinite_step},engine@{engine_step}"}
    trace = work / "chaos.trace"
    points = [KILL_POINTS[i % len(KILL_POINTS)] for i in range(args.kills)]
    rng.shuffle(points)
    floors = sorted(rng.randint(1, args.steps) for _ in range(args.kills))  # kills spread over the run
    started = time.perf_counter()
    starts: list[list[int]] = []  # checkpoints published by each start
    from deepscaler.training.checkpoint import latest_checkpoint, load_trainer_state

    for index, ((point, description), floor) in enumerate(zip(points, floors, strict=True)):
        newest = latest_checkpoint(work / "chaos", report=None)
        resumed_at = load_trainer_state(newest).step if newest else 0
        where, published = kill_at(work / "chaos", model, args.steps, trace, chaos_env, log, point,
                                   target_for(point, floor, resumed_at, args.steps), rng, durations.get(point, 0.0))
        starts.append(published)
        print(f"kill {index + 1:2d}/{args.kills}: {description:<50} landed at {where:<28} "
              f"(resumed from step {resumed_at}; checkpoints written: {published or 'none'})", flush=True)
    offset = trace.stat().st_size
    run_to_end(work / "chaos", model, args.steps, trace, chaos_env, log)
    events, _ = read_trace(trace, offset)
    starts.append([step for step, name, _ in events if name == "checkpoint:prune"])
    chaos_s = time.perf_counter() - started

    identical, problems = compare(work / "reference", work / "chaos")
    from deepscaler.training.metrics import read_metrics

    reference_dir = work / "reference" / "checkpoints"
    resumed = [published for published in starts[1:]]  # start 0 began fresh; every later one resumed
    with_checkpoint = [p for p in resumed if p]
    matching = sum(all(same_weights(reference_dir / f"step_{s:06d}", work / "chaos" / "checkpoints" / f"step_{s:06d}")
                       for s in p) for p in with_checkpoint)
    rows = read_metrics(work / "chaos")
    skipped = [r["step"] for r in rows if r.get("actor/skipped_updates", 0.0) > 0]
    log_text = log.read_text(errors="replace")
    print(f"\n{matching}/{len(with_checkpoint)} resumed runs identical (the checkpoints each resumed start wrote "
          f"equal the uninterrupted run's, bitwise; {len(resumed) - len(with_checkpoint)} resumed starts were killed "
          "before writing one)")
    print(f"whole run: {'identical' if identical else 'DIFFERENT'} to the uninterrupted one (every checkpoint's "
          "weights bitwise, every metrics row apart from timings/throughput/fault counters)")
    print(f"faults survived: {args.kills} kill -9 ({log_text.count('resuming from')} resumes), rollout-engine death "
          f"at step {engine_step} ({log_text.count('rebuilding the rollout engine')} engine rebuilds logged), "
          f"non-finite step {nonfinite_step} (steps with a skipped update in the final metrics: {skipped})")
    lost = [p for p in problems if "rows" in p or "checkpoints differ" in p or "unreadable" in p]
    print(f"data lost: {'none' if not lost else '; '.join(lost)}")
    print(f"time: reference {reference_s:.0f} s, chaos (all {len(starts)} starts) {chaos_s:.0f} s; work folder {work}")
    if problems:
        print("differences: " + "; ".join(problems))
    (work / "chaos.json").write_text(json.dumps({"identical": identical, "problems": problems, "starts": starts}))


if __name__ == "__main__":
    main()
