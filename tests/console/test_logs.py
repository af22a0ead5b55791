"""Log routing: third-party records, warnings and progress bars go to RUN_DIR/logs, ours to the console; -v shows
everything live."""

from __future__ import annotations

import logging
import warnings

import pytest

from deepscaler.cli.main import build_parser
from deepscaler.console import logs

pytestmark = pytest.mark.usefixtures("fresh_console")


@pytest.fixture(scope="module")
def vllm_logger():
    """A real vLLM logger, vLLM imported before deepscaler configures logging (as in a test session)."""
    vllm_logging = pytest.importorskip("vllm.logger")
    return vllm_logging.init_logger("vllm.v1.worker.cpu_model_runner")


def test_vllm_warning_lands_in_the_log_file_not_on_stdout(vllm_logger, tmp_path, capsys):
    logs.configure(verbose=False)
    vllm_logger.warning("early warning before the run folder is known")
    run_log = logs.open_run_log(tmp_path / "run", "train")
    vllm_logger.warning("Reloading and processing weights took %.2f seconds", 0.01)
    logs.say("decision: precision fp32 (no GPU)")
    run_log.close()
    out = capsys.readouterr()
    assert out.out == "[deepscaler] decision: precision fp32 (no GPU)\n" and out.err == ""
    text = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert "WARNING [rank 0] vllm.v1.worker.cpu_model_runner: early warning before the run folder is known" in text
    assert "Reloading and processing weights took 0.01 seconds" in text
    assert "INFO [rank 0] deepscaler: [deepscaler] decision: precision fp32 (no GPU)" in text
    assert not logging.getLogger("vllm").handlers and logging.getLogger("vllm").propagate


def test_verbose_shows_third_party_records_live(vllm_logger, tmp_path, capsys):
    logs.configure(verbose=True)
    run_log = logs.open_run_log(tmp_path / "run", "train")
    vllm_logger.warning("Successfully reset prefix cache")
    logging.getLogger("transformers.modeling_utils").info("loading weights")
    run_log.close()
    out = capsys.readouterr().out
    assert "WARNING vllm.v1.worker.cpu_model_runner: Successfully reset prefix cache" in out
    assert "INFO transformers.modeling_utils: loading weights" in out
    assert "Successfully reset prefix cache" in (tmp_path / "run" / "logs" / "train.log").read_text()


def test_verbose_flag_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["-v", "train"]).verbose is True
    assert parser.parse_args(["train", "--verbose"]).verbose is True
    assert parser.parse_args(["train"]).verbose is False


def test_errors_of_any_library_reach_the_console(tmp_path, capsys):
    logs.configure(verbose=False)
    run_log = logs.open_run_log(tmp_path / "run", "eval")
    logging.getLogger("transformers.tokenization_utils").warning("chatter")
    logging.getLogger("vllm.engine").error("engine core died")
    run_log.close()
    assert capsys.readouterr().out == "ERROR vllm.engine: engine core died\n"


def test_future_warnings_and_progress_bars_stay_off_the_console(tmp_path, capsys):
    import huggingface_hub.utils
    import transformers.utils.logging

    logs.configure(verbose=False)
    run_log = logs.open_run_log(tmp_path / "run", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`old_arg` is deprecated", FutureWarning, stacklevel=1)
    run_log.close()
    captured = capsys.readouterr()
    assert captured.out == "" and "deprecated" not in captured.err
    assert "FutureWarning: `old_arg` is deprecated" in (tmp_path / "run" / "logs" / "train.log").read_text()
    assert not transformers.utils.logging.is_progress_bar_enabled()
    assert huggingface_hub.utils.are_progress_bars_disabled()


def test_only_rank_zero_prints_every_rank_logs(tmp_path, capsys):
    logs.configure(verbose=False)
    run_log = logs.open_run_log(tmp_path / "run", "train", rank=1)
    logs.say("stage 0: steps 1..10")
    run_log.close()
    assert capsys.readouterr().out == ""
    assert "[rank 1] deepscaler: [deepscaler] stage 0: steps 1..10" in (
        tmp_path / "run" / "logs" / "train.rank1.log").read_text()


def test_nested_run_logs_share_one_file(tmp_path):
    outer = logs.open_run_log(tmp_path / "demo", "demo")
    inner = logs.open_run_log(tmp_path / "demo" / "grpo", "train")
    assert inner.path == outer.path
    logs.say("inside the loop")
    inner.close()  # the nested handle closes nothing
    logs.say("after the loop")
    outer.close()
    text = outer.path.read_text()
    assert "inside the loop" in text and "after the loop" in text
    assert not (tmp_path / "demo" / "grpo" / "logs").exists()


def test_records_without_a_run_folder_are_written_at_exit(tmp_path):
    logs.configure(verbose=False, keep_unattached=True)  # as the command line does
    run_log = logs.open_run_log(tmp_path / "run", "eval")
    logging.getLogger("vllm.config").info("inside the run")
    run_log.close()
    logging.getLogger("vllm.config").info("max_num_batched_tokens set")
    logging.getLogger("matplotlib.font_manager").debug("findfont: score")  # other libraries' DEBUG: dropped
    logging.getLogger("deepscaler.precision").debug("our own debug line")  # ours: kept
    logs._flush_unattached()
    (written,) = (tmp_path / "stray-logs").glob("deepscaler-*.log")
    text = written.read_text()
    assert "max_num_batched_tokens set" in text and "our own debug line" in text
    assert "inside the run" not in text and "findfont" not in text  # each record in exactly one file


def test_our_lines_get_a_prefix_unless_they_carry_one(tmp_path, capsys):
    logs.configure(verbose=False)
    logging.getLogger("deepscaler.rollout.engine").info("chunked prefill: False (off on CPU)")
    logs.say("aime (test): from the cache", prefix="deepscaler.data")
    assert capsys.readouterr().out == ("[deepscaler] chunked prefill: False (off on CPU)\n"
                                       "[deepscaler.data] aime (test): from the cache\n")


def test_rotary_reload_warning_becomes_one_note(tmp_path, capsys):
    """vLLM's per-sync 'RotaryEmbedding: Failed to load weights' is logged once, as an INFO note saying why it is
    harmless; other layers' failures stay warnings."""
    logs.configure(verbose=True)
    run_log = logs.open_run_log(tmp_path / "run", "train")
    reload_logger = logging.getLogger(logs.RELOAD_LOGGER)
    for _ in range(3):
        reload_logger.warning(logs.RELOAD_WARNING, "RotaryEmbedding")
    reload_logger.warning(logs.RELOAD_WARNING, "QKVParallelLinear")
    run_log.close()
    text = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert text.count("Failed to load weights") == 2  # the note quotes it once; the linear layer's warning
    assert text.count("Harmless: the layer holds only the cos/sin cache") == 1
    assert "INFO [rank 0] vllm.model_executor.model_loader.reload.layerwise: vLLM's in-place weight reload" in text
    assert "WARNING [rank 0] vllm.model_executor.model_loader.reload.layerwise: QKVParallelLinear: Failed" in text
    assert capsys.readouterr().out.count("RotaryEmbedding") == 1


def test_library_use_keeps_unattached_records_in_memory_only(tmp_path):
    logs.configure(verbose=False)  # as train() / load_problems() called from Python do
    logging.getLogger("vllm.config").info("max_num_batched_tokens set")
    logs._flush_unattached()
    assert not (tmp_path / "stray-logs").exists()
