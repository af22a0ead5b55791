"""A model that cannot be found or fetched gives one message of ours, before anything starts."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest

from deepscaler.cli.main import main
from deepscaler.models.resolve import ModelNotFoundError, resolve_model

pytestmark = pytest.mark.usefixtures("fresh_console")


@pytest.fixture
def no_weights_dir(tiny_model_dir, tmp_path):
    """The tiny model's folder with config and tokenizer but without its weights."""
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return folder


def test_local_folder_with_weights_resolves(tiny_model_dir):
    location = resolve_model(str(tiny_model_dir), "model.path")
    assert location.kind == "local folder" and location.spec == str(tiny_model_dir)


def test_folder_without_weights_names_the_field_and_what_is_missing(no_weights_dir):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(no_weights_dir), "--model")
    message = str(info.value)
    assert message.startswith(f"--model={no_weights_dir}: model not found. Tried: local folder {no_weights_dir}: "
                              "exists but has no weights")
    assert "Fix: give a folder written by save_pretrained" in message
    # a tokenizer-only check of the same folder passes: it has tokenizer files
    assert resolve_model(str(no_weights_dir), "model.tokenizer", weights=False).kind == "local folder"


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"model\.path=.*/absent: model not found\. Tried: local folder: "
                                                 r"no folder .*/absent\. Fix: give a folder"):
        resolve_model(str(tmp_path / "absent"), "model.path")


def test_unknown_id_offline_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-org/no-such-model-4711", "model.path")
    message = str(info.value)
    assert "local folder: no folder no-such-org/no-such-model-4711" in message
    assert "Hub cache " in message and "not downloaded" in message
    assert "Hub: not contacted (HF_HUB_OFFLINE=1)" in message
    assert "allow network access once" in message and "hf download ID" in message


def test_hub_answers_each_branch(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    siblings = {"org/model": ["config.json", "model.safetensors", "tokenizer.json"], "org/empty": ["README.md"]}

    def model_info(self, repo_id, **kwargs):
        if repo_id not in siblings:
            raise ConnectionError("Name or service not known")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in siblings[repo_id]])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    assert resolve_model("org/model", "model.path").kind == "Hub"
    with pytest.raises(ModelNotFoundError, match=r"Hub: repository org/empty exists but has no config\.json"):
        resolve_model("org/empty", "model.path")
    with pytest.raises(ModelNotFoundError, match=r"Hub: ConnectionError: Name or service not known") as info:
        resolve_model("org/unreachable", "model.path")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_eval_cli_stops_before_anything_starts(no_weights_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(no_weights_dir), "--datasets", "aime", "--output-dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deepscaler eval: --model={no_weights_dir}: model not found.")
    assert err.count("Traceback") == 0 and not (tmp_path / "out" / "settings.json").exists()


def test_train_cli_offline_without_the_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "run"
    assert main(["train", "--config", "deepscaler-1.5b-8k", "model.path=no-such-org/no-such-model-4711",
                 f"trainer.run_dir={run_dir}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("deepscaler train: model.path=no-such-org/no-such-model-4711: model not found.")
    assert f"(details: {run_dir / 'logs' / 'train.log'})" in captured.err
    log = (run_dir / "logs" / "train.log").read_text()
    assert "LocalEntryNotFoundError" in log  # the original error, in the log file only
    assert "Traceback" not in captured.out + captured.err
