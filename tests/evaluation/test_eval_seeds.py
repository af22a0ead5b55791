"""evaluate() on the tiny model with vLLM: a problem's samples depend on (eval seed, problem id) only — not on
its position in a generate call, the chunk size, or which problems an earlier run already finished."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("vllm")

from deepscaler.evaluation import EvalConfig, evaluate  # noqa: E402
from deepscaler.evaluation.runner import problem_seed  # noqa: E402
from deepscaler.rewards import RewardConfig  # noqa: E402
from deepscaler.rollout import RolloutEngine  # noqa: E402

PROBLEMS = [("Add 1 and 1.", "2"), ("Add 2 and 2.", "4"), ("Add 3 and 3.", "6"), ("Add 4 and 4.", "8"),
            ("Add 5 and 5.", "10")]
TARGET = "toy-2"  # the third problem


class RecordingEngine:
    """The real engine, remembering how many prompts each generate call got."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine, self.calls = engine, []
        self.config, self.tokenizer = engine.config, engine.tokenizer

    def generate(self, prompt_token_ids, sampling):
        self.calls.append(len(prompt_token_ids))
        return self.engine.generate(prompt_token_ids, sampling)


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps([{"problem": p, "answer": a} for p, a in PROBLEMS]))
    return path


def _run(engine, dataset, out, **overrides) -> tuple[dict, list[int]]:
    """Evaluate; returns the saved records by id and the prompts per generate call."""
    settings = dict(model="tiny", datasets=[str(dataset)], output_dir=str(out), n=2, temperature=1.0, top_p=1.0,
                    max_tokens=8, seed=3, chunk_size=64, reward=RewardConfig(num_workers=1), progress=False,
                    print_table=False)
    settings.update(overrides)
    recording = RecordingEngine(engine)
    evaluate(EvalConfig(**settings), engine=recording)
    records = {r["id"]: r for r in map(json.loads, (out / "toy" / "responses.jsonl").read_text().splitlines())}
    return records, recording.calls


def _samples(records: dict) -> tuple[list[str], list[int]]:
    """The target problem's sampled responses (texts and token counts)."""
    return records[TARGET]["responses"], records[TARGET]["response_tokens"]


def test_problem_samples_do_not_depend_on_chunking_or_resume(engine, dataset, tmp_path):
    # Third prompt of one call with all five problems.
    in_batch, calls = _run(engine, dataset, tmp_path / "batch")
    assert calls == [5]
    assert len(set(in_batch[TARGET]["responses"])) == 2  # T=1 on a random model: the two samples differ

    # Alone: a resumed run in which every other problem is already finished generates only the target.
    alone_dir = tmp_path / "alone"
    shutil.copytree(tmp_path / "batch", alone_dir)
    path = alone_dir / "toy" / "responses.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if TARGET not in line))
    alone, calls = _run(engine, dataset, alone_dir)
    assert calls == [1]
    assert _samples(alone) == _samples(in_batch)

    # Resume after an earlier run finished the first two: the target is now the first prompt of its call.
    resumed_dir = tmp_path / "resumed"
    first_two, calls = _run(engine, dataset, resumed_dir, max_problems=2)
    assert calls == [2] and sorted(first_two) == ["toy-0", "toy-1"]
    resumed, calls = _run(engine, dataset, resumed_dir)
    assert calls == [3]
    assert _samples(resumed) == _samples(in_batch)

    # One problem per call: still the same samples.
    single, calls = _run(engine, dataset, tmp_path / "single", chunk_size=1)
    assert calls == [1] * 5
    assert _samples(single) == _samples(in_batch)


def test_problem_seed_is_stable_distinct_and_in_range():
    assert problem_seed(0, "aime-3", 16) == problem_seed(0, "aime-3", 16)  # no salted hash(): same every process
    seeds = {problem_seed(seed, f"aime-{i}", 16) for seed in (0, 1) for i in range(200)}
    assert len(seeds) == 400  # depends on both the eval seed and the problem id
    assert all(0 <= s and s + 16 - 1 < 2**31 - 1 for s in seeds)
