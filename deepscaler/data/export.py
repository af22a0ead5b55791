"""Write problems in DeepScaleR's (verl's) parquet row format, for tools that expect it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from deepscaler.data.problems import Problem
from deepscaler.data.prompts import chat_messages


def to_verl_rows(problems: Sequence[Problem], split: str) -> list[dict[str, Any]]:
    """One verl row per problem: data_source "" (selects the DeepScaleR reward), the chat prompt, the
    ground truth as stored (``extra['answer_raw']``; the normalised string lists when the stored types are
    mixed, which one Parquet column cannot hold), and ``extra_info`` {split, index}."""
    truths = [problem.extra.get("answer_raw", problem.gold) for problem in problems]
    kinds = {list if isinstance(t, (list, tuple)) else str if isinstance(t, str) else float for t in truths}
    if len(kinds) > 1:  # a Parquet column has one type: fall back to the normalised lists of strings
        truths = [list(problem.answers) for problem in problems]
    rows = []
    for index, (problem, truth) in enumerate(zip(problems, truths, strict=True)):
        rows.append({
            "data_source": "",
            "prompt": chat_messages(problem.problem),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": split, "index": index},
        })
    return rows


def write_verl_parquet(problems: Sequence[Problem], path: str | os.PathLike, split: str) -> None:
    """Save ``to_verl_rows`` as a parquet file (``load_problems`` reads it back)."""
    # local: pyarrow is heavy and only this export needs it (reading data folders does not)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(to_verl_rows(problems, split)), str(path))
