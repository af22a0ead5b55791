"""Hostile model outputs through the reward path of a training step: no hang, no crash, every answer bounded.

1. Each of the N pathological responses of ``deepscaler.rewards.hostile`` is scored alone through the reward
   process pool (as the trainer scores, with the training config's default time limit), timed: count, median and max
   seconds per answer, and how many hit the limit (the worker is killed and replaced).
2. All N together through the trainer's own reward function (``training.setup.default_reward_fn``, what
   ``collect_rollouts`` calls in a step's reward phase), timed against the bound
   ``ceil(N / workers) x (timeout + grace)``.

Run: ``python benchmarks/hostile_outputs.py [--count 1000] [--workers 2] [--timeout 10]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import Counter
from types import SimpleNamespace

from deepscaler.rewards import RewardConfig, close_pool, score_responses
from deepscaler.rewards.equivalence import grading_pool
from deepscaler.rewards.hostile import GOLDS, hostile_responses
from deepscaler.training.config import TrainConfig
from deepscaler.training.setup import default_reward_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=TrainConfig().reward.timeout_s,
                        help="seconds per answer (default: the training config's reward.timeout_s)")
    args = parser.parse_args()
    items = hostile_responses(args.count)
    golds = [GOLDS[i % len(GOLDS)] for i in range(len(items))]
    config = RewardConfig(timeout_s=args.timeout, num_workers=args.workers)
    bound = config.timeout_s + config.pool_grace_s
    sizes = [len(response) for _, response in items]
    print(f"{len(items)} hostile responses, {len(set(c for c, _ in items))} categories, length median "
          f"{statistics.median(sizes):.0f} max {max(sizes)} chars; limit {config.timeout_s:g} s + grace "
          f"{config.pool_grace_s:g} s per answer; {args.workers} workers")

    close_pool()
    score_responses(["\\boxed{1}"] * args.workers, ["1"] * args.workers, config)  # workers started and warm
    pool = grading_pool(args.workers)
    per_answer: list[float] = []
    by_category: dict[str, list[float]] = {}
    rewards: Counter = Counter()
    killed_before = pool.killed
    for (category, response), gold in zip(items, golds, strict=True):
        started = time.perf_counter()
        (reward,) = score_responses([response], [gold], config)
        elapsed = time.perf_counter() - started
        per_answer.append(elapsed)
        by_category.setdefault(category, []).append(elapsed)
        rewards[reward] += 1
    over = sum(t > bound for t in per_answer)
    print(f"per answer: median {statistics.median(per_answer):.4f} s, max {max(per_answer):.2f} s, "
          f"over the bound ({bound:g} s): {over}; workers killed at the limit: {pool.killed - killed_before}; "
          f"rewards {dict(rewards)}")
    for category, times in sorted(by_category.items()):
        print(f"  {category:<14} n={len(times):4d}  median {statistics.median(times):.4f} s  max {max(times):.2f} s")

    trainer = TrainConfig()
    trainer.reward.num_workers, trainer.reward.timeout_s = args.workers, args.timeout
    reward_fn = default_reward_fn(trainer, prompt_opens_think=False)
    problems = [SimpleNamespace(gold=gold) for gold in golds]
    started = time.perf_counter()
    step_rewards = reward_fn([response for _, response in items], problems)
    step_time = time.perf_counter() - started
    step_bound = math.ceil(len(items) / args.workers) * bound
    print(f"step reward phase (trainer reward_fn, {len(items)} responses at once): {step_time:.1f} s "
          f"(bound {step_bound:.0f} s); {len(step_rewards)} rewards, mean {statistics.fmean(step_rewards):.3f}")
    close_pool()


if __name__ == "__main__":
    main()
