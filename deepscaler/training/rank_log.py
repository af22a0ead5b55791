"""The run's console voice: ``logger.info("...")`` prints ``[deepscaler] ...`` on stdout from the rank that speaks
for all (rank 0), and stays quiet on the others. :func:`configure_rank_logging` sets this once per process."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("deepscaler.run")


class _StdoutHandler(logging.Handler):
    """Writes to the current ``sys.stdout`` at each record (not the one at creation), flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def configure_rank_logging(is_main: bool) -> None:
    """Rank 0 prints the run's messages; other data-parallel ranks print only warnings and errors."""
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[deepscaler] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
