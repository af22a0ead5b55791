"""``deepscaler train`` with no arguments: a tiny model really learns arithmetic with GRPO, on a CPU, in minutes.

Phases (each timed; a rerun in the same run folder skips what is done, so ``kill -9`` and rerun finishes):

1. build a ~0.4M-parameter Qwen2 model and the character-level tokenizer (:mod:`deepscaler.models.tiny`);
2. supervised warm-up ("cold start", :mod:`deepscaler.training.sft`) on the column-by-column addition /
   subtraction traces of :mod:`deepscaler.data.arithmetic` — deliberately short: the model learns the format
   and the trace but still makes digit mistakes → ``RUN/sft`` (written atomically);
3. Pass@1 of the warm-up model on 500 held-out problems, with vLLM (:class:`deepscaler.rollout.RolloutEngine`)
   and the DeepScaleR math reward (:func:`deepscaler.rewards.score_responses`) → ``RUN/eval_before.json``;
4. GRPO through the real training loop (:func:`deepscaler.training.loop.train`) with the ``demo`` recipe
   (``deepscaler/recipes/demo.yaml``), vLLM rollouts in this process, checkpoints → ``RUN/grpo`` (resume=auto);
5. Pass@1 of the final checkpoint, measured exactly as in 3 → ``RUN/eval_after.json``; then
   ``RUN/summary.json`` (pass@1_before, pass@1_after, wall_time_s, steps, ...) and a table of phase times.

Prompts are the real recipe's: problem + " " + DeepScaleR's instruction, rendered with the chat template.

Overrides: ``demo.<field>=value`` sets a :class:`DemoSettings` field (e.g. ``demo.sft_steps=300``); any other
``key=value`` goes to the GRPO config on top of demo.yaml (e.g. ``optim.lr=1e-4 trainer.total_steps=20``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEMO_RECIPE = "demo"
SUMMARY_FILE = "summary.json"


@dataclass
class DemoSettings:
    """The demo's own knobs (``demo.<field>=value`` on the command line); GRPO's are in demo.yaml."""

    run_dir: str = "runs/demo"
    """Run folder: sft/, grpo/ (checkpoints, metrics, plots), eval_*.json, summary.json."""
    seed: int = 0
    """Seed of the model initialisation, the problem draws and the SFT batch order."""
    hidden_size: int = 128
    """Width of the tiny model (head_dim 32, so hidden_size/32 attention heads)."""
    num_layers: int = 2
    """Transformer blocks of the tiny model."""
    intermediate_size: int = 384
    """MLP width of the tiny model."""
    min_digits: int = 2
    """Fewest digits of an operand."""
    max_digits: int = 3
    """Most digits of an operand."""
    operations: str = "+-"
    """Operators drawn, any of '+' and '-'."""
    train_problems: int = 20000
    """Distinct training problems (SFT and GRPO draw from them; never from the held-out part)."""
    eval_problems: int = 500
    """Held-out problems for Pass@1 before and after RL."""
    val_problems: int = 200
    """The first N eval problems are also the loop's validation set (a Pass@1 curve every test_freq steps)."""
    sft_steps: int = 600
    """Warm-up optimizer steps. Short on purpose: the gain shown must come from RL."""
    sft_batch_size: int = 32
    """Warm-up sequences per step."""
    sft_lr: float = 3e-3
    """Warm-up peak learning rate (cosine decay to 10 %)."""
    sft_schedule_steps: int | None = 800
    """Length of the warm-up's cosine schedule; longer than sft_steps cuts the warm-up while the learning rate is
    still high (None: sft_steps)."""
    eval_temperature: float = 0.0
    """Temperature of the Pass@1 measurement (n=1 per problem): 0 is greedy. The other mode (T=0.6, DeepScaleR's
    evaluation temperature) is measured too and reported beside it."""
    eval_max_tokens: int = 64
    """Response limit when evaluating (the longest gold response is 57 tokens with its EOS)."""
    threads: str = "auto"
    """Torch CPU threads for the trainer: "auto" (see choose_num_threads) or a number."""


# ----------------------------------------------------------------------------------------------- choices


def choose_num_threads(request: str = "auto", cpu_count: int | None = None,
                       load_average: float | None = None) -> tuple[int, str]:
    """Torch intra-op threads for the trainer, and why.

    OpenMP threads wait for each other at the end of every parallel region, so when other processes hold the
    cores one slow thread stalls the rest: on this 2-core machine at load ~4, a training step took 4.3x longer
    with 2 threads than with 1. "auto" therefore uses every core only when at least 1.5 cores are idle.
    """
    cpu_count = cpu_count or os.cpu_count() or 1
    if request != "auto":
        try:
            threads = int(request)
        except ValueError as error:
            raise ValueError(f"demo.threads={request!r}: use 'auto' or a positive integer") from error
        if threads < 1:
            raise ValueError(f"demo.threads={threads}: use 'auto' or a positive integer")
        return threads, "demo.threads"
    if load_average is None:
        load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = cpu_count - load_average
    if cpu_count > 1 and idle >= 1.5:
        return cpu_count, f"auto: {idle:.1f} of {cpu_count} cores idle (1-min load {load_average:.1f})"
    return 1, (f"auto: only {max(idle, 0):.1f} of {cpu_count} cores idle (1-min load {load_average:.1f}); "
               "one thread avoids OpenMP threads stalling on busy cores")


# ----------------------------------------------------------------------------------------------- overrides


def split_overrides(overrides: Sequence[str]) -> tuple[DemoSettings, list[str]]:
    """``demo.*`` overrides → DemoSettings (type-checked); the rest are GRPO config overrides."""
    from deepscaler.training.config import ConfigError, from_dict, parse_overrides

    demo_values: dict[str, Any] = {}
    rest: list[str] = []
    for item in overrides:
        if item.startswith("demo."):
            ((key, value),) = parse_overrides([item])
            demo_values[key.removeprefix("demo.")] = value
        else:
            rest.append(item)
    try:
        settings = from_dict(DemoSettings, demo_values, prefix="demo.")
    except ConfigError as error:
        raise ConfigError(f"{error} (demo settings: {', '.join('demo.' + k for k in asdict(DemoSettings()))})") \
            from error
    return settings, rest


# ----------------------------------------------------------------------------------------------- helpers


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically: a reader (or a rerun after kill -9) never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class PhaseTimes:
    """Seconds per phase of this invocation; phases skipped because an earlier run finished them say so."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, name: str, note: str = "") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - started, note))

    def skipped(self, name: str, note: str) -> None:
        self.rows.append((name, 0.0, note))

    def table(self, total: float) -> str:
        width = max(len(name) for name, _, _ in self.rows + [("total", 0.0, "")])
        lines = [f"{'phase':<{width}}  {'seconds':>8}  note", f"{'-' * width}  {'-' * 8}  ----"]
        lines += [f"{name:<{width}}  {seconds:8.1f}  {note}" for name, seconds, note in self.rows]
        lines.append(f"{'total':<{width}}  {total:8.1f}  wall time of this invocation")
        return "\n".join(lines)


def model_spec(settings: DemoSettings):
    from deepscaler.models.tiny import TinyModelSpec

    if settings.hidden_size % 32:
        raise ValueError(f"demo.hidden_size={settings.hidden_size} must be a multiple of 32 (head_dim 32)")
    heads = settings.hidden_size // 32
    return TinyModelSpec(hidden_size=settings.hidden_size, num_hidden_layers=settings.num_layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=32,
                         intermediate_size=settings.intermediate_size, max_position_embeddings=256)


# ----------------------------------------------------------------------------------------------- phases


def warm_up(settings: DemoSettings, train_problems: Sequence[Any], out_dir: Path) -> dict[str, Any]:
    """Build the tiny model, run the supervised warm-up, save model + tokenizer into ``out_dir`` atomically."""
    import shutil

    from deepscaler.data import render_prompt
    from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer
    from deepscaler.training.sft import SFTConfig, SFTExample, train_sft

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, model_spec(settings), seed=settings.seed)
    parameters = sum(p.numel() for p in model.parameters())
    say(f"tiny Qwen2 model: {parameters / 1e6:.2f}M parameters, {settings.num_layers} layers, hidden "
        f"{settings.hidden_size}, vocabulary {len(tokenizer)} (one token per character)")
    examples = [SFTExample(tokenizer.encode(render_prompt(p.problem, tokenizer), add_special_tokens=False),
                           tokenizer.encode(p.extra["gold_response"], add_special_tokens=False)
                           + [tokenizer.eos_token_id])
                for p in train_problems]
    config = SFTConfig(steps=settings.sft_steps, batch_size=settings.sft_batch_size,
                       learning_rate=settings.sft_lr, warmup_steps=min(20, settings.sft_steps // 5 + 1),
                       schedule_steps=settings.sft_schedule_steps,
                       seed=settings.seed, log_every=max(1, min(50, settings.sft_steps // 5)))
    say(f"supervised warm-up: {config.steps} steps x {config.batch_size} sequences, lr {config.learning_rate:g}")
    history = train_sft(model, examples, config, tokenizer.pad_token_id,
                        on_log=lambda r: say(f"  sft step {r['step']:4d}  loss {r['loss']:.3f}  "
                                             f"({r['elapsed_s']:.0f}s)"))
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"parameters": parameters, "config": asdict(config), "history": history}
    write_json(tmp / "sft.json", info)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info


def evaluate_pass_at_1(engine: Any, prompt_ids: Sequence[Sequence[int]], golds: Sequence[Any],
                       temperature: float, max_tokens: int, seed: int) -> dict[str, Any]:
    """Pass@1 with one vLLM sample per problem at ``temperature`` (0 = greedy), scored by the math reward."""
    from deepscaler.rewards import score_responses
    from deepscaler.rollout import SamplingSettings

    groups = engine.generate(prompt_ids, SamplingSettings(n=1, temperature=temperature, max_tokens=max_tokens,
                                                          seed=seed, logprobs=False))
    texts = [group[0].text for group in groups]
    rewards = score_responses(texts, list(golds))
    return {"pass@1": sum(rewards) / len(rewards), "temperature": temperature, "n": 1,
            "problems": len(rewards), "correct": int(sum(rewards)), "examples": texts[:3]}


def eval_modes(settings: DemoSettings) -> dict[str, float]:
    """The headline measurement first, then the other one (greedy <-> T=0.6)."""
    other = 0.6 if settings.eval_temperature == 0 else 0.0
    return {_mode_name(settings.eval_temperature): settings.eval_temperature, _mode_name(other): other}


def _mode_name(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def evaluate_all(engine: Any, prompt_ids: Sequence[Sequence[int]], golds: Sequence[Any],
                 settings: DemoSettings) -> dict[str, Any]:
    return {name: evaluate_pass_at_1(engine, prompt_ids, golds, temperature, settings.eval_max_tokens,
                                     seed=settings.seed + 1)
            for name, temperature in eval_modes(settings).items()}


def final_checkpoint(grpo_dir: Path) -> tuple[Path | None, int]:
    """Newest complete GRPO checkpoint and its step (None, 0 when there is none)."""
    from deepscaler.training import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(grpo_dir)
    return (latest, ckpt.load_trainer_state(latest).step) if latest else (None, 0)


def load_checkpoint_into_engine(engine: Any, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(shard))
    engine.update_weights(weights.items())


# ----------------------------------------------------------------------------------------------- the demo


def run_demo(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or finish) the demo in ``demo.run_dir``; returns the summary written to ``summary.json``."""
    started = time.perf_counter()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process vLLM engine: starts in seconds
    settings, grpo_overrides = split_overrides(list(overrides))
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    times = PhaseTimes()

    with times("setup"):
        import torch

        threads, thread_reason = choose_num_threads(settings.threads)
        torch.set_num_threads(threads)  # before vLLM starts: its CPU worker forbids changing it afterwards
        say(f"torch threads: {threads} ({thread_reason})")

        from deepscaler.data.arithmetic import ArithmeticTaskConfig, sample_problems, to_problems
        from deepscaler.training.config import load_config

        task = ArithmeticTaskConfig(min_digits=settings.min_digits, max_digits=settings.max_digits,
                                    operations=tuple(settings.operations))
        train_problems = to_problems(sample_problems(settings.train_problems, task, split="train",
                                                     seed=settings.seed))
        eval_problems = to_problems(sample_problems(settings.eval_problems, task, split="test",
                                                    seed=settings.seed))
        sft_dir, grpo_dir = run_dir / "sft", run_dir / "grpo"
        config = load_config(DEMO_RECIPE, [f"model.path={sft_dir}", f"trainer.run_dir={grpo_dir}",
                                           f"trainer.seed={settings.seed}", *grpo_overrides])
        total_steps = config.trainer.total_steps
        say(f"task: {settings.min_digits}-{settings.max_digits} digit {' and '.join(task.operations)}; "
            f"{len(train_problems)} training problems, {len(eval_problems)} held-out problems; e.g. "
            f"{eval_problems[0].problem!r}")

    if (sft_dir / "sft.json").is_file():
        times.skipped("supervised warm-up", f"done earlier ({sft_dir})")
        sft_info = read_json(sft_dir / "sft.json")
    else:
        with times("supervised warm-up", f"{settings.sft_steps} steps"):
            sft_info = warm_up(settings, train_problems, sft_dir)

    with times("vLLM engine start"):
        from deepscaler.data import encode_prompts
        from deepscaler.rollout import EngineConfig, RolloutEngine
        from deepscaler.training.decisions import engine_max_model_len, engine_memory

        max_model_len = max(engine_max_model_len(config), config.data.max_prompt_length + settings.eval_max_tokens)
        # The trainer's rule (on CPU an explicit KV-cache size: vLLM's RAM fraction minus this process can go
        # negative); rollout.gpu_memory_utilization / rollout.kv_cache_memory_bytes override it here too.
        memory = engine_memory(config, "float32", str(sft_dir), max_model_len)
        say(f"vLLM memory: {memory.describe()}")
        engine = RolloutEngine(EngineConfig(
            model=str(sft_dir), dtype="float32", precision="fp32", seed=settings.seed, max_model_len=max_model_len,
            gpu_memory_utilization=memory.gpu_memory_utilization, extra_engine_kwargs=memory.engine_kwargs()))
        encoded = encode_prompts(eval_problems, engine.tokenizer)
        golds = [p.gold for p in encoded.problems]

    try:
        before = read_json(run_dir / "eval_before.json")
        if before is None:
            with times("Pass@1 before RL", f"{len(golds)} problems x {len(eval_modes(settings))} modes"):
                before = evaluate_all(engine, encoded.prompt_token_ids, golds, settings)
                write_json(run_dir / "eval_before.json", before)
        else:
            times.skipped("Pass@1 before RL", "measured earlier")
        _print_eval("before RL (warm-up checkpoint)", before)

        checkpoint, step = final_checkpoint(grpo_dir)
        if checkpoint is not None and step >= total_steps:
            times.skipped("GRPO", f"done earlier ({step} steps)")
        else:
            from deepscaler.training.loop import train

            note = f"steps {step + 1}..{total_steps}" + (" (resumed)" if step else "")
            with times("GRPO", note):
                say(f"GRPO: {note}")
                val = {"arithmetic": eval_problems[: settings.val_problems]} if settings.val_problems else {}
                train(config, train_problems=train_problems, val_problems=val, engine=engine)
            checkpoint, step = final_checkpoint(grpo_dir)

        after = read_json(run_dir / "eval_after.json")
        if after is None or after.get("checkpoint") != str(checkpoint):
            with times("Pass@1 after RL", f"{len(golds)} problems x {len(eval_modes(settings))} modes"):
                load_checkpoint_into_engine(engine, checkpoint)
                after = {**evaluate_all(engine, encoded.prompt_token_ids, golds, settings),
                         "checkpoint": str(checkpoint)}
                write_json(run_dir / "eval_after.json", after)
        else:
            times.skipped("Pass@1 after RL", "measured earlier")
        _print_eval(f"after RL ({checkpoint.name})", after)
    finally:
        engine.close()

    with times("plots"):
        plots = write_demo_plot(run_dir, sft_info, before, after, settings)
        plots += sorted(str(p) for p in (grpo_dir / "plots").glob("*.png") if str(p) not in plots)

    wall = time.perf_counter() - started
    headline = _mode_name(settings.eval_temperature)
    summary = {
        "pass@1_before": before[headline]["pass@1"],
        "pass@1_after": after[headline]["pass@1"],
        "pass@1_gain": after[headline]["pass@1"] - before[headline]["pass@1"],
        "wall_time_s": wall,
        "steps": step,
        "eval": {"mode": headline, "temperature": settings.eval_temperature, "samples_per_problem": 1,
                 "problems": before[headline]["problems"],
                 "before": {k: v["pass@1"] for k, v in before.items() if isinstance(v, dict)},
                 "after": {k: v["pass@1"] for k, v in after.items() if isinstance(v, dict)}},
        "phases_s": {name: round(seconds, 2) for name, seconds, _ in times.rows},
        "threads": threads,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "parameters": sft_info["parameters"],
        "sft_steps": sft_info["config"]["steps"],
        "run_dir": str(run_dir),
        "plots": plots,
        "settings": asdict(settings),
        "grpo_overrides": list(grpo_overrides),
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    print()
    print(times.table(wall))
    print()
    say(f"Pass@1 on {summary['eval']['problems']} held-out problems ({headline}, 1 sample each): "
        f"{summary['pass@1_before']:.1%} after the warm-up -> {summary['pass@1_after']:.1%} after {step} GRPO "
        f"steps ({summary['pass@1_gain'] * 100:+.1f} points)")
    say(f"wall time {wall:.0f}s; summary {run_dir / SUMMARY_FILE}; plots in {grpo_dir / 'plots'} and {run_dir}")
    return summary


def _print_eval(label: str, result: dict[str, Any]) -> None:
    parts = [f"{name} {r['pass@1']:.1%}" for name, r in result.items() if isinstance(r, dict)]
    say(f"Pass@1 {label}: " + ", ".join(parts))


def write_demo_plot(run_dir: Path, sft_info: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
                    settings: DemoSettings) -> list[str]:
    """``RUN/demo.png``: warm-up loss curve, and Pass@1 before/after RL per evaluation mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, bar_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    history = sft_info.get("history", [])
    loss_ax.plot([r["step"] for r in history], [r["loss"] for r in history], marker="o", markersize=3)
    loss_ax.set_yscale("log")
    loss_ax.set_title("Supervised warm-up")
    loss_ax.set_xlabel("SFT step")
    loss_ax.set_ylabel("response cross-entropy")
    loss_ax.grid(alpha=0.3)
    modes = [m for m in before if isinstance(before[m], dict)]
    xs = range(len(modes))
    bar_ax.bar([x - 0.2 for x in xs], [before[m]["pass@1"] for m in modes], width=0.4, label="after warm-up")
    bar_ax.bar([x + 0.2 for x in xs], [after[m]["pass@1"] for m in modes], width=0.4, label="after GRPO")
    bar_ax.set_xticks(list(xs), modes)
    bar_ax.set_ylim(0, 1)
    bar_ax.set_title(f"Pass@1 on {before[modes[0]]['problems']} held-out problems")
    bar_ax.legend(loc="upper left", fontsize=8)
    bar_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = run_dir / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    run_demo(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":  # the reward pool's worker processes re-import the main module
    raise SystemExit(main())
