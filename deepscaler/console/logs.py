"""Where every log record goes: deepscaler's own messages to the console, everything else to ``RUN_DIR/logs/``.

vLLM, transformers, huggingface_hub and datasets log a lot at INFO/WARNING (engine start-up, weight reloads,
prefix-cache resets), Python warnings (FutureWarning) and progress bars (checkpoint shards). By default
(``configure(verbose=False)``) the console shows only deepscaler's messages and errors from anyone; every
record, ours included, is kept in the run's log file, so nothing is lost. ``verbose=True`` (``deepscaler -v``)
shows the third-party records live as well.

Records logged before the run folder is known (model loading, the engine starting) are held in memory and
written to the log file when ``open_run_log`` attaches it. With data parallelism only rank 0 writes to the
console; every rank writes its own log file.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

OURS = "deepscaler"
LOG_DIR = "logs"
# Libraries that own a handler or a progress bar of their own; their loggers are routed through ours.
THIRD_PARTY = ("vllm", "transformers", "huggingface_hub", "datasets")
# vLLM reads these when it is imported: no handler of its own (its records propagate to ours), INFO and up.
VLLM_ENV = {"VLLM_CONFIGURE_LOGGING": "0", "VLLM_LOGGING_LEVEL": "INFO"}
FILE_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"
THIRD_PARTY_CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
BUFFER_RECORDS = 100_000
"""Records held before a log file is attached (a whole model load and engine start fit many times over)."""

# vLLM's in-place weight reload warns "<layer>: Failed to load weights" for every module whose tensors were
# all left unloaded. Rotary embeddings hold only a non-persistent cos/sin cache derived from the config (in no
# checkpoint, never sent by a trainer); vLLM puts the cache it had back in place, so the warning is noise.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
RELOAD_WARNING = "%s: Failed to load weights"
ROTARY_NOTE = ("vLLM's in-place weight reload reports '{layer}: Failed to load weights' on every sync. Harmless: "
               "the layer holds only the cos/sin cache computed from the model config (a non-persistent buffer, "
               "in no checkpoint), which vLLM's reload counts as a tensor to load; it puts the cache it already "
               "had back in place, unchanged. The weight-sync check compares log-probs after every sync. "
               "Further occurrences are not logged.")


@dataclass
class _State:
    configured: bool = False
    verbose: bool = False
    rank: int = 0
    console: logging.Handler | None = None
    buffer: _BufferHandler | None = None
    files: list[logging.Handler] = field(default_factory=list)
    keep_unattached: bool = False


_state = _State()


class _RankFilter(logging.Filter):
    """Stamps ``record.rank`` (used by the file format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = _state.rank
        return True


class _ConsoleFilter(logging.Filter):
    """What reaches the console: rank 0 only; ours at INFO (DEBUG when verbose); others at ERROR (INFO when
    verbose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state.rank != 0 or not getattr(record, "console", True):  # extra={"console": False}: file only
            return False
        if is_ours(record.name):
            return record.levelno >= (logging.DEBUG if _state.verbose else logging.INFO)
        return record.levelno >= (logging.INFO if _state.verbose else logging.ERROR)


class _ConsoleFormatter(logging.Formatter):
    """Our messages with a ``[deepscaler]`` prefix unless they carry their own (``[deepscaler.data] …``); others
    with level and logger."""

    def __init__(self) -> None:
        super().__init__()
        self._third_party = logging.Formatter(THIRD_PARTY_CONSOLE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if is_ours(record.name):
            message = record.getMessage()
            return message if message.startswith("[") else f"[{OURS}] {message}"
        return self._third_party.format(record)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture, a redirected file, a terminal)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler reads self.stream on every emit
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always follows sys.stdout
        pass


class _BufferHandler(logging.Handler):
    """Holds records until a log file is attached (the newest ``BUFFER_RECORDS``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: deque[logging.LogRecord] = deque(maxlen=BUFFER_RECORDS)

    def emit(self, record: logging.LogRecord) -> None:
        if not _state.files:  # while a run log is open, records go there only
            self.records.append(record)


class _RotaryReloadNote(logging.Filter):
    """Turns vLLM's first rotary-embedding reload warning into one INFO note saying why it is harmless, and drops
    the repeats (one per weight sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        layer = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        if record.msg != RELOAD_WARNING or not str(layer).endswith("RotaryEmbedding"):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = ROTARY_NOTE.format(layer=layer), ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def is_ours(logger_name: str) -> bool:
    return logger_name == OURS or logger_name.startswith(OURS + ".")


def configure(verbose: bool = False, keep_unattached: bool = False) -> None:
    """Route all logging (call once, early: before vLLM is imported if possible). Idempotent; a second call only
    changes ``verbose``. ``keep_unattached`` (the command line sets it): at exit, records that never reached a run
    log are written under the cache folder (library use keeps them in memory only)."""
    _state.verbose = verbose
    _state.keep_unattached = _state.keep_unattached or keep_unattached
    for name, value in VLLM_ENV.items():
        os.environ.setdefault(name, value)
    if _state.configured:
        _route_third_party()
        return
    root = logging.getLogger()
    root.setLevel(logging.INFO)  # other libraries' DEBUG records (matplotlib's font search, ...) are not kept
    logging.getLogger(OURS).setLevel(logging.DEBUG)
    _state.console = _StdoutHandler()
    _state.console.addFilter(_ConsoleFilter())
    _state.console.setFormatter(_ConsoleFormatter())
    _state.buffer = _BufferHandler()
    for handler in (_state.console, _state.buffer):
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn (FutureWarning, ...) become records of the py.warnings logger
    logging.getLogger(RELOAD_LOGGER).addFilter(_RotaryReloadNote())
    _route_third_party()
    _state.configured = True
    atexit.register(_flush_unattached)  # acts only when keep_unattached was asked for


def _route_third_party() -> None:
    """Send the libraries' records through the root handlers and switch off their progress bars.

    Each library's own switch: transformers/huggingface_hub/datasets keep a handler on their root logger and do
    not propagate; vLLM configures a handler at import unless VLLM_CONFIGURE_LOGGING=0 (set by ``configure``;
    if vLLM was imported earlier its handler is removed here)."""
    for name in THIRD_PARTY:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True
        # INFO and up are kept (in the file); DEBUG from these libraries is too much even for a log file.
        library.setLevel(logging.INFO)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG)
    if _state.verbose:
        return
    # imported here: the CLI imports this module for `deepscaler --help`, which must not load transformers (nor
    # datasets, which is optional)
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # datasets is only needed for Hub / save_to_disk data
        pass


@dataclass
class RunLog:
    """The log file of one run (``RUN_DIR/logs/<name>.log``; other ranks ``<name>.rank<N>.log``)."""

    path: Path
    handler: logging.Handler | None

    def close(self) -> None:
        """Detach the file (records go back to the memory buffer until another run log is opened)."""
        if self.handler is None:
            return
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        if self.handler in _state.files:
            _state.files.remove(self.handler)
        self.handler = None


def open_run_log(run_dir: str | os.PathLike, name: str, rank: int = 0) -> RunLog:
    """Attach ``RUN_DIR/logs/<name>.log`` for this rank and write the records held so far into it.

    While a run log is open, a nested call (e.g. the training loop inside the demo) returns the open file
    instead of starting a second one, so one run keeps one log."""
    configure(_state.verbose)
    _state.rank = rank
    if _state.files:
        return RunLog(Path(_state.files[-1].baseFilename), None)
    folder = Path(run_dir) / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.log" if rank == 0 else f"{name}.rank{rank}.log")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.addFilter(_RankFilter())
    _drain_buffer_into(handler)
    logging.getLogger().addHandler(handler)
    _state.files.append(handler)
    return RunLog(path, handler)


def _drain_buffer_into(handler: logging.Handler) -> None:
    if _state.buffer is None:
        return
    while _state.buffer.records:
        handler.handle(_state.buffer.records.popleft())


def _flush_unattached() -> None:
    """At exit, records that never reached a run log (a command without a run folder) go to a file under the
    cache folder rather than nowhere."""
    if not _state.keep_unattached or _state.buffer is None or not _state.buffer.records:
        return
    folder = Path(os.environ.get("DEEPSCALER_LOG_DIR") or Path.home() / ".cache" / "deepscaler" / LOG_DIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(folder / f"deepscaler-{os.getpid()}.log", encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    _drain_buffer_into(handler)
    handler.close()


def set_rank(rank: int) -> None:
    """This process's data-parallel rank (only rank 0 writes to the console)."""
    if not _state.configured:
        configure(_state.verbose)
    _state.rank = rank


def is_verbose() -> bool:
    return _state.verbose


def say(message: str, prefix: str | None = "deepscaler") -> None:
    """A decision or phase line on the console (rank 0) and in the log file: ``[prefix] message``."""
    if not _state.configured:
        configure(_state.verbose)
    logging.getLogger(OURS).info(f"[{prefix}] {message}" if prefix else message)


def _reset_for_tests() -> None:
    """Remove every handler this module added (tests configure and reconfigure in one process)."""
    root = logging.getLogger()
    for handler in [_state.console, _state.buffer, *_state.files]:
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
    logging.captureWarnings(False)
    reload_logger = logging.getLogger(RELOAD_LOGGER)
    for flt in list(reload_logger.filters):
        if isinstance(flt, _RotaryReloadNote):
            reload_logger.removeFilter(flt)
    _state.__init__()
