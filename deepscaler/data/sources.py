"""Where a named problem set comes from: a data folder, the local cache, or the public Hugging Face Hub.

``aime``, ``amc``, ``math``, ``minerva``, ``olympiad_bench`` (test) and ``deepscaler`` (train) resolve in this
order, first match wins:

1. the data folder given by ``--data-dir`` / ``data.data_dir``, else env ``DEEPSCALER_DATA_DIR``:
   ``<dir>/<split>/<name>.json`` (DeepScaleR's own layout; .jsonl and .parquet too);
2. the local cache, ``<cache>/data/<split>/<name>.json`` with ``<cache>`` = env ``DEEPSCALER_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/deepscaler``, else ``~/.cache/deepscaler``;
3. the public Hub dataset of ``HUB_SOURCES`` (``datasets.load_dataset``), its columns mapped to DeepScaleR's
   ``problem``/``answer``; the mapped rows are written to the cache, so the next run reads step 2.

``docs/data.md`` lists the Hub datasets and how each differs from DeepScaleR's files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "DEEPSCALER_DATA_DIR"
CACHE_DIR_ENV = "DEEPSCALER_CACHE_DIR"
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubSource:
    """A public Hub dataset holding one of DeepScaleR's named sets, and how its columns map to ours."""

    repo: str
    """Hub dataset id."""
    hub_split: str
    """The split of the Hub dataset that holds the problems."""
    problem: str
    """Column with the problem statement (becomes ``problem``)."""
    answer: str
    """Column with the final answer (becomes ``answer``; a list column keeps every alternative)."""
    rows: int
    """Problems the Hub dataset holds (the test below checks fixtures of this shape, not the count)."""
    config: str | None = None
    """Hub configuration (subset) name, if the dataset has several."""


# (split, name) -> Hub source. The names are DeepScaleR's (TestDataset / TrainDataset enums).
HUB_SOURCES: dict[tuple[str, str], HubSource] = {
    ("test", "aime"): HubSource("HuggingFaceH4/aime_2024", "train", "problem", "answer", 30),
    ("test", "amc"): HubSource("AI-MO/aimo-validation-amc", "train", "problem", "answer", 83),
    ("test", "math"): HubSource("HuggingFaceH4/MATH-500", "test", "problem", "answer", 500),
    ("test", "minerva"): HubSource("math-ai/minervamath", "test", "question", "answer", 272),
    ("test", "olympiad_bench"): HubSource("Hothan/OlympiadBench", "train", "question", "final_answer", 675,
                                          config="OE_TO_maths_en_COMP"),
    ("train", "deepscaler"): HubSource("agentica-org/DeepScaleR-Preview-Dataset", "train", "problem", "answer",
                                       40315),
}


class DataNotFoundError(FileNotFoundError):
    """A named problem set was found nowhere; the message names the three ways to provide it."""


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The cache folder (``<cache>/data`` holds problem sets, ``<cache>/logs`` stray log records)."""
    env = os.environ if env is None else env
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "deepscaler"


def resolve_data_dir(data_dir: str | os.PathLike | None = None,
                     env: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """The data folder the user gave, and from where: the argument (``--data-dir`` / ``data.data_dir``), else
    env ``DEEPSCALER_DATA_DIR``, else None (then only the cache and the Hub are tried)."""
    env = os.environ if env is None else env
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir / data.data_dir"
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser(), f"env {DATA_DIR_ENV}"
    return None, f"no --data-dir, {DATA_DIR_ENV} unset"


def named_file(name: str, split: str, folder: Path) -> Path | None:
    """``<folder>/<split>/<name>.{json,jsonl,parquet}`` (or DeepScaleR's converted ``<folder>/<name>.parquet`` for
    test sets), whichever exists first."""
    candidates = [folder / split / f"{name}{suffix}" for suffix in FILE_SUFFIXES]
    if split == "test":
        candidates.append(folder / f"{name}.parquet")
    return next((c for c in candidates if c.is_file()), None)


@dataclass
class Located:
    """Where a named set was found: a file to read, or rows already fetched from the Hub."""

    path: Path | None
    rows: list[dict[str, Any]] | None
    where: str
    """Shown in messages and ``Problem`` errors: a file path or ``hub:<id>``."""
    reason: str


def locate(name: str, split: str, data_dir: str | os.PathLike | None = None,
           env: Mapping[str, str] | None = None) -> Located:
    """Find a named set in the data folder, the cache, then the Hub (see the module docstring).

    Raises ``DataNotFoundError`` with what was tried and the three ways to provide the data."""
    tried: list[str] = []
    folder, folder_reason = resolve_data_dir(data_dir, env)
    if folder is not None:
        found = named_file(name, split, folder)
        if found is not None:
            return Located(found, None, str(found), f"data folder from {folder_reason}")
        tried.append(f"data folder {folder} ({folder_reason}): no {split}/{name}.json")
    else:
        tried.append(f"data folder: none given ({folder_reason})")
    cache = cache_dir(env) / "data"
    found = named_file(name, split, cache)
    if found is not None:
        return Located(found, None, str(found), "local cache")
    tried.append(f"local cache {cache}: no {split}/{name}.json")
    source = HUB_SOURCES.get((split, name))
    if source is None:
        tried.append(f"Hugging Face Hub: no public dataset is known for '{name}' ({split})")
    elif hub_offline():
        tried.append(f"Hugging Face Hub {source.repo}: not contacted (offline mode: HF_HUB_OFFLINE / "
                     "HF_DATASETS_OFFLINE)")
    else:
        try:
            rows = fetch_hub_rows(source)
        except Exception as error:  # noqa: BLE001 - any failure (offline, unknown id, schema) is reported once
            logger.debug("fetching %s from the Hub failed", source.repo, exc_info=True)
            tried.append(f"Hugging Face Hub {source.repo}: {type(error).__name__}: {_first_line(error)}")
        else:
            target = cache / split / f"{name}.json"
            saved = _write_cache(target, rows)
            return Located(target if saved else None, None if saved else rows, f"hub:{source.repo}",
                           "downloaded from the Hugging Face Hub" + (f", saved to {target}" if saved else ""))
    raise DataNotFoundError(no_data_message(name, split, tried, cache))


def no_data_message(name: str, split: str, tried: list[str], cache: Path) -> str:
    """The one message for a named set found nowhere: what was tried and the three ways to provide it."""
    source = HUB_SOURCES.get((split, name))
    hub = (f"let it download once from the Hugging Face Hub ({source.repo}; needs network access, HF_HUB_OFFLINE "
           "unset); it is then cached" if source else "give a file path or a Hub dataset id instead of the name")
    return (f"dataset '{name}' (split {split}) not found. Tried: " + "; ".join(tried) + ". "
            f"Provide it one of three ways: (1) --data-dir DIR (or {DATA_DIR_ENV}=DIR) where DIR/{split}/{name}.json "
            "is DeepScaleR's file (its repository's deepscaler/data folder); (2) put that file in the local cache, "
            f"{cache / split / (name + '.json')}; (3) {hub}.")


def hub_offline() -> bool:
    """True when the Hugging Face libraries are in offline mode (their flags, read now, not at their import)."""
    import huggingface_hub  # imported with the Hub code that needs it, not when a data folder answers

    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return huggingface_hub.is_offline_mode() or any(
        os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE") for flag in flags)


def fetch_hub_rows(source: HubSource) -> list[dict[str, Any]]:
    """The Hub dataset's rows with ``problem`` and ``answer`` columns (the other columns kept as they are)."""
    import datasets  # heavy (pyarrow, fsspec); only a Hub fetch needs it

    table = datasets.load_dataset(source.repo, source.config, split=source.hub_split)
    rows = []
    for row in table.to_list() if hasattr(table, "to_list") else list(table):
        if source.problem not in row or source.answer not in row:
            raise KeyError(f"{source.repo} has no '{source.problem}'/'{source.answer}' column (columns: "
                           f"{', '.join(row)}); the dataset changed, see docs/data.md")
        mapped = {k: v for k, v in row.items() if k not in (source.problem, source.answer)}
        rows.append({"problem": row[source.problem], "answer": row[source.answer], **mapped})
    return rows


def _write_cache(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Write the mapped rows as a DeepScaleR-style JSON list (atomically); False when the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, ensure_ascii=False, default=str), encoding="utf-8")
        tmp.replace(path)
        return True
    except OSError:
        logger.debug("could not write the cache file %s", path, exc_info=True)
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no details"
