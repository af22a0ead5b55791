"""evaluate() with a scripted engine: metrics from known correct counts, saved records, resume, crashes."""

from __future__ import annotations

import json

import pytest

from deepscaler.evaluation import EvalConfig, evaluate, pass_at_k
from deepscaler.models.tiny import build_tiny_tokenizer
from deepscaler.rewards import RewardConfig
from deepscaler.rollout import Completion

# problem text → (gold, how many of the n samples answer correctly)
PROBLEMS = {"Add 1 and 1.": ("2", 0), "Add 2 and 2.": ("4", 1), "Add 3 and 3.": ("6", 2),
            "Add 4 and 4.": ("8", 4), "Add 5 and 5.": ("10", 3)}
N = 4


class ScriptedEngine:
    """Answers sample j of a problem correctly iff j < its scripted count; counts generate calls."""

    def __init__(self, fail_on_call: int | None = None, think_prefill: bool = False,
                 template: str = "<think>adding</think> The answer is \\boxed{{{answer}}}.") -> None:
        self.tokenizer = build_tiny_tokenizer(think_prefill=think_prefill)
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call
        self.template = template

    def generate(self, prompt_token_ids, sampling):
        self.calls.append(len(prompt_token_ids))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        groups = []
        for ids in prompt_token_ids:
            text = self.tokenizer.decode(ids)
            gold, correct = next(v for k, v in PROBLEMS.items() if k in text)
            group = []
            for j in range(sampling.n):
                answer = gold if j < correct else "999"
                response = self.template.format(answer=answer)
                tokens = self.tokenizer(response, add_special_tokens=False)["input_ids"]
                group.append(Completion(list(ids), tokens, response, None, "stop" if j % 2 == 0 else "length"))
            groups.append(group)
        return groups


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps([{"problem": p, "answer": a} for p, (a, _) in PROBLEMS.items()]))
    return path


def _config(dataset, out, **overrides):
    settings = dict(model="scripted", datasets=[str(dataset)], output_dir=str(out) if out else None, n=N, max_tokens=64,
                    chunk_size=2, reward=RewardConfig(num_workers=1), progress=False, print_table=False)
    settings.update(overrides)
    return EvalConfig(**settings)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_records_and_files(dataset, tmp_path):
    engine = ScriptedEngine()
    out = tmp_path / "out"
    results = evaluate(_config(dataset, out), engine=engine)
    counts = [c for _, c in PROBLEMS.values()]
    assert engine.calls == [2, 2, 1]  # chunks of 2 problems
    toy = results["toy"]
    assert toy["pass@1"] == pytest.approx(sum(counts) / (N * len(counts)))
    for k in (2, 4):
        assert toy[f"pass@{k}"] == pytest.approx(sum(pass_at_k(N, c, k) for c in counts) / len(counts))
    assert (toy["n"], toy["problems"], toy["dropped"], toy["truncated_fraction"]) == (N, 5, 0, 0.5)
    assert results["average"]["pass@1"] == toy["pass@1"]
    assert json.loads((out / "results.json").read_text()) == results
    assert "| toy |" in (out / "results.md").read_text()
    records = _lines(out / "toy" / "responses.jsonl")
    assert [r["id"] for r in records] == [f"toy-{i}" for i in range(5)]
    assert [sum(r["scores"]) for r in records] == counts
    first = records[1]
    assert first["gold"] == ["4"] and first["problem"] == "Add 2 and 2."
    assert len(first["responses"]) == len(first["finish_reasons"]) == len(first["response_tokens"]) == N
    assert first["prompt_tokens"] > 0 and first["response_tokens"][0] > 0


def test_rerun_generates_nothing_and_no_engine_starts(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # The second run gets no engine: its tokenizer comes from the model folder (here the tiny tokenizer).
    build_tiny_tokenizer().save_pretrained(tmp_path / "tok")
    first = evaluate(_config(dataset, out, model=str(tmp_path / "tok")), engine=ScriptedEngine())
    before = (out / "toy" / "responses.jsonl").read_bytes()
    import deepscaler.rollout

    class MustNotStart:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a fully resumed run must not start an engine")

    monkeypatch.setattr(deepscaler.rollout, "RolloutEngine", MustNotStart)
    again = evaluate(_config(dataset, out, model=str(tmp_path / "tok")))
    assert again == first
    assert (out / "toy" / "responses.jsonl").read_bytes() == before


def test_crash_keeps_scored_chunks_and_cut_line_is_regenerated(dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(_config(dataset, out), engine=ScriptedEngine(fail_on_call=2))
    path = out / "toy" / "responses.jsonl"
    assert [r["id"] for r in _lines(path)] == ["toy-0", "toy-1"]
    # Cut the last record in half, as a kill during a write would.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    engine = ScriptedEngine()
    results = evaluate(_config(dataset, out), engine=engine)
    assert engine.calls == [2, 2]  # toy-1 again (its line was cut) with toy-2, then toy-3 and toy-4
    assert [r["id"] for r in _lines(path)] == [f"toy-{i}" for i in range(5)]
    assert results["toy"]["problems"] == 5


def test_changed_settings_refuse_to_resume(dataset, tmp_path):
    out = tmp_path / "out"
    evaluate(_config(dataset, out, max_problems=2), engine=ScriptedEngine())
    with pytest.raises(ValueError, match=r"temperature: 0.6 → 1.0.*--no-resume"):
        evaluate(_config(dataset, out, temperature=1.0), engine=ScriptedEngine())
    engine = ScriptedEngine()
    evaluate(_config(dataset, out, temperature=1.0, resume=False), engine=engine)
    assert sum(engine.calls) == 5


def test_folder_from_the_old_seeding_refuses_to_resume(dataset, tmp_path):
    """settings.json written before seeds were per problem id has no "seeding" key: its samples came from
    other seeds, so resuming into it would mix two sampling schemes."""
    out = tmp_path / "out"
    evaluate(_config(dataset, out, max_problems=2), engine=ScriptedEngine())
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seeding"] == "per-problem-id"
    evaluate(_config(dataset, out), engine=ScriptedEngine())  # same scheme: resumes
    del settings["seeding"]
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"seeding: 'position in chunk' → 'per-problem-id'"):
        evaluate(_config(dataset, out), engine=ScriptedEngine())


def test_no_output_dir_keeps_nothing(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = evaluate(_config(dataset, None, max_problems=3), engine=ScriptedEngine())
    assert results["toy"]["problems"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.json"]


@pytest.mark.parametrize(("mode", "expected_pass_at_1"), [("auto", 0.0), ("no", 10 / 20)])
def test_think_prefill_decision_reaches_the_reward(dataset, tmp_path, mode, expected_pass_at_1):
    """A bare boxed answer with no think tags: after a prompt that opened <think> (auto-detected here) the
    thinking never closed, so it scores 0; declaring no prefill grades the whole response."""
    engine = ScriptedEngine(think_prefill=True, template="\\boxed{{{answer}}}")
    results = evaluate(_config(dataset, None, think_prefill=mode), engine=engine)
    assert results["toy"]["pass@1"] == pytest.approx(expected_pass_at_1)


def test_cli_defaults_are_deepscalers_protocol():
    import argparse

    from deepscaler.cli import eval as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    config = eval_cli.config_from_args(parser.parse_args(["eval", "--model", "m"]))
    assert (config.n, config.temperature, config.top_p, config.top_k) == (16, 0.6, 0.95, -1)
    assert (config.max_tokens, config.max_prompt_length, config.think_prefill) == (32768, 1536, "auto")
    assert config.reward == RewardConfig() and config.resume
    assert config.datasets == ["aime", "amc", "math", "minerva", "olympiad_bench"]  # DeepScaleR's five
    config = eval_cli.config_from_args(parser.parse_args(
        ["eval", "--model", "m", "--datasets", "aime", "amc", "--think-format", "strict", "--think-prefill", "yes",
         "--no-resume", "--max-model-len", "4096", "--kv-cache-memory-bytes", "134217728"]))
    assert config.datasets == ["aime", "amc"] and config.reward.think_format == "strict"
    assert (config.think_prefill, config.resume, config.max_model_len) == ("yes", False, 4096)
    assert config.kv_cache_memory_bytes == 134217728
    with pytest.raises(ValueError, match="n must be >= 1"):
        EvalConfig(model="m", n=0)


def test_eval_is_configured_like_train(tmp_path):
    import argparse

    from deepscaler.cli import eval as eval_cli
    from deepscaler.config import ConfigError
    from deepscaler.evaluation.config import list_eval_presets, load_eval_config

    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    config = eval_cli.config_from_args(parser.parse_args(
        ["eval", "--config", "smoke", "model=m", "n=3", "reward.grader=deepscaler", "--max-problems", "2"]))
    assert (config.model, config.n, config.max_problems, config.datasets) == ("m", 3, 2, ["aime", "math"])
    assert config.reward.grader == "deepscaler" and {"deepscaler", "smoke"} <= set(list_eval_presets())
    # overrides after a list flag are overrides, not data set names
    config = eval_cli.config_from_args(parser.parse_args(["eval", "--model", "m", "--datasets", "aime", "n=2",
                                                          "max_tokens=64"]))
    assert (config.datasets, config.n, config.max_tokens) == (["aime"], 2, 64)
    path = tmp_path / "mine.yaml"
    path.write_text("model: m\ndatasets: [amc]\nreward:\n  think_format: strict\n")
    config = load_eval_config(str(path), ["top_p=0.9"])
    assert (config.datasets, config.top_p, config.reward.think_format) == (["amc"], 0.9, "strict")
    with pytest.raises(ConfigError, match="unknown config key 'temprature'.*temperature"):
        load_eval_config(None, ["model=m", "temprature=0.5"])
    with pytest.raises(ConfigError, match="model is empty"):
        load_eval_config(None, [])
    with pytest.raises(ConfigError, match="moved to reward.num_workers"):
        load_eval_config(None, ["model=m", "reward_workers=2"])
    with pytest.raises(ConfigError, match="n must be >= 1"):
        load_eval_config(None, ["model=m", "n=0"])


def test_max_model_len_and_memory_choices_each_branch(tiny_model_dir, monkeypatch):
    from deepscaler.evaluation.runner import resolve_eval_memory, resolve_max_model_len

    model = str(tiny_model_dir)  # max_position_embeddings 1024
    assert resolve_max_model_len(EvalConfig(model=model, max_model_len=700))[0] == 700
    length, reason = resolve_max_model_len(EvalConfig(model=model, max_prompt_length=200, max_tokens=300))
    assert length == 500 and "capped" not in reason
    length, reason = resolve_max_model_len(EvalConfig(model=model))
    assert length == 1024 and "capped to 1024" in reason
    assert resolve_eval_memory(EvalConfig(model=model, kv_cache_memory_bytes=1 << 27), 500).engine_kwargs() == {
        "kv_cache_memory_bytes": 1 << 27}
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = resolve_eval_memory(EvalConfig(model=model), 500)  # sized from the tiny model's config
    assert cpu.gpu_memory_utilization == 0.1 and cpu.kv_cache_memory_bytes >= 64 << 20
    given = resolve_eval_memory(EvalConfig(model=model, gpu_memory_utilization=0.3), 500)
    assert (given.gpu_memory_utilization, given.kv_cache_memory_bytes) == (0.3, cpu.kv_cache_memory_bytes)
    assert "--gpu-memory-utilization=0.3 is passed on but does not size the KV cache on CPU" in given.reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = resolve_eval_memory(EvalConfig(model=model), 500)
    assert (gpu.gpu_memory_utilization, gpu.kv_cache_memory_bytes) == (0.9, None)
    given = resolve_eval_memory(EvalConfig(model=model, gpu_memory_utilization=0.3), 500)
    assert (given.gpu_memory_utilization, given.kv_cache_memory_bytes) == (0.3, None)
    assert "--gpu-memory-utilization=0.3" in given.reason
    with pytest.raises(ValueError, match="kv-cache-memory-bytes"):
        EvalConfig(model=model, kv_cache_memory_bytes=0)


def test_response_store_corruption_rules(tmp_path):
    from deepscaler.evaluation import ResponseStore

    path = tmp_path / "responses.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # complete record that only lost its newline: kept
    assert list(ResponseStore(path).load()) == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')  # damage in the middle is not a crash cut: refuse
    with pytest.raises(ValueError, match=r"responses\.jsonl line 2: unreadable record.*--no-resume"):
        ResponseStore(path).load()


def test_a_missing_data_set_stops_before_anything_is_generated(dataset, tmp_path, monkeypatch):
    """Every data set is found before the first is generated: a wrong name costs no sampling of the others."""
    from deepscaler.data.sources import DataNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DEEPSCALER_CACHE_DIR", str(tmp_path / "cache"))
    engine = ScriptedEngine()
    with pytest.raises(DataNotFoundError):
        evaluate(_config(dataset, tmp_path / "out", datasets=[str(dataset), "no_such_set"]), engine=engine)
    assert engine.calls == [] and not (tmp_path / "out" / "toy" / "responses.jsonl").exists()
