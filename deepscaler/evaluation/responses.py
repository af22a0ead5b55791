"""Per-problem response records in JSONL, appended as soon as each problem is scored.

One line per problem; a rerun reads the file, skips the problems already there, and appends the rest. A
crash can only cut the last line short: that partial line is removed on the next open, so a run killed at any
byte and rerun loses and duplicates no response. Small whole files (settings, results) are replaced atomically
with :func:`write_text_atomic`, so a kill never leaves one half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers see the old or the new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ResponseStore:
    """``<output-dir>/<dataset>/responses.jsonl``: read finished records, append new ones durably."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished records by problem id. A truncated final line is cut off the file (with a note)."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        pieces = data.split(b"\n")  # the last piece is b"" when the file ends with a newline
        offset = 0
        for index, piece in enumerate(pieces):
            if piece.strip():
                try:
                    record = json.loads(piece)
                    if not isinstance(record, dict) or "id" not in record:
                        raise ValueError("not an object with an 'id'")
                except ValueError as err:
                    if any(rest.strip() for rest in pieces[index + 1:]):
                        raise ValueError(f"{self.path} line {index + 1}: unreadable record ({err}); fix or delete "
                                         "that line, or rerun without resume (--no-resume) to start over") from None
                    print(f"[deepscaler.eval] {self.path} line {index + 1}: cut-off record from an interrupted "
                          "run; dropping it (that problem is generated again)", flush=True)
                    with self.path.open("r+b") as handle:
                        handle.truncate(offset)
                    return records
                records[record["id"]] = record
            offset += len(piece) + 1
        if data and not data.endswith(b"\n"):  # a complete last record that lost only its newline
            with self.path.open("ab") as handle:
                handle.write(b"\n")
        return records

    def reset(self) -> None:
        """Start over: remove the file."""
        self.close()
        self.path.unlink(missing_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line and flush it to the OS."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def sync(self) -> None:
        """fsync what was appended (called once per chunk, so a machine crash loses at most one chunk)."""
        if self._handle is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
