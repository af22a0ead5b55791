"""Wall-clock bounds for grading in the current process.

SymPy work is pure Python, so a ``SIGALRM`` timer interrupts it between bytecodes. That needs the main
thread of a POSIX process; elsewhere (a thread of a reward manager, Windows) the caller hands the work to
the process pool instead (:mod:`deepscaler.rewards.pool`), whose parent also kills a worker stuck inside C
code. The timeout exception derives from ``BaseException`` so that libraries' ``except Exception``
handlers (math-verify, SymPy) cannot swallow it and keep computing after the deadline.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


class GradingTimeout(BaseException):
    """Raised inside grading code when its wall-clock bound expires."""


def can_bound_in_process() -> bool:
    """Whether a signal timer can interrupt work here: POSIX and the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


REFIRE_S = 0.1
"""After the deadline the timer fires again every 0.1 s until the body exits: a ``GradingTimeout`` swallowed by a
bare ``except:`` (or raised while a C extension had cleared the pending signal) is raised again, instead of
the bound silently never firing."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`GradingTimeout` in the body after ``seconds`` of wall-clock time (and again every
    :data:`REFIRE_S` until the body exits).

    Restores the previous SIGALRM handler and re-arms any timer that was running (minus the time spent).
    Nested use keeps the tighter bound of the two.
    """
    if not can_bound_in_process():
        raise RuntimeError(
            "time_limit needs the main thread of a POSIX process; use deepscaler.rewards.score_responses "
            "(process pool) from other threads."
        )
    active = [True]

    def expire(signum: int, frame: object) -> None:
        if active[0]:
            raise GradingTimeout

    previous_handler = signal.signal(signal.SIGALRM, expire)
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    delay = seconds if previous_delay <= 0 else min(seconds, previous_delay)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, delay, REFIRE_S)
    try:
        yield
    finally:
        # first, before any call (where a pending signal handler could run): no more raising from here on
        active[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            remaining = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
