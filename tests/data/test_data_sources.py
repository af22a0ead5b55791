"""Named sets resolve data folder -> local cache -> Hub, offline: the Hub is a fixture with each dataset's columns."""

from __future__ import annotations

import json

import pytest

from deepscaler.data import HUB_SOURCES, DataNotFoundError, load_problems, sources

REAL_FETCH = sources.fetch_hub_rows

# Two rows per Hub dataset with exactly its columns and types (as its dataset card lists them).
HUB_FIXTURES = {
    "HuggingFaceH4/aime_2024": [
        {"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk...", "solution": "...",
         "answer": "204", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
         "year": "2024"},
        {"id": 61, "problem": "There exist real numbers $x$ and $y$...", "solution": "...", "answer": "025",
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_2", "year": "2024"},
    ],
    "AI-MO/aimo-validation-amc": [
        {"id": 0, "problem": "$\\frac{m}{n}$ is the Irreducible fraction value of ...", "answer": 142.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2022_AMC_12A_Problems/Problem_18"},
        {"id": 1, "problem": "How many positive perfect squares less than $2023$ ...", "answer": 11.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_4"},
    ],
    "HuggingFaceH4/MATH-500": [
        {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
         "solution": "... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"},
        {"problem": "Compute $1+1$.", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Prealgebra",
         "level": 1, "unique_id": "test/prealgebra/1.json"},
    ],
    "math-ai/minervamath": [
        {"question": "If the Bohr energy levels scale as $Z^{2}$ ...", "answer": "9.6"},
        {"question": "Preamble: ... Compute the temperature.", "answer": "1.5e7"},
    ],
    "Hothan/OlympiadBench": [
        {"id": 1606, "question": "Xenia and Sergey play the following game. ...",
         "solution": ["Sergey can determine Xenia's number in 2 but not fewer moves. ..."],
         "final_answer": ["2"], "context": None, "image_1": None, "image_2": None, "image_3": None,
         "image_4": None, "image_5": None, "modality": "Text-only", "difficulty": "Competition",
         "is_multiple_answer": False, "unit": None, "answer_type": "Numerical", "error": None,
         "question_type": "Open-ended", "subfield": "Combinatorics", "subject": "Math", "language": "English"},
        {"id": 1607, "question": "Find all pairs $(x, y)$ ...", "solution": ["..."],
         "final_answer": ["$(1,2)$", "$(2,1)$"], "context": None, "image_1": None, "image_2": None,
         "image_3": None, "image_4": None, "image_5": None, "modality": "Text-only", "difficulty": "Competition",
         "is_multiple_answer": True, "unit": None, "answer_type": "Tuple", "error": None,
         "question_type": "Open-ended", "subfield": "Algebra", "subject": "Math", "language": "English"},
    ],
    "agentica-org/DeepScaleR-Preview-Dataset": [
        {"problem": "Let $a_n=6^{n}+8^{n}$. Determine the remainder upon dividing $a_{83}$ by $49$.",
         "answer": "35", "solution": "..."},
        {"problem": "Compute $2+2$.", "answer": "4", "solution": ""},
    ],
}
EXPECTED_GOLDS = {
    ("test", "aime"): ["204", "025"], ("test", "amc"): ["142", "11"],
    ("test", "math"): ["\\left( 3, \\frac{\\pi}{2} \\right)", "2"], ("test", "minerva"): ["9.6", "1.5e7"],
    ("test", "olympiad_bench"): ["2", ["$(1,2)$", "$(2,1)$"]], ("train", "deepscaler"): ["35", "4"],
}


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` answering from HUB_FIXTURES (and recording each call), the real fetch restored."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(repo, config=None, split=None):
        calls.append((repo, config, split))
        return datasets.Dataset.from_list(HUB_FIXTURES[repo])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(sources, "fetch_hub_rows", REAL_FETCH)
    _online(monkeypatch)
    return calls


def _online(monkeypatch):
    import huggingface_hub

    for flag in (sources.DATA_DIR_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)


@pytest.mark.parametrize(("split", "name"), sorted(HUB_SOURCES))
def test_named_set_from_the_hub_is_mapped_and_cached(fake_hub, offline_empty_cache, split, name):
    source = HUB_SOURCES[(split, name)]
    problems = load_problems(name, split=split)
    assert fake_hub == [(source.repo, source.config, source.hub_split)]
    assert [p.gold for p in problems] == EXPECTED_GOLDS[(split, name)]
    assert problems[0].problem == HUB_FIXTURES[source.repo][0][source.problem]
    cached = offline_empty_cache / "data" / split / f"{name}.json"
    rows = json.loads(cached.read_text())
    assert [r["problem"] for r in rows] == [p.problem for p in problems]
    # the second load reads the cache: no Hub call, same problems
    again = load_problems(name, split=split)
    assert len(fake_hub) == 1 and [p.gold for p in again] == [p.gold for p in problems]


def test_resolution_order_data_dir_then_cache_then_hub(fake_hub, offline_empty_cache, tmp_path, monkeypatch):
    def write(folder, answer):
        (folder / "test").mkdir(parents=True, exist_ok=True)
        (folder / "test" / "aime.json").write_text(json.dumps([{"problem": "Q", "answer": answer}]))

    assert load_problems("aime")[0].gold == "204"  # nothing local: the Hub (now cached)
    write(offline_empty_cache / "data", "from the cache")
    assert load_problems("aime")[0].gold == "from the cache"
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env_dir"))
    write(tmp_path / "env_dir", "from the env folder")
    assert load_problems("aime")[0].gold == "from the env folder"
    write(tmp_path / "arg_dir", "from --data-dir")
    assert load_problems("aime", data_dir=tmp_path / "arg_dir")[0].gold == "from --data-dir"
    # a given folder without the file falls through to the next source
    assert load_problems("aime", data_dir=tmp_path / "empty")[0].gold == "from the cache"
    assert len(fake_hub) == 1


def test_no_data_and_no_network_gives_one_message_with_the_three_ways(offline_empty_cache, monkeypatch):
    _online(monkeypatch)  # online as far as the flags say, but the network is down (the fetch raises)
    with pytest.raises(DataNotFoundError) as info:
        load_problems("aime")
    message = str(info.value)
    assert message.startswith("dataset 'aime' (split test) not found.")
    assert "(1) --data-dir DIR (or DEEPSCALER_DATA_DIR=DIR)" in message
    assert f"(2) put that file in the local cache, {offline_empty_cache / 'data' / 'test' / 'aime.json'}" in message
    assert "(3) let it download once from the Hugging Face Hub (HuggingFaceH4/aime_2024" in message
    assert "ConnectionError: no network in tests" in message  # what the Hub attempt said
    assert info.value.__cause__ is None and "\n" not in message  # one message, no chained traceback


def test_offline_flag_skips_the_hub_at_once(monkeypatch, fake_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"HuggingFaceH4/MATH-500: not contacted \(offline mode"):
        load_problems("math")
    assert fake_hub == []


def test_a_name_without_a_hub_source_says_so(monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(DataNotFoundError, match=r"no public dataset is known for 'still'.*give a file path"):
        load_problems("still", split="train")


def test_hub_schema_change_is_reported_not_guessed(monkeypatch, offline_empty_cache):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda repo, config=None, split=None: datasets.Dataset.from_list([{"text": "Q", "label": 1}]))
    monkeypatch.setattr(sources, "fetch_hub_rows", REAL_FETCH)
    _online(monkeypatch)
    with pytest.raises(DataNotFoundError, match=r"KeyError: .*has no 'problem'/'answer' column \(columns: text, label"):
        load_problems("aime")


def test_cache_folder_follows_env(monkeypatch, tmp_path):
    assert sources.cache_dir({"DEEPSCALER_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert sources.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "deepscaler"
    assert sources.cache_dir({}).parts[-2:] == (".cache", "deepscaler")
