"""A process pool whose ``map`` no item can block: per-item deadlines, kill and respawn. It knows nothing about
what it runs (the reward hands it its grading function).

``concurrent.futures`` cannot cancel a running task, and one crashed worker breaks a whole
``ProcessPoolExecutor``. Here each worker owns a pipe and runs one item at a time; the parent records when each
item started, kills a worker that overruns the deadline (a hang inside C code that no signal interrupts) and starts
a new one. An item whose worker was killed, died, or raised gets the fallback value; the others are unaffected.

Workers are started with ``forkserver`` (children fork from a clean server process that preloads the given
modules, so a replacement starts in milliseconds) or ``spawn``; never ``fork`` by default, because forking a
trainer that holds torch threads can deadlock. Override with ``DEEPSCALER_REWARD_START_METHOD=spawn|forkserver|fork``
or ``get_pool(start_method=...)``.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

START_METHOD_ENV = "DEEPSCALER_REWARD_START_METHOD"
_MAX_START_FAILURES = 3
_START_TIMEOUT_S = 120.0


def default_num_workers() -> int:
    """Pool size when not given: the CPUs this process may use, at most 16."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(16, available))


def choose_start_method(request: str | None = None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """``(start_method, reason)`` for the workers: the request, the env override, else forkserver."""
    env = os.environ if env is None else env
    available = mp.get_all_start_methods()
    for source, value in (("argument", request), (START_METHOD_ENV, env.get(START_METHOD_ENV))):
        if value:
            if value not in available:
                raise ValueError(f"{source}: start method {value!r} is not available here; use one of {available}.")
            return value, f"requested by {source}"
    if "forkserver" in available:
        return "forkserver", "forkserver available: safe next to torch threads, fast respawn from a preloaded server"
    return "spawn", "forkserver unavailable on this platform: spawn is the safe fallback"


def _worker_main(conn: Connection, initializer: Callable[[], None] | None) -> None:
    """Worker loop: run ``(task_id, fn, item)`` messages until ``None`` or a closed pipe; answer
    ``(task_id, ok, fn(item))``."""
    if initializer is not None:
        try:
            initializer()
        except Exception:  # a failed warm-up must not stop the worker: the work itself may still succeed
            pass
    conn.send(("ready", True, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, fn, item = message
        try:
            reply = (task_id, True, fn(item))
        except Exception:
            reply = (task_id, False, None)  # the parent keeps the fallback value
        conn.send(reply)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    ready: bool = False
    task: int | None = None
    started_at: float = 0.0
    spawned_at: float = field(default_factory=time.monotonic)


class BoundedPool:
    """Fixed-size pool of workers with a bounded-time ``map`` (use :func:`get_pool` for the shared one)."""

    def __init__(self, num_workers: int, start_method: str | None = None, preload: Sequence[str] = (),
                 initializer: Callable[[], None] | None = None):
        """``preload``: modules the forkserver imports once; ``initializer``: run by each worker before its first
        item (a warm-up), outside any deadline."""
        if num_workers < 1:
            raise ValueError(f"BoundedPool: num_workers must be >= 1, got {num_workers}.")
        self.start_method, reason = choose_start_method(start_method)
        logger.info("worker pool: %d workers, start method %s (%s)", num_workers, self.start_method, reason)
        self._ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver" and preload:
            self._ctx.set_forkserver_preload(list(preload))
        self.num_workers = num_workers
        self._initializer = initializer
        self._lock = threading.Lock()
        self._start_failures = 0
        self.killed = 0  # workers killed for overrunning their deadline (observable in tests/metrics)
        self._workers = [self._spawn() for _ in range(num_workers)]

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], deadline_s: float, fallback: Any) -> list[Any]:
        """``[fn(item) for item in items]`` in the workers, order kept; an item not done within ``deadline_s`` of
        its start, or whose worker crashed or raised, is ``fallback``. ``fn`` must be a module-level function."""
        results: list[Any] = [fallback] * len(items)
        pending = deque(range(len(items)))
        with self._lock:
            while pending or any(w.task is not None for w in self._workers):
                for worker in self._workers:
                    if worker.ready and worker.task is None and pending:
                        task_id = pending.popleft()
                        worker.task, worker.started_at = task_id, time.monotonic()
                        try:
                            worker.conn.send((task_id, fn, items[task_id]))
                        except (OSError, ValueError):
                            worker.task = None
                            pending.appendleft(task_id)
                            self._replace(self._workers.index(worker), kill=False)
                self._collect(results, deadline_s)
        return results

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child_conn, self._initializer), daemon=True,
                                    name="deepscaler-pool-worker")
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    def _replace(self, index: int, *, kill: bool) -> None:
        worker = self._workers[index]
        if kill:
            self.killed += 1
        _stop_process(worker.process, worker.conn)
        if not worker.ready:
            self._start_failures += 1
            if self._start_failures > _MAX_START_FAILURES:
                raise RuntimeError(
                    "worker pool: workers die before they are ready; guard your script with "
                    "`if __name__ == '__main__':` (spawn/forkserver re-import it) or set "
                    f"{START_METHOD_ENV}=spawn."
                )
        self._workers[index] = self._spawn()

    def _collect(self, results: list[Any], deadline_s: float) -> None:
        now = time.monotonic()
        waits = [w.started_at + deadline_s - now for w in self._workers if w.task is not None]
        starts = [w.spawned_at + _START_TIMEOUT_S - now for w in self._workers if not w.ready]
        timeout = max(0.0, min(waits + starts + [1.0]))
        readable = wait([w.conn for w in self._workers], timeout=timeout)
        for index, worker in enumerate(list(self._workers)):
            if worker.conn in readable:
                try:
                    task_id, ok, value = worker.conn.recv()
                except (EOFError, OSError):
                    self._replace(index, kill=False)  # crashed: its item keeps the fallback value
                    continue
                if task_id == "ready":
                    worker.ready = True
                    self._start_failures = 0
                    continue
                if ok and task_id == worker.task:
                    results[task_id] = value
                worker.task = None
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            overran = worker.task is not None and now - worker.started_at > deadline_s
            never_ready = not worker.ready and now - worker.spawned_at > _START_TIMEOUT_S
            if overran or never_ready:
                self._replace(index, kill=True)

    def close(self) -> None:
        for worker in self._workers:
            _stop_process(worker.process, worker.conn, polite=True)
        self._workers = []

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]


def _stop_process(process: Any, conn: Connection, polite: bool = False) -> None:
    if polite:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
        process.join(timeout=1.0)
    if process.is_alive():
        process.terminate()
        process.join(timeout=1.0)
    if process.is_alive():
        process.kill()
        process.join(timeout=1.0)
    conn.close()


_POOL: BoundedPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool(num_workers: int | None = None, start_method: str | None = None, preload: Sequence[str] = (),
             initializer: Callable[[], None] | None = None) -> BoundedPool:
    """The module-level pool, created on first use (with ``preload`` and ``initializer``) and reused; re-created
    when ``num_workers`` or ``start_method`` changes."""
    global _POOL
    size = num_workers or (_POOL.num_workers if _POOL else default_num_workers())
    with _POOL_LOCK:
        wanted_method = start_method or (_POOL.start_method if _POOL else None)
        if _POOL is not None and (_POOL.num_workers != size or _POOL.start_method != wanted_method):
            _POOL.close()
            _POOL = None
        if _POOL is None:
            _POOL = BoundedPool(size, start_method, preload, initializer)
        return _POOL


def close_pool() -> None:
    """Stop the module-level pool's workers (it is re-created on the next use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(close_pool)
