"""`deepscaler eval` end to end on the tiny model with vLLM: files, table, results.json schema, resume."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("vllm")

from deepscaler.cli import eval as eval_cli  # noqa: E402


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="deepscaler")
    eval_cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def test_eval_on_tiny_model_writes_table_and_responses_then_resumes(tiny_model_dir, shared_data_dir, tmp_path,
                                                                    capsys, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_model_dir), "--datasets", "aime", "math", "--data-dir", str(shared_data_dir),
            "--n", "2", "--max-tokens", "16", "--max-problems", "3", "--output-dir", str(out), "--no-progress"]
    assert _run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "max_position_embeddings 1024: capped to 1024" in printed  # 1536 + 16 > the tiny model's limit
    assert "think prefill" in printed
    for row in ("aime", "math", "average", "pass@1", "pass@2"):
        assert row in printed

    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["aime", "math", "average"]
    for name in ("aime", "math"):
        metrics = results[name]
        assert {"pass@1", "pass@2", "n", "problems", "dropped"} <= set(metrics)
        assert (metrics["n"], metrics["problems"], metrics["dropped"]) == (2, 3, 0)
        assert 0.0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1.0
    assert results["average"]["problems"] == 6
    assert "| aime |" in (out / "results.md").read_text()

    from deepscaler.data import load_problems
    from deepscaler.rewards import math_reward

    for name in ("aime", "math"):
        records = [json.loads(line) for line in (out / name / "responses.jsonl").read_text().splitlines()]
        golds = {p.id: p.answers for p in load_problems(name, data_dir=shared_data_dir, limit=3)}
        assert [r["id"] for r in records] == list(golds)
        for record in records:
            assert record["gold"] == golds[record["id"]]
            assert len(record["responses"]) == len(record["scores"]) == len(record["finish_reasons"]) == 2
            assert all(0 < t <= 16 for t in record["response_tokens"]) and record["prompt_tokens"] > 100
            assert set(record["finish_reasons"]) <= {"stop", "length"}
            # The stored scores are the reward of the stored responses.
            assert record["scores"] == [math_reward(r, record["gold"]) for r in record["responses"]]

    # Rerun: everything is done, so no engine may even start, and the response files stay untouched.
    import deepscaler.rollout

    def no_engine(*args, **kwargs):
        raise AssertionError("the rerun started an engine")

    monkeypatch.setattr(deepscaler.rollout, "RolloutEngine", no_engine)
    files = [out / "aime" / "responses.jsonl", out / "math" / "responses.jsonl"]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    assert _run_cli(argv) == 0
    assert "3 of 3 problems already done" in capsys.readouterr().out
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before
    assert json.loads((out / "results.json").read_text()) == results
