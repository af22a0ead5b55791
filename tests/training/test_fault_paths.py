"""Every fault path of a training run on CPU, by injecting exceptions of the classes and messages torch raises
(``DEEPSCALER_INJECT_FAULTS``): a non-finite step is skipped with weights and optimizer state untouched (and too
many stop the run with an incident); an out-of-memory update is redone with half the token budget and the same
gradient; a rollout-engine death is survived by a rebuild; a kernel fault writes an incident, exits with status
75 and the next run leaves the faulty attention backend out."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")

from deepscaler.data import Problem  # noqa: E402
from deepscaler.training import faults  # noqa: E402
from deepscaler.training.config import FaultsConfig, dump_yaml, load_config  # noqa: E402
from deepscaler.training.faults import EXIT_KERNEL_FAULT, FaultCounters, NonFiniteStepsError  # noqa: E402
from deepscaler.training.incidents import read_incidents  # noqa: E402
from deepscaler.training.loop import train  # noqa: E402
from deepscaler.training.metrics import read_metrics  # noqa: E402
from deepscaler.training.micro_batches import MicroBatcher  # noqa: E402
from deepscaler.training.rank_log import configure_rank_logging  # noqa: E402
from deepscaler.training.update import backward_with_oom_retry  # noqa: E402

PROBLEMS = [Problem(id=f"toy-{i}", problem=f"What is {i} + {2 * i}?", answers=[str(3 * i)], source="toy")
            for i in range(12)]


def letter_first(responses, problems):
    return [1.0 if text[:1].isascii() and text[:1].isalpha() else 0.0 for text in responses]


def config_for(model_dir, run_dir, *overrides: str):
    return load_config(None, [
        f"model.path={model_dir}", f"trainer.run_dir={run_dir}", "trainer.total_steps=3", "trainer.seed=1",
        "data.train_batch_size=4", "rollout.n=4", "algorithm.ppo_mini_batch_size=4", "data.max_prompt_length=128",
        "data.max_response_length=8", "algorithm.max_tokens_per_micro_batch=300", "optim.lr=2e-2",
        "validation.datasets=[]", "checkpoint.save_freq=1", "checkpoint.keep_last=0", "logging.progress=plain",
        "logging.plots=false", *overrides])


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from deepscaler.rollout import EngineConfig, RolloutEngine

    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", max_model_len=256, seed=0,
                                        enforce_eager=True))
    yield engine
    engine.close()


@pytest.fixture
def inject(monkeypatch):
    def set_faults(spec: str) -> None:
        monkeypatch.setenv(faults.INJECT_ENV, spec)
        monkeypatch.setattr(faults, "_FIRED", set())

    return set_faults


def _state(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors"), torch.load(path / "optimizer.pt", weights_only=False)["optimizer"]


def test_nonfinite_step_is_skipped_with_weights_and_optimizer_untouched(tiny_model_dir, engine, tmp_path, inject,
                                                                        capsys):
    inject("nonfinite@2")
    train(config_for(tiny_model_dir, tmp_path), train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    rows = {row["step"]: row for row in read_metrics(tmp_path)}
    assert rows[2]["actor/skipped_updates"] == 1.0 and rows[2]["faults/skipped_nonfinite"] == 1.0
    assert rows[3]["actor/skipped_updates"] == 0.0 and rows[1]["faults/skipped_nonfinite"] == 0.0
    (weights1, adam1), (weights2, adam2) = (_state(tmp_path / "checkpoints" / f"step_00000{k}") for k in (1, 2))
    assert all(torch.equal(weights1[name], weights2[name]) for name in weights1)
    assert all(torch.equal(adam1["state"][key][slot], adam2["state"][key][slot])
               for key in adam1["state"] for slot in adam1["state"][key])
    assert "step 2: non-finite loss or gradient: optimizer step skipped" in capsys.readouterr().out


def test_too_many_nonfinite_steps_stop_with_an_incident(tiny_model_dir, engine, tmp_path, inject):
    inject("nonfinite@2")
    with pytest.raises(NonFiniteStepsError, match="max_nonfinite_steps=0") as caught:
        train(config_for(tiny_model_dir, tmp_path, "faults.max_nonfinite_steps=0"), train_problems=PROBLEMS,
              reward_fn=letter_first, engine=engine)
    ((path, report),) = read_incidents(tmp_path)
    assert caught.value.incident == path and report["kind"] == "nonfinite" and report["step"] == 2
    assert report["decisions"]["attention"]["trainer"] and "exclude" not in report


def test_oom_update_is_retried_with_half_the_budget_in_a_run(tiny_model_dir, engine, tmp_path, inject, capsys):
    inject("oom@2")
    train(config_for(tiny_model_dir, tmp_path), train_problems=PROBLEMS, reward_fn=letter_first, engine=engine)
    out = capsys.readouterr().out
    assert "step 2: out of memory in the update with 300 tokens per micro-batch; retrying this mini-batch with 150" \
        in out
    rows = {row["step"]: row for row in read_metrics(tmp_path)}
    assert rows[2]["faults/oom_retries"] == 1.0 and rows[2]["actor/skipped_updates"] == 0.0


@pytest.mark.parametrize("oom_after", [0, 1, 2])
def test_oom_retry_gives_the_same_gradient(oom_after, capsys, caplog):
    """float64: the gradient after a retry at half the budget equals the one that fitted (to rounding, 1e-12)."""
    configure_rank_logging(True)  # the run's console voice, as train() sets it
    caplog.set_level("WARNING", logger="deepscaler.run")
    torch.manual_seed(0)
    lengths = [40, 35, 30, 20, 18, 12, 9, 5]
    features = [torch.randn(n, 3, dtype=torch.float64) for n in lengths]
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    total = float(sum(lengths))

    def make_run(budget):
        batcher = MicroBatcher("packed", budget, 0, torch.device("cpu"))
        return SimpleNamespace(batcher=batcher, optimizer=optimizer, dist=SimpleNamespace(enabled=False),
                               config=SimpleNamespace(faults=FaultsConfig()), faults=FaultCounters())

    def backward_factory(fail_after):
        calls = {"micro": 0}

        def backward(batcher):
            shares = []
            for micro in batcher.plan(lengths):
                if fail_after is not None and calls["micro"] == fail_after:
                    calls["micro"] = -10**9  # fail once
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                calls["micro"] += 1
                loss = sum((features[i] @ weight).tanh().sum() for i in micro) / total  # the mini-batch's share
                loss.backward()
                shares.append({"n": len(micro)})
            return shares

        return backward

    reference_run = make_run(80)
    backward_with_oom_retry(reference_run, max(lengths), backward_factory(None))
    expected = weight.grad.clone()
    optimizer.zero_grad(set_to_none=True)
    run = make_run(80)  # three micro-batches; the retry plans with 40 (the longest sequence)
    shares = backward_with_oom_retry(run, max(lengths), backward_factory(oom_after))
    assert torch.allclose(weight.grad, expected, rtol=1e-12, atol=0.0)
    assert run.faults.oom_retries == 1 and sum(s["n"] for s in shares) == len(lengths)
    assert "retrying this mini-batch with 40" in capsys.readouterr().out + caplog.text


def test_oom_retry_gives_up_at_the_longest_sequence():
    run = SimpleNamespace(batcher=MicroBatcher("packed", 50, 0, torch.device("cpu")), optimizer=None,
                          dist=SimpleNamespace(enabled=False), config=SimpleNamespace(faults=FaultsConfig()),
                          faults=FaultCounters())
    run.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def always_oom(batcher):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(torch.OutOfMemoryError):
        backward_with_oom_retry(run, 40, always_oom)
    assert run.faults.oom_retries == 1  # 50 -> 40, then nothing smaller holds the 40-token sequence


# ------------------------------------------------------------------------------------------- through the CLI
def test_engine_death_and_kernel_fault_through_the_command_line(tiny_model_dir, tmp_path, inject, capsys):
    """One ``deepscaler train``: the engine dies at step 1 (rebuilt, step retried), a kernel fault hits the update
    of step 2 (incident, exit 75, one-line hint); the same command again resumes from step 1 without the trainer
    attention backend that faulted, says so, and finishes."""
    from deepscaler.cli.main import main

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answers[0]}) + "\n" for p in PROBLEMS))
    run_dir = tmp_path / "run"
    config = config_for(tiny_model_dir, run_dir, f"data.train=[{data}]", "trainer.total_steps=2",
                        "reward.num_workers=1")
    dump_yaml(config, tmp_path / "run.yaml")

    inject("engine@1,kernel@2")
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == EXIT_KERNEL_FAULT
    first = capsys.readouterr()
    assert "rollout engine generate failed at step 1" in first.out and "rebuilding the rollout engine" in first.out
    hint = first.err.strip().splitlines()[-1]
    assert hint.startswith("deepscaler: kernel_fault: the device context is unusable (incident: ")
    ((path, report),) = read_incidents(run_dir)
    assert str(path) in hint and report["phase"] == "update" and report["step"] == 2
    faulty = report["exclude"]["backend"]
    assert report["exclude"]["engine"] == "trainer" and faulty == report["decisions"]["attention"]["trainer"]
    assert report["micro_batch"]["budget"] == 300 and report["versions"]["torch"] == torch.__version__
    assert [row["step"] for row in read_metrics(run_dir)] == [1]
    assert read_metrics(run_dir)[0]["faults/engine_restarts"] == 1.0

    inject("")
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    second = capsys.readouterr().out
    assert f"excluding trainer attention backend {faulty}: kernel_fault at step 2 (update)" in second
    assert "resuming from" in second and "step_000001" in second
    trainer_line = next(line for line in second.splitlines() if "trainer attention:" in line)
    assert faulty not in trainer_line.split("(")[0]
    assert [row["step"] for row in read_metrics(run_dir)] == [1, 2]
