"""``responses.jsonl`` under a kill at every byte: the rerun keeps each finished record once, redoes the cut one,
and ends with exactly one record per problem."""

from __future__ import annotations

import json

from deepscaler.evaluation.responses import ResponseStore, write_text_atomic


def _records():
    # multi-byte characters: a cut can fall inside one (the bytes then do not even decode)
    return [{"id": f"p{i}", "responses": [f"answer {i} — π≈3.14 \\boxed{{{i}}}"], "scores": [float(i % 2)]}
            for i in range(4)]


def test_a_kill_at_any_byte_loses_and_duplicates_nothing(tmp_path):
    full_path = tmp_path / "full.jsonl"
    store = ResponseStore(full_path)
    for record in _records():
        store.append(record)
    store.close()
    blob = full_path.read_bytes()
    line_ends = [i + 1 for i, byte in enumerate(blob) if byte == ord("\n")]
    path = tmp_path / "responses.jsonl"
    for cut in range(len(blob) + 1):
        path.write_bytes(blob[:cut])  # what a kill -9 after `cut` bytes leaves
        finished = ResponseStore(path).load()
        # a record survives iff its JSON is complete (its newline may be lost: that is repaired)
        complete = sum(1 for end in line_ends if end - 1 <= cut)
        assert list(finished) == [f"p{i}" for i in range(complete)], cut
        rerun = ResponseStore(path)
        for record in _records():
            if record["id"] not in finished:
                rerun.append(record)
        rerun.close()
        assert path.read_bytes() == blob, cut  # the rerun's file equals the uninterrupted run's


def test_write_text_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "settings.json"
    write_text_atomic(path, json.dumps({"n": 1}))
    write_text_atomic(path, json.dumps({"n": 2}))
    assert json.loads(path.read_text()) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]
