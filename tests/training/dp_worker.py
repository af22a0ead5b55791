"""A short GRPO run for the data-parallel test: ``torchrun --nproc_per_node 2 dp_worker.py MODEL RUN_DIR STEPS OUT
[KEY=VALUE ...]`` or plain ``python dp_worker.py ...`` (one process). Rank 0 writes the per-step metrics to OUT."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def letter_first(responses: list[str], _problems: list) -> list[float]:
    return [1.0 if t and t[0].isascii() and t[0].isalpha() else 0.0 for t in responses]


def main(model_dir: str, run_dir: str, steps: int, out: str, overrides: list[str]) -> None:
    from deepscaler.data import Problem
    from deepscaler.training.config import load_config
    from deepscaler.training.loop import train

    problems = [Problem(id=f"toy-{i}", problem=f"What is {i} + {2 * i}?", answers=[str(3 * i)], source="toy")
                for i in range(16)]
    val = {"toy": [Problem(id=f"val-{i}", problem=f"What is {i} + 1?", answers=[str(i + 1)], source="toy")
                   for i in range(5)]}  # 5: an uneven split over 2 ranks
    config = load_config(None, [
        f"model.path={model_dir}", f"trainer.run_dir={run_dir}", f"trainer.total_steps={steps}", "trainer.seed=3",
        "data.train_batch_size=4", "rollout.n=4", "algorithm.ppo_mini_batch_size=4", "data.max_prompt_length=128",
        "data.max_response_length=8", "algorithm.max_tokens_per_micro_batch=200",
        "rollout.temperature=1.0", "optim.lr=2e-2", "algorithm.kl_coef=0.01", "algorithm.dynamic_sampling=true",
        "algorithm.max_rollout_batches=2", "validation.n=2", "validation.test_freq=1", "checkpoint.save_freq=1",
        "logging.progress=none", "logging.plots=false", "precision.policy=fp32", *overrides])
    rows: list[dict] = []
    train(config, train_problems=problems, val_problems=val, reward_fn=letter_first,
          on_step_end=lambda step, metrics: rows.append({"step": step, **metrics}))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as handle:
            json.dump(rows, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
