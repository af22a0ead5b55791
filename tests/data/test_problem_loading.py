"""Loading problem sets: every file format, named datasets, column detection, malformed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscaler.data import (
    Problem,
    RowError,
    load_problems,
    normalize_answers,
    resolve_data_dir,
    write_verl_parquet,
)

ROWS = [
    {"problem": "What is $1+1$?", "answer": "2", "level": 1},
    {"problem": "Compute $3 \\cdot 4$.", "answer": 12.0, "level": 2},
    {"problem": "Roots of $x^2=1$?", "answer": ["1, -1", "-1, 1"], "level": 3},
]


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet columns need one type: store the answer as strings/lists of strings like a converted dataset.
    pq.write_table(pa.Table.from_pylist([{**r, "answer": r["answer"] if isinstance(r["answer"], list)
                                          else [str(r["answer"])]} for r in rows]), path)
    return path


def _expected_answers():
    return [["2"], ["12"], ["1, -1", "-1, 1"]]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_file_formats_give_the_same_problems(tmp_path, suffix):
    writer = {".json": _write_json, ".jsonl": _write_jsonl, ".parquet": _write_parquet}[suffix]
    path = writer(tmp_path / f"mini{suffix}", ROWS)
    problems = load_problems(path)
    assert [p.problem for p in problems] == [r["problem"] for r in ROWS]
    answers = [p.answers for p in problems]
    # Parquet stored 12.0 as the string "12.0"; JSON kept the float, normalised to "12".
    expected = _expected_answers() if suffix != ".parquet" else [["2"], ["12.0"], ["1, -1", "-1, 1"]]
    assert answers == expected
    assert [p.id for p in problems] == ["mini-0", "mini-1", "mini-2"]
    assert all(p.source == "mini" for p in problems)
    assert [p.extra["level"] for p in problems] == [1, 2, 3]


def test_save_to_disk_folder_goes_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": r["problem"], "final_answer": str(r["answer"])} for r in ROWS]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    problems = load_problems(tmp_path / "single")
    assert [p.problem for p in problems] == [r["problem"] for r in ROWS]
    assert problems[1].answers == ["12.0"]

    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                                 "test": datasets.Dataset.from_list(rows[1:])})
    both.save_to_disk(str(tmp_path / "splits"))
    assert [p.problem for p in load_problems(tmp_path / "splits", split="test")] == [r["problem"] for r in ROWS[1:]]
    assert len(load_problems(tmp_path / "splits", split="train")) == 1
    with pytest.raises(ValueError, match="no split 'validation'.*train, test"):
        load_problems(tmp_path / "splits", split="validation")


def test_verl_parquet_round_trip(tmp_path):
    problems = load_problems(_write_json(tmp_path / "src.json", ROWS))
    write_verl_parquet(problems, tmp_path / "verl.parquet", split="test")
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "verl.parquet").to_pylist()[0]
    assert row["data_source"] == "" and row["ability"] == "math"
    assert row["prompt"] == [{"role": "user", "content": ROWS[0]["problem"] + " Let's think step by step and "
                              "output the final answer within \\boxed{}."}]
    assert row["extra_info"] == {"split": "test", "index": 0}
    back = load_problems(tmp_path / "verl.parquet")
    # The chat prompt is unwrapped (instruction stripped) and reward_model.ground_truth is found.
    assert [p.problem for p in back] == [p.problem for p in problems]
    assert [p.answers for p in back][0] == ["2"]


def test_column_detection_and_explicit_keys(tmp_path):
    solution_only = _write_json(tmp_path / "sol.json", [
        {"question": "Q1", "solution": "So $x=\\frac{1}{2}$, i.e. \\boxed{\\frac{1}{2}}."}])
    assert load_problems(solution_only)[0].answers == ["\\frac{1}{2}"]
    custom = _write_json(tmp_path / "custom.json", [{"text": "Q", "target_value": 7, "answer": "wrong column"}])
    problem = load_problems(custom, problem_key="text", answer_key="target_value")[0]
    assert (problem.problem, problem.answers) == ("Q", ["7"])
    nested = _write_json(tmp_path / "nested.json", [{"problem": "Q", "meta": {"gold": "\\boxed{9}"}}])
    assert load_problems(nested, answer_key="meta.gold")[0].answers == ["9"]
    no_problem = _write_json(tmp_path / "nop.json", [{"statement": "Q", "answer": "1"}])
    with pytest.raises(RowError, match=r"nop\.json row 0: no problem field .*--problem-key"):
        load_problems(no_problem)


@pytest.mark.parametrize(("row", "field", "message"), [
    ({"problem": "Q"}, "answer", "is missing"),
    ({"problem": "Q", "answer": None}, "answer", "is null"),
    ({"problem": "Q", "answer": "   "}, "answer", "is empty"),
    ({"problem": "Q", "answer": []}, "answer", "is an empty list"),
    ({"problem": "Q", "answer": True}, "answer", "has type bool"),
    ({"problem": "Q", "answer": {"value": 3}}, "answer", "has type dict"),
    ({"problem": "Q", "answer": ["1", None]}, "answer", "has type NoneType"),
    ({"answer": "1"}, "problem", "is missing"),
    ({"problem": 42, "answer": "1"}, "problem", "has type int"),
    ({"problem": "", "answer": "1"}, "problem", "is empty"),
])
def test_malformed_row_names_file_row_field_and_fix(tmp_path, row, field, message):
    rows = [{"problem": "fine", "answer": "1"}, {"problem": "fine too", "answer": 2}, row]
    path = _write_json(tmp_path / "train.json", rows)
    with pytest.raises(ValueError) as info:
        load_problems(path)
    text = str(info.value)
    assert text.startswith(f"{path} row 2: field '{field}' {message}")
    assert "--answer-key" in text and "--skip-malformed" in text


def test_non_object_row_and_bad_jsonl_line(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.json row 1: expected an object with fields, got list"):
        load_problems(_write_json(tmp_path / "bad.json", [{"problem": "Q", "answer": "1"}, ["Q", "1"]]))
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "Q", "answer": "1"}\n{"problem": "Q2", "answer": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2 \(row 1\): invalid JSON"):
        load_problems(path)


def test_skip_malformed_prints_count(tmp_path, capsys):
    rows = [{"problem": "Q1", "answer": "1"}, {"problem": "Q2", "answer": None}, {"problem": "Q3", "answer": "3"}]
    problems = load_problems(_write_json(tmp_path / "some_bad.json", rows), on_malformed="skip")
    assert [p.id for p in problems] == ["some_bad-0", "some_bad-2"]  # ids keep the row index
    assert "skipped 1 malformed row(s) of 3" in capsys.readouterr().out


def test_limit_and_missing_paths(tmp_path):
    assert len(load_problems(_write_json(tmp_path / "lim.json", ROWS), limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_problems(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match=r"dataset 'minerva' \(split test\) not found.*--data-dir"):
        load_problems("minerva", data_dir=tmp_path)  # not in the folder, not cached, Hub unreachable


def test_named_dataset_from_data_dir(tmp_path):
    (tmp_path / "test").mkdir()
    _write_jsonl(tmp_path / "test" / "aime.jsonl", ROWS[:1])
    (tmp_path / "train").mkdir()
    _write_json(tmp_path / "train" / "aime.json", ROWS)
    assert [p.id for p in load_problems("AIME24", data_dir=tmp_path)] == ["aime-0"]  # alias, case-insensitive
    assert len(load_problems("aime", data_dir=tmp_path, split="train")) == 3


def test_data_dir_resolution_each_branch():
    assert resolve_data_dir("/x/given", env={"DEEPSCALER_DATA_DIR": "/from/env"}) == (
        Path("/x/given"), "--data-dir / data.data_dir")
    path, reason = resolve_data_dir(None, env={"DEEPSCALER_DATA_DIR": "/from/env"})
    assert path == Path("/from/env") and "DEEPSCALER_DATA_DIR" in reason
    path, reason = resolve_data_dir(None, env={})
    assert path is None and "unset" in reason


def test_normalize_answers():
    assert normalize_answers(142.0) == ["142"]
    assert normalize_answers(0.5) == ["0.5"]
    assert normalize_answers(-4) == ["-4"]
    assert normalize_answers("\\boxed{\\frac{1}{2}}") == ["\\frac{1}{2}"]
    assert normalize_answers(["9.6\n", "9.6", 3]) == ["9.6", "3"]
    with pytest.raises(ValueError):
        normalize_answers(float("nan"))


def test_shared_deepscaler_files(shared_data_dir):
    sizes = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}
    for name, size in sizes.items():
        problems = load_problems(name, data_dir=shared_data_dir)
        assert len(problems) == size
        assert all(isinstance(p, Problem) and p.problem and p.answers for p in problems)
    amc = load_problems("amc", data_dir=shared_data_dir)
    assert amc[0].answers == ["142"] and amc[0].extra["answer_raw"] == 142.0
    minerva = load_problems("minerva", data_dir=shared_data_dir)
    assert minerva[0].answers == ["9.6"] and max(len(p.answers) for p in minerva) >= 2
    # MATH train has null and empty answers: the error names the first one; skip mode drops all four.
    with pytest.raises(ValueError, match=r"train/math\.json row 886: field 'answer' is null"):
        load_problems("math", data_dir=shared_data_dir, split="train")
    assert len(load_problems("math", data_dir=shared_data_dir, split="train", on_malformed="skip")) == 7470


def test_integral_float_gold_is_accepted_by_the_reward(tmp_path):
    """AMC's 142.0 becomes "142"; the reward must accept a model's 142 against it (and 142.0 too)."""
    rewards = pytest.importorskip("deepscaler.rewards")
    if not hasattr(rewards, "is_equivalent"):
        pytest.skip("deepscaler.rewards.is_equivalent not available yet")
    gold = load_problems(_write_json(tmp_path / "amc.json", [{"problem": "Q", "answer": 142.0}]))[0].gold
    assert gold == "142"
    assert rewards.is_equivalent("142", gold)
    assert rewards.is_equivalent("142.0", gold)
    assert not rewards.is_equivalent("143", gold)


def test_hub_ids_go_through_load_dataset(monkeypatch, capsys):
    """No network here: stand in for the Hub call and check the id, the split choice and the error path."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        if name == "owner/missing":
            raise ConnectionError("offline")
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(
            [{"problem": "Q", "answer": "5", "solution": "..."}])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems = load_problems("agentica-org/DeepScaleR-Preview-Dataset", split="test")
    assert calls == ["agentica-org/DeepScaleR-Preview-Dataset"]
    assert [(p.id, p.answers, p.source) for p in problems] == [
        ("agentica-org/DeepScaleR-Preview-Dataset-0", ["5"], "agentica-org/DeepScaleR-Preview-Dataset")]
    assert "no 'test' split; using its only split 'train'" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"hub:owner/missing: could not load .*ConnectionError.*local file"):
        load_problems("owner/missing")
