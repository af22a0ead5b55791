"""Grader accuracy and speed: ours vs math-verify alone vs DeepScaleR's rules, measured side by side.

1. Accuracy on the labelled set ``benchmarks/data/grader_cases.jsonl`` (labels follow
   the conventions of deepscaler.rewards.normalize; bare answers and full responses), with false negatives / positives and the
   accuracy per category.
2. Answers/s in this one process, caches cleared before each timed pass:
   * on the labelled set;
   * on a realistic mix built from MATH-500 and AIME 2024 (found as ``deepscaler eval`` finds them: ``--data-dir``
     / ``DEEPSCALER_DATA_DIR``, the local cache, the public Hub; see docs/data.md): full ``<think>…</think>``
     responses whose thinking holds a stray boxed guess and whose final ``\\boxed{}`` holds the problem's gold
     (half) or another problem's gold (half). Skipped cleanly without the data.
3. The same mix through ``score_responses`` (process pool), for reference.

Run: ``python benchmarks/grader.py [--data-dir DIR] [--workers N] [--skip-pool]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from deepscaler.data import DataNotFoundError, load_problems
from deepscaler.rewards import RewardConfig, is_equivalent, math_reward, score_responses
from deepscaler.rewards.config import GRADER_NAMES

CASES = Path(__file__).parent / "data" / "grader_cases.jsonl"
LABELS = {"default": "ours (default)", "math_verify": "math-verify alone", "deepscaler": "DeepScaleR rules"}


def clear_caches() -> None:
    from deepscaler.rewards import equivalence, mathverify_backend

    equivalence.default_equal.cache_clear()
    mathverify_backend.clear_caches()


def load_cases(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timed(fn, items) -> tuple[list, list[float]]:
    results, latencies = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        latencies.append(time.perf_counter() - start)
    return results, latencies


def latency_summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"{len(latencies) / sum(latencies):8.0f}/s  median {statistics.median(ordered) * 1e3:6.2f} ms  "
            f"p99 {p99 * 1e3:7.1f} ms  max {ordered[-1] * 1e3:7.1f} ms")


def accuracy_table(cases: list[dict]) -> None:
    print(f"\n== Labelled set: {len(cases)} cases ({sum(c['label'] for c in cases)} equal), {CASES.name} ==")
    per_category: dict[str, dict[str, float]] = {}
    for grader in GRADER_NAMES:
        def grade(case, grader=grader):
            return is_equivalent(case["pred"], case["gold"], grader=grader)

        grade(cases[0])  # imports
        clear_caches()
        verdicts, latencies = timed(grade, cases)
        fn = sum(1 for c, v in zip(cases, verdicts, strict=False) if c["label"] and not v)
        fp = sum(1 for c, v in zip(cases, verdicts, strict=False) if not c["label"] and v)
        accuracy = 1 - (fn + fp) / len(cases)
        print(f"{LABELS[grader]:<20} accuracy {accuracy:.3f}  FN {fn:3d}  FP {fp:3d}  | {latency_summary(latencies)}")
        totals, right = Counter(), Counter()
        for case, verdict in zip(cases, verdicts, strict=False):
            totals[case["category"]] += 1
            right[case["category"]] += verdict == case["label"]
        per_category[grader] = {cat: right[cat] / totals[cat] for cat in totals}
        if grader == "default":
            misses = [c for c, v in zip(cases, verdicts, strict=False) if v != c["label"]]
            for case in misses:
                print(f"    ours wrong: {case['id']}: {case['pred'][:60]!r} vs {case['gold']!r} label={case['label']}")
    categories = sorted(per_category["default"])
    print("\nper category:".ljust(22) + "".join(f"{LABELS[g][:18]:>20}" for g in GRADER_NAMES))
    for cat in categories:
        print(f"  {cat:<20}" + "".join(f"{per_category[g][cat]:>20.3f}" for g in GRADER_NAMES))


def build_mix(data_dir: Path | None, seed: int = 0) -> list[tuple[str, str, bool]]:
    """``(response, gold, is_right)`` items from MATH-500 and AIME golds, half right, half wrong.

    Raises ``DataNotFoundError`` when a set is found nowhere (its message says how to provide it)."""
    problems = []
    for name in ("math", "aime"):
        problems += [(p.problem, p.answers[0]) for p in load_problems(name, data_dir=data_dir)]
    rng = random.Random(seed)
    golds = [gold for _, gold in problems]
    items = []
    for problem, gold in problems:
        other = rng.choice([g for g in golds if g.strip() != gold.strip()])
        stray = rng.choice(golds)
        thinking = (
            f"Okay, let me restate the problem. {problem}\n"
            + "Let me set up the equations carefully and check each step. " * 25
            + f"Maybe the answer is \\boxed{{{stray}}}? Wait, let me double-check that computation.\n"
            + "Re-deriving from the start gives a consistent result. " * 15
        )
        for answer, right in ((gold, True), (other, False)):
            response = (f"<think>\n{thinking}</think>\n\nWe solve the problem step by step as above.\n\n"
                        f"**Final Answer**\n\\[\n\\boxed{{{answer}}}\n\\]")
            items.append((response, gold, right))
    rng.shuffle(items)
    return items


def throughput_mix(data_dir: Path | None, workers: int, skip_pool: bool) -> None:
    try:
        items = build_mix(data_dir)
    except DataNotFoundError as error:
        print(f"\n== Throughput mix: skipped ({error}) ==")
        return
    print(f"\n== Throughput mix: {len(items)} full responses (MATH-500 + AIME golds, half right) ==")
    for grader in GRADER_NAMES:
        config = RewardConfig(grader=grader)

        def score(item, config=config):
            return math_reward(item[0], item[1], config)

        score(items[0])
        clear_caches()
        rewards, latencies = timed(score, items)
        right_ok = sum(1 for (_, _, right), r in zip(items, rewards, strict=False) if right and r == 1.0)
        wrong_ok = sum(1 for (_, _, right), r in zip(items, rewards, strict=False) if not right and r == 0.0)
        half = len(items) // 2
        print(f"{LABELS[grader]:<20} right accepted {right_ok}/{half}  wrong rejected {wrong_ok}/{half} | "
              f"{latency_summary(latencies)}")
    if skip_pool:
        return
    clear_caches()
    start = time.perf_counter()
    score_responses([r for r, _, _ in items[:8]], [g for _, g, _ in items[:8]], num_workers=workers)  # warm
    started = time.perf_counter() - start
    start = time.perf_counter()
    rewards = score_responses([r for r, _, _ in items], [g for _, g, _ in items], num_workers=workers)
    elapsed = time.perf_counter() - start
    print(f"{'ours, pool':<20} {workers} workers (start {started:.1f} s): {len(items) / elapsed:8.0f}/s, "
          f"mean reward {sum(rewards) / len(rewards):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with test/math.json and test/aime.json (default: $DEEPSCALER_DATA_DIR, then the "
                             "local cache, then the public Hub; see docs/data.md)")
    parser.add_argument("--workers", type=int, default=2, help="pool size for the pool measurement")
    parser.add_argument("--skip-pool", action="store_true", help="do not measure the process pool")
    args = parser.parse_args()
    accuracy_table(load_cases(CASES))
    throughput_mix(args.data_dir, args.workers, args.skip_pool)


if __name__ == "__main__":
    main()
