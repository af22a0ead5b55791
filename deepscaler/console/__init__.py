"""The console and the run log: what deepscaler prints, where everyone else's log records go, live progress."""

from deepscaler.console.logs import RunLog, configure, is_verbose, open_run_log, say, set_rank
from deepscaler.console.progress import Progress, live_text, plain_interval

__all__ = ["Progress", "RunLog", "configure", "is_verbose", "live_text", "open_run_log", "plain_interval", "say",
           "set_rank"]
