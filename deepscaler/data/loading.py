"""Find and read problem sets: DeepScaleR names, JSON/JSONL/Parquet files, ``datasets`` folders and Hub ids.

``load_problems("aime")`` reads ``<data_dir>/test/aime.json``, else the local cache, else the public Hub dataset
that holds AIME 2024 (:mod:`deepscaler.data.sources`); ``load_problems("path/to/file.parquet")`` reads the file; a folder written by ``Dataset.save_to_disk`` is loaded with ``datasets.load_from_disk``; anything
else that looks like ``owner/name`` goes to ``datasets.load_dataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deepscaler.console.logs import say
from deepscaler.data.problems import Problem, rows_to_problems
from deepscaler.data.sources import FILE_SUFFIXES, locate

# DeepScaleR's dataset enums: TestDataset and TrainDataset, file = <split>/<lower-cased name>.json.
TEST_DATASETS = ("aime", "amc", "math", "minerva", "olympiad_bench")
TRAIN_DATASETS = ("aime", "amc", "omni_math", "olympiad", "math", "still", "deepscaler")
ALIASES = {
    "aime24": "aime", "aime2024": "aime", "aime_2024": "aime", "amc23": "amc", "amc2023": "amc",
    "math500": "math", "math-500": "math", "math_500": "math", "minerva_math": "minerva",
    "olympiadbench": "olympiad_bench", "olympiad-bench": "olympiad_bench",
}

_announced: set[str] = set()


def announce(message: str) -> None:
    """A decision or note, once per process (the same message is not repeated): on the console and in the log."""
    if message not in _announced:
        _announced.add(message)
        say(message, prefix=None)


def read_rows(path: Path) -> list[Any]:
    """Raw rows of a .json (a list of objects), .jsonl (one object a line) or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:  # {"data": [...]} style wrappers
                return lists[0]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of problem objects, got {type(data).__name__} "
                             "(DeepScaleR files are lists of {problem, answer, ...}; use .jsonl for one per line)")
        return data
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {line_no} (row {len(rows)}): invalid JSON ({err.msg}); "
                                     "each line must hold one JSON object") from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # local: heavy, only a parquet file needs it

        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported file type '{suffix}' (use .json, .jsonl, .parquet, a folder saved "
                     "with datasets' save_to_disk, or a Hub dataset id)")


def _pick_split(dataset: Any, split: str, where: str) -> Any:
    """A ``Dataset`` out of a ``DatasetDict``: the requested split, or the only one there is."""
    if not hasattr(dataset, "keys"):
        return dataset
    splits = list(dataset.keys())
    if split in splits:
        return dataset[split]
    if len(splits) == 1:
        announce(f"[deepscaler.data] {where}: no '{split}' split; using its only split '{splits[0]}'")
        return dataset[splits[0]]
    raise ValueError(f"{where}: no split '{split}' (has {', '.join(splits)}); pass split= / --split")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (
        path / "state.json").is_file()


def load_problems(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None, split: str = "test",
                  problem_key: str | None = None, answer_key: str | None = None, limit: int | None = None,
                  on_malformed: str = "error") -> list[Problem]:
    """Load a problem set as ``Problem`` records.

    spec: a DeepScaleR name (aime, amc, math, minerva, olympiad_bench; train: also omni_math, still,
        deepscaler, olympiad) read from ``<data_dir>/<split>/<name>.json``, the local cache or the Hub
        (:func:`deepscaler.data.sources.locate`); a .json/.jsonl/.parquet path;
        a folder saved with ``datasets``' ``save_to_disk``; or a Hugging Face Hub dataset id.
    data_dir: folder with test/ and train/; None: env ``DEEPSCALER_DATA_DIR`` (then the cache, then the Hub).
    split: "test" or "train" for names; the split to take from a ``datasets`` DatasetDict.
    problem_key / answer_key: column names (dots reach into nested dicts); auto-detected when None.
    limit: keep only the first ``limit`` problems (smoke runs).
    on_malformed: "error" (default) raises naming file/row/field; "skip" drops bad rows with a printed count.
    """
    text = str(spec)
    path = Path(text).expanduser()
    name = ALIASES.get(text.lower(), text.lower())
    bare = "/" not in text and "\\" not in text and not path.suffix
    # a known name wins over a same-named folder of the working directory (e.g. the deepscaler package itself)
    if bare and (name in TEST_DATASETS + TRAIN_DATASETS or not path.exists()):
        located = locate(name, split, data_dir)
        announce(f"[deepscaler.data] {name} ({split}): {located.where} ({located.reason})")
        rows = read_rows(located.path) if located.path is not None else located.rows
        source, where = name, located.where
    elif path.is_file():
        rows, source, where = read_rows(path), path.stem, str(path)
    elif path.is_dir():
        rows, source, where = _read_folder(path, split), path.name, str(path)
    elif path.suffix.lower() in FILE_SUFFIXES or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{text}: no such file or folder (give an existing path, a dataset name such as "
                                f"{', '.join(TEST_DATASETS)}, or a Hub dataset id owner/name)")
    else:
        rows, source, where = _read_hub(text, split), text, f"hub:{text}"
    if limit is not None:
        rows = rows[: max(limit, 0)]
    problems, skipped = rows_to_problems(rows, source, where, problem_key, answer_key, on_malformed)
    if skipped:
        announce(f"[deepscaler.data] {where}: skipped {skipped} malformed row(s) of {len(rows)}")
    return problems


def _read_folder(path: Path, split: str) -> list[Any]:
    """A ``save_to_disk`` folder via ``load_from_disk``; any other folder of data files via ``load_dataset``."""
    import datasets  # local: heavy (pyarrow, fsspec), only a dataset folder needs it

    if _is_saved_dataset(path):
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(str(path))
    return _pick_split(dataset, split, str(path)).to_list()


def _read_hub(dataset_id: str, split: str) -> list[Any]:
    """A Hub dataset through ``datasets.load_dataset`` (needs network access or a local HF cache)."""
    import datasets  # local: heavy (pyarrow, fsspec), only a Hub dataset needs it

    try:
        dataset = datasets.load_dataset(dataset_id)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(f"hub:{dataset_id}: could not load with datasets.load_dataset ({type(err).__name__}: {err}). "
                       "Fix: check the id and network access, or download it and pass the local file/folder") from err
    return _pick_split(dataset, split, f"hub:{dataset_id}").to_list()
