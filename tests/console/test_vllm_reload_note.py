"""vLLM's "RotaryEmbedding: Failed to load weights" on every in-place weight sync: what causes it, that it is
harmless (the rotary cos/sin cache is the one the engine had), and that it is logged once as a note."""

from __future__ import annotations

import torch

from deepscaler.console import logs


def _rotary_caches(worker) -> dict[str, torch.Tensor]:
    """Runs inside vLLM's worker (in this process): the rotary embeddings' cos/sin cache buffers."""
    return {name: buffer.clone() for name, buffer in worker.model_runner.model.named_buffers()
            if name.endswith("cos_sin_cache")}


def test_rotary_reload_warning_is_harmless_and_noted_once(fresh_console, tiny_engine, tiny_model_dir, tmp_path,
                                                          monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    seen = []
    original = logs._RotaryReloadNote.filter

    def spy(self, record):  # what vLLM emitted, before the note filter rewrites or drops it
        if record.msg == logs.RELOAD_WARNING:
            seen.append(record.getMessage())
        return original(self, record)

    monkeypatch.setattr(logs._RotaryReloadNote, "filter", spy)
    logs.configure(verbose=False)
    run_log = logs.open_run_log(tmp_path / "run", "train")
    before = tiny_engine.llm.collective_rpc(_rotary_caches)[0]
    weights = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for _ in range(3):
        tiny_engine.update_weights(weights.items())
    after = tiny_engine.llm.collective_rpc(_rotary_caches)[0]
    run_log.close()

    assert seen == ["RotaryEmbedding: Failed to load weights"] * 3  # vLLM warns on every sync
    assert before and before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the cache it keeps is the same
    text = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert text.count("Harmless: the layer holds only the cos/sin cache") == 1
    assert not [line for line in text.splitlines() if " WARNING " in line and "Failed to load weights" in line]
    assert text.count("Reloading and processing weights took") == 3
    assert text.count("Successfully reset prefix cache") == 3
    assert "vllm" not in capsys.readouterr().out
