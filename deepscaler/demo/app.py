"""``deepscaler train`` with no arguments: RL takes a tiny model beyond the teacher it was distilled from, on a CPU.

Phases (each timed; a rerun in the same run folder skips what is done, so ``kill -9`` and rerun finishes):

1. build a ~0.4M-parameter Qwen2 model and a byte-level tokenizer whose prompt words are single tokens
   (:mod:`deepscaler.models.tiny`);
2. supervised warm-up (:mod:`deepscaler.demo.warmup`) on a teacher whose column-by-column traces of 2-3 digit
   addition and subtraction are right but whose boxed answer is the result plus one on 70 % of the problems
   (:mod:`deepscaler.demo.teacher`); run to convergence, with greedy Pass@1 measured along the way to show
   the plateau → ``RUN/warmup`` (written atomically);
3. Pass@1 of the warm-up model on 500 held-out problems (:func:`deepscaler.evaluation.evaluate`, one vLLM
   engine, the DeepScaleR math reward) → ``RUN/eval_before.json``;
4. GRPO through the real training loop (:func:`deepscaler.training.train`) with the ``demo`` recipe
   (``deepscaler/recipes/demo.yaml``) on the same engine, checkpoints → ``RUN/grpo`` (resume=auto);
5. Pass@1 of the final checkpoint, measured exactly as in 3 → ``RUN/eval_after.json``; then
   ``RUN/summary.json`` (before, after, gain, the warm-up's plateau, threads, CPU capability, wall time).

The greedy warm-up model boxes the teacher's majority answer, so it starts low whatever the machine; its
samples still box the right answer often enough for the verifiable reward to select it, which is what RL
does beyond a distilled teacher in DeepScaleR. Prompts are the real recipe's: problem + " " + DeepScaleR's
instruction, rendered with the chat template.

Overrides: ``demo.<field>=value`` sets a :class:`~deepscaler.demo.settings.DemoSettings` field (e.g.
``demo.threads=2``); any other ``key=value`` goes to the GRPO config on top of demo.yaml (e.g.
``optim.lr=1e-4 trainer.total_steps=20``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from deepscaler.data.arithmetic import ArithmeticTaskConfig, sample_problems, to_problems
from deepscaler.demo.report import PhaseTimes, read_json, say, write_demo_plot, write_json
from deepscaler.demo.settings import DemoSettings, choose_num_threads, split_overrides
from deepscaler.demo.warmup import WARMUP_RECORD, warm_up
from deepscaler.evaluation import EvalConfig, evaluate
from deepscaler.rollout import EngineConfig, RolloutEngine, engine_device_type, resolve_engine_memory
from deepscaler.training import checkpoint as ckpt
from deepscaler.training import load_config, train

DEMO_RECIPE = "demo"
SUMMARY_FILE = "summary.json"
HELD_OUT_FILE = "held_out.jsonl"


def eval_modes(settings: DemoSettings) -> dict[str, float]:
    """The headline measurement first, then the other one (greedy <-> T=0.6)."""
    other = 0.6 if settings.eval_temperature == 0 else 0.0
    return {mode_name(settings.eval_temperature): settings.eval_temperature, mode_name(other): other}


def mode_name(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def measure_pass_at_1(engine: RolloutEngine, model: str, held_out: Path, out_dir: Path, settings: DemoSettings,
                      max_prompt_length: int) -> dict[str, float]:
    """Pass@1 (one sample per problem) in each evaluation mode, by the library's evaluation on ``engine``.

    Responses go to ``out_dir/<mode>/``; an earlier partial measurement there is discarded (resume=False),
    since the caller measures again only when the weights changed.
    """
    result = {}
    for name, temperature in eval_modes(settings).items():
        metrics = evaluate(EvalConfig(
            model=model, datasets=[str(held_out)], output_dir=str(out_dir / name), n=1, temperature=temperature,
            top_p=1.0, max_tokens=settings.eval_max_tokens, max_prompt_length=max_prompt_length,
            seed=settings.seed + 1, chunk_size=settings.eval_problems, resume=False, progress=False,
            print_table=False), engine=engine)
        result[name] = metrics[Path(held_out).stem]["pass@1"]
    return result


def final_checkpoint(grpo_dir: Path) -> tuple[Path | None, int]:
    """Newest complete GRPO checkpoint and its step (None, 0 when there is none)."""
    latest = ckpt.latest_checkpoint(grpo_dir)
    return (latest, ckpt.load_trainer_state(latest).step) if latest else (None, 0)


def load_checkpoint_into_engine(engine: RolloutEngine, checkpoint: Path) -> None:
    weights: dict[str, Any] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(shard))
    engine.update_weights(weights.items())


def write_held_out(path: Path, problems: Sequence[Any]) -> None:
    """The held-out problems as a JSONL file (problem, answer): what ``deepscaler eval`` reads too."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answers[0]}) + "\n" for p in problems))
    os.replace(tmp, path)


def run_demo(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or finish) the demo in ``demo.run_dir``; returns the summary written to ``summary.json``."""
    started = time.perf_counter()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process vLLM engine: starts in seconds
    settings, grpo_overrides = split_overrides(list(overrides))
    run_dir = Path(settings.run_dir)
    warmup_dir, grpo_dir, held_out = run_dir / "warmup", run_dir / "grpo", run_dir / HELD_OUT_FILE
    # The GRPO config is checked before anything runs: a bad override fails here, not after the warm-up.
    config = load_config(DEMO_RECIPE, [f"model.path={warmup_dir}", f"trainer.run_dir={grpo_dir}",
                                       f"trainer.seed={settings.seed}", *grpo_overrides])
    total_steps = config.trainer.total_steps
    run_dir.mkdir(parents=True, exist_ok=True)
    times = PhaseTimes()

    with times("setup"):
        threads, thread_reason = choose_num_threads(settings.threads)
        torch.set_num_threads(threads)  # before vLLM starts: its CPU worker forbids changing it afterwards
        capability = torch.backends.cpu.get_cpu_capability()
        say(f"torch threads: {threads} ({thread_reason}); CPU capability {capability}")
        task = ArithmeticTaskConfig(min_digits=settings.min_digits, max_digits=settings.max_digits,
                                    operations=tuple(settings.operations))
        train_arithmetic = sample_problems(settings.train_problems, task, split="train", seed=settings.seed)
        eval_arithmetic = sample_problems(settings.eval_problems, task, split="test", seed=settings.seed)
        eval_problems = to_problems(eval_arithmetic)
        write_held_out(held_out, eval_problems)
        say(f"task: {settings.min_digits}-{settings.max_digits} digit {' and '.join(task.operations)}; "
            f"{len(train_arithmetic)} training, {len(eval_problems)} held-out problems, e.g. "
            f"{eval_problems[0].problem!r}; the teacher boxes the result + 1 on "
            f"{settings.teacher_flaw_fraction:.0%} of them")

    warmup_info = read_json(warmup_dir / WARMUP_RECORD)
    if warmup_info is not None:
        times.skipped("supervised warm-up", f"done earlier ({warmup_dir})")
    else:
        with times("supervised warm-up", f"{settings.warmup_steps} steps"):
            say(f"supervised warm-up: {settings.warmup_steps} steps x {settings.warmup_batch_size} teacher "
                f"demonstrations, lr {settings.warmup_lr:g}, cosine to the end")
            warmup_info = warm_up(settings, train_arithmetic, eval_arithmetic[: settings.val_problems], warmup_dir,
                                  on_log=_warmup_line)
        say(f"tiny Qwen2 model: {warmup_info['parameters'] / 1e6:.2f}M parameters")

    with times("vLLM engine start"):
        max_prompt_length = config.data.max_prompt_length
        max_model_len = max_prompt_length + max(config.data.max_response_length, settings.eval_max_tokens)
        # On CPU an explicit KV-cache size (vLLM's RAM-fraction rule can go negative); rollout.gpu_memory_utilization
        # / rollout.kv_cache_memory_bytes override it, as for the trainer's own engine.
        memory = resolve_engine_memory(engine_device_type(), "train", config.rollout.gpu_memory_utilization,
                                       config.rollout.kv_cache_memory_bytes, str(warmup_dir), max_model_len,
                                       rollout_dtype="float32")
        engine = RolloutEngine(EngineConfig(
            model=str(warmup_dir), dtype="float32", precision="fp32", seed=settings.seed, max_model_len=max_model_len,
            gpu_memory_utilization=memory.gpu_memory_utilization, extra_engine_kwargs=memory.engine_kwargs()))

    try:
        before = read_json(run_dir / "eval_before.json")
        if before is None:
            with times("Pass@1 before RL", f"{len(eval_problems)} problems x {len(eval_modes(settings))} modes"):
                before = measure_pass_at_1(engine, str(warmup_dir), held_out, run_dir / "eval_before", settings,
                                           max_prompt_length)
                write_json(run_dir / "eval_before.json", before)
        else:
            times.skipped("Pass@1 before RL", "measured earlier")
        say(f"Pass@1 after the warm-up: {_modes_line(before)}")

        checkpoint, step = final_checkpoint(grpo_dir)
        if checkpoint is not None and step >= total_steps:
            times.skipped("GRPO", f"done earlier ({step} steps)")
        else:
            note = f"steps {step + 1}..{total_steps}" + (" (resumed)" if step else "")
            with times("GRPO", note):
                say(f"GRPO: {note}")
                val = {"arithmetic": eval_problems[: settings.val_problems]} if settings.val_problems else {}
                train(config, train_problems=to_problems(train_arithmetic), val_problems=val, engine=engine)
            checkpoint, step = final_checkpoint(grpo_dir)

        after = read_json(run_dir / "eval_after.json")
        if after is None or after.get("checkpoint") != str(checkpoint):
            with times("Pass@1 after RL", f"{len(eval_problems)} problems x {len(eval_modes(settings))} modes"):
                load_checkpoint_into_engine(engine, checkpoint)
                after = {**measure_pass_at_1(engine, str(checkpoint), held_out, run_dir / "eval_after", settings,
                                             max_prompt_length), "checkpoint": str(checkpoint)}
                write_json(run_dir / "eval_after.json", after)
        else:
            times.skipped("Pass@1 after RL", "measured earlier")
        after_modes = {k: v for k, v in after.items() if k != "checkpoint"}
        say(f"Pass@1 after {step} GRPO steps: {_modes_line(after_modes)}")
    finally:
        engine.close()

    with times("plots"):
        plots = [write_demo_plot(run_dir, warmup_info["history"], before, after_modes, len(eval_problems))]
        plots += sorted(str(p) for p in (grpo_dir / "plots").glob("*.png"))

    wall = time.perf_counter() - started
    headline = mode_name(settings.eval_temperature)
    summary = {
        "pass@1_before": before[headline],
        "pass@1_after": after_modes[headline],
        "pass@1_gain": after_modes[headline] - before[headline],
        "warmup_plateau": warmup_info["plateau"],
        "wall_time_s": wall,
        "threads": threads,
        "threads_reason": thread_reason,
        "cpu_capability": capability,
        "steps": step,
        "eval": {"mode": headline, "temperature": settings.eval_temperature, "samples_per_problem": 1,
                 "problems": len(eval_problems), "before": before, "after": after_modes},
        "phases_s": {name: round(seconds, 2) for name, seconds, _ in times.rows},
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "parameters": warmup_info["parameters"],
        "warmup_steps": warmup_info["config"]["steps"],
        "run_dir": str(run_dir),
        "plots": plots,
        "settings": asdict(settings),
        "grpo_overrides": list(grpo_overrides),
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    print(f"\n{times.table(wall)}\n", flush=True)
    say(f"Pass@1 on {len(eval_problems)} held-out problems ({headline}, 1 sample each): "
        f"{summary['pass@1_before']:.1%} after the warm-up (plateau {_plateau_line(warmup_info['plateau'])}) -> "
        f"{summary['pass@1_after']:.1%} after {step} GRPO steps ({summary['pass@1_gain'] * 100:+.1f} points)")
    say(f"wall time {wall:.0f}s; summary {run_dir / SUMMARY_FILE}; plots in {grpo_dir / 'plots'} and {run_dir}")
    return summary


def _warmup_line(record: dict[str, Any]) -> None:
    measured = f"  greedy Pass@1 {record['pass@1']:.1%}" if "pass@1" in record else ""
    say(f"  warm-up step {record['step']:4d}  loss {record['loss']:.3f}{measured}  ({record['elapsed_s']:.0f}s)")


def _modes_line(result: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1%}" for name, value in result.items())


def _plateau_line(plateau: dict[str, Any]) -> str:
    return " / ".join(f"{value:.0%}" for value in plateau["pass@1"]) or "not measured"


def main(argv: Sequence[str] | None = None) -> int:
    run_demo(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":  # the reward pool's worker processes re-import the main module
    raise SystemExit(main())
