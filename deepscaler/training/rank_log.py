"""The run's console voice: ``logger.info("...")`` shows ``[deepscaler] ...`` on the console from the rank that
speaks for all (rank 0) and goes to every rank's log file; :mod:`deepscaler.console` routes it."""

from __future__ import annotations

import logging

from deepscaler.console import set_rank

logger = logging.getLogger("deepscaler.run")


def configure_rank_logging(rank: int) -> None:
    """This process's data-parallel rank: rank 0 prints the run's messages, every rank logs them to its file."""
    set_rank(rank)
