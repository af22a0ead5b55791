"""The progress display: one updating line on a terminal, a line every few steps otherwise, all in the log."""

from __future__ import annotations

import io

import pytest

from deepscaler.console import Progress, live_text, logs, plain_interval
from deepscaler.console.progress import resolve_mode

STEP = {"reward/mean": 0.25, "response_length/mean": 12.0, "timing_s/step": 1.5, "throughput/tokens_per_s": 480.0}


pytestmark = pytest.mark.usefixtures("fresh_console")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_text_and_interval():
    assert live_text(STEP) == "reward 0.250 | len 12 | s/step 1.50 | tok/s 480"
    assert live_text({"reward/mean": 1.0, "actor/kl": 0.0012, "other": 3}) == "reward 1.000 | kl 1.20e-03"
    assert [plain_interval(n) for n in (1, 5, 10, 11, 40, 1000)] == [1, 1, 1, 2, 4, 100]


def test_mode_each_branch():
    assert resolve_mode("auto", _Terminal())[0] == "rich"
    assert resolve_mode("auto", io.StringIO()) == ("plain", "auto: the console is not a terminal (a file or a pipe)")
    assert resolve_mode("tqdm", io.StringIO()) == ("tqdm", "logging.progress")
    with pytest.raises(ValueError, match="logging.progress"):
        resolve_mode("fancy", io.StringIO())


def test_plain_prints_a_line_every_few_steps_and_the_last(tmp_path):
    stream = io.StringIO()
    run_log = logs.open_run_log(tmp_path / "run", "train")
    progress = Progress(total=40, mode="auto", stream=stream)  # not a terminal: plain, every 4 steps
    for step in range(1, 41):
        progress.update(step, STEP)
        if step == 20:
            progress.message("step 20 validation Pass@1: aime 0.100")
    progress.close()
    run_log.close()
    lines = stream.getvalue().splitlines()
    steps = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ") and "|" in line]
    assert steps == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert lines[0].startswith("step 1/40 | reward 0.250 | len 12 | s/step 1.50 | tok/s 480 | eta ")
    assert "step 20 validation Pass@1: aime 0.100" in lines
    logged = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert logged.count("deepscaler.progress: step ") == 41  # every step (and the message) is in the log file


def test_resumed_run_counts_from_where_it_stopped():
    stream = io.StringIO()
    progress = Progress(total=30, initial=20, mode="plain", stream=stream)  # 10 steps left: every step
    for step in range(21, 31):
        progress.update(step, STEP)
    assert len(stream.getvalue().splitlines()) == 10


def test_rich_on_a_terminal_is_one_updating_line():
    terminal = _Terminal()
    live = Progress(total=4, mode="auto", stream=terminal)
    assert live.mode == "rich"
    live.update(2, {"reward/mean": 0.5})
    live.message("step 2 validation Pass@1: aime 0.100")
    live.close()
    text = terminal.getvalue()
    assert "reward 0.500" in text and "2/4" in text and "aime 0.100" in text
