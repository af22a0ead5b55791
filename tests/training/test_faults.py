"""Failure classification (exceptions of the classes and with the messages torch, CUDA, cuDNN, Triton,
flash-attention, NCCL and vLLM raise), retry policies, incident reports and the engine that comes back."""

from __future__ import annotations

import json

import pytest
import torch

from deepscaler.training import faults
from deepscaler.training.engine_guard import GuardedEngine
from deepscaler.training.faults import (
    EXIT_KERNEL_FAULT,
    EngineFailure,
    FaultCounters,
    FaultKind,
    Location,
    after_engine_failure,
    after_nonfinite_update,
    classify,
    halved_token_budget,
)
from deepscaler.training.incidents import build_incident, excluded_backends, read_incidents, write_incident

CUDA_ASYNC = ("\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
              "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with "
              "`TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")


def _triton_out_of_resources():
    errors = pytest.importorskip("triton.runtime.errors")
    return errors.OutOfResources(131072, 101376, "shared memory")


class EngineDeadError(Exception):
    """Same name and message as vLLM's v1 engine error."""


CASES = [
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                    "of 79.19 GiB of which 1.06 GiB is free."), FaultKind.OUT_OF_MEMORY, False),
    (lambda: RuntimeError("CUDA error: out of memory" + CUDA_ASYNC), FaultKind.OUT_OF_MEMORY, False),
    (lambda: torch.AcceleratorError("CUDA error: an illegal memory access was encountered" + CUDA_ASYNC),
     FaultKind.KERNEL_FAULT, True),
    (lambda: RuntimeError("CUDA error: device-side assert triggered" + CUDA_ASYNC), FaultKind.KERNEL_FAULT, True),
    (lambda: torch.AcceleratorError("CUDA error: unspecified launch failure" + CUDA_ASYNC),
     FaultKind.KERNEL_FAULT, True),
    (lambda: RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), FaultKind.KERNEL_ERROR, False),
    (lambda: RuntimeError("FlashAttention only supports Ampere GPUs or newer."), FaultKind.KERNEL_ERROR, False),
    (_triton_out_of_resources, FaultKind.KERNEL_ERROR, False),
    (lambda: torch.distributed.DistBackendError(
        "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=41, OpType=ALLREDUCE, "
        "NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds before timing out."),
     FaultKind.COLLECTIVE, False),
    (lambda: RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
     FaultKind.COLLECTIVE, False),
    (lambda: EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root cause."),
     FaultKind.ENGINE, False),
    (lambda: ValueError("bad value"), FaultKind.OTHER, False),
]


@pytest.mark.parametrize("make,kind,corrupts", CASES)
def test_classification_follows_torch_classes_and_messages(make, kind, corrupts):
    result = classify(make())
    assert (result.kind, result.corrupts_context) == (kind, corrupts)
    expected_exit = EXIT_KERNEL_FAULT if kind in (FaultKind.KERNEL_FAULT, FaultKind.KERNEL_ERROR) else 1
    assert result.exit_code == expected_exit


def test_classification_looks_through_the_cause_chain():
    try:
        try:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as inner:
            raise RuntimeError("generate failed") from inner
    except RuntimeError as outer:
        assert classify(outer).kind is FaultKind.KERNEL_FAULT


def test_engine_policy_retries_then_stops_and_success_resets():
    counters = FaultCounters()
    assert [after_engine_failure(counters, 2).action for _ in range(3)] == ["retry", "retry", "stop"]
    assert counters.engine_restarts == 2
    faults.after_engine_success(counters)
    assert after_engine_failure(counters, 2).action == "retry" and counters.engine_restarts == 3


def test_nonfinite_policy_skips_counts_and_stops():
    counters = FaultCounters()
    assert after_nonfinite_update(counters, True, 1).action == "continue"
    assert after_nonfinite_update(counters, False, 1).action == "skip"
    assert after_nonfinite_update(counters, True, 1).action == "continue"  # a finite step resets the run
    assert after_nonfinite_update(counters, False, 1).action == "skip"
    decision = after_nonfinite_update(counters, False, 1)
    assert decision.action == "stop" and "max_nonfinite_steps=1" in decision.reason
    assert counters.metrics()["faults/skipped_nonfinite"] == 3.0


def test_halved_budget_never_drops_below_the_longest_sequence():
    assert halved_token_budget(4096, 300) == 2048
    assert halved_token_budget(512, 300) == 300
    assert halved_token_budget(300, 300) is None


def test_injection_plan_parses_and_rejects(monkeypatch):
    assert faults.injection_plan("engine@3, nonfinite@5,engine@7") == {"engine": {3, 7}, "nonfinite": {5}}
    with pytest.raises(ValueError, match="DEEPSCALER_INJECT_FAULTS.*name@step"):
        faults.injection_plan("explode@3")
    monkeypatch.setenv(faults.INJECT_ENV, "nonfinite@9")
    monkeypatch.setattr(faults, "_FIRED", set())
    assert [faults.injected("nonfinite", 9), faults.injected("nonfinite", 9), faults.injected("engine", 9)] == [
        True, False, False]


# ------------------------------------------------------------------------------------------------ incidents
DECISIONS = {"device": "cuda:0", "precision": "bf16", "attention": {"trainer": "flash_attention_2",
                                                                   "rollout": "FLASH_ATTN"},
             "engine_memory": "gpu_memory_utilization 0.6"}


def _raise(error):
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001 - returned with its traceback for the report
        return caught


@pytest.mark.parametrize("phase,engine,backend", [("update", "trainer", "flash_attention_2"),
                                                  ("rollout", "rollout", "FLASH_ATTN")])
def test_kernel_fault_incident_names_the_backend_and_the_next_run_excludes_it(tmp_path, phase, engine, backend):
    error = _raise(torch.AcceleratorError("CUDA error: an illegal memory access was encountered" + CUDA_ASYNC))
    location = Location(step=7, phase=phase, micro_batch={"sequences": 4, "tokens": 3000, "budget": 4096},
                        decisions=DECISIONS)
    path = write_incident(tmp_path, build_incident(error, location, action="exit 75"))
    report = json.loads(path.read_text())
    assert path.parent.name == "incidents" and report["kind"] == "kernel_fault" and report["corrupts_context"]
    assert report["step"] == 7 and report["phase"] == phase and report["micro_batch"]["tokens"] == 3000
    assert report["decisions"]["precision"] == "bf16" and report["versions"]["torch"] == torch.__version__
    assert "host_max_rss_bytes" in report["memory"] and "illegal memory access" in report["error"]["message"]
    assert "Traceback" in report["stack"] and report["exclude"] == {"engine": engine, "backend": backend}
    (exclusion,) = excluded_backends(tmp_path)
    assert (exclusion.engine, exclusion.backend, exclusion.incident) == (engine, backend, path)
    assert "kernel_fault at step 7" in exclusion.reason


def test_oom_and_other_incidents_exclude_nothing(tmp_path):
    for error in (torch.OutOfMemoryError("CUDA out of memory."), ValueError("x")):
        write_incident(tmp_path, build_incident(_raise(error), Location(step=1, phase="update",
                                                                        decisions=DECISIONS)))
    (tmp_path / "incidents" / "broken.json").write_text("{")
    assert len(read_incidents(tmp_path)) == 2 and excluded_backends(tmp_path) == []


# ------------------------------------------------------------------------------------------------ engine guard
class FakeEngine:
    def __init__(self, failures: list[BaseException], log: list):
        self.failures, self.log, self.weights = failures, log, None

    def generate(self, prompts, settings):
        self.log.append(("generate", tuple(prompts), settings))
        if self.failures:
            raise self.failures.pop(0)
        return [f"out-{p}-{settings}" for p in prompts]

    def update_weights(self, weights):
        self.weights = dict(weights)
        self.log.append(("update_weights",))

    def close(self):
        self.log.append(("close",))


def test_guarded_engine_rebuilds_from_current_weights_and_retries_with_the_same_seeds():
    log, counters, built = [], FaultCounters(), []

    def factory():
        built.append(FakeEngine([], log))
        return built[-1]

    guard = GuardedEngine(FakeEngine([EngineDeadError("EngineCore encountered an issue")], log), factory,
                          lambda: [("w", 2.0)], counters, max_in_a_row=2, say=log.append)
    assert guard.generate([1, 2], "seed=11") == ["out-1-seed=11", "out-2-seed=11"]
    calls = [entry for entry in log if isinstance(entry, tuple)]
    assert calls == [("generate", (1, 2), "seed=11"), ("close",), ("update_weights",),
                     ("generate", (1, 2), "seed=11")]
    assert built[0].weights == {"w": 2.0} and guard.engine is built[0]
    assert counters.engine_restarts == 1 and counters.engine_failures_in_a_row == 0
    assert any("rebuilding the rollout engine" in str(entry) for entry in log)


def test_guarded_engine_stops_after_too_many_failures_in_a_row():
    counters = FaultCounters()
    dead = EngineDeadError("EngineCore encountered an issue")
    guard = GuardedEngine(FakeEngine([dead], []), lambda: FakeEngine([dead, dead, dead], []), lambda: [],
                          counters, max_in_a_row=2, say=lambda _: None)
    with pytest.raises(EngineFailure, match="failed 3 times in a row") as caught:
        guard.generate([1], "s")
    assert classify(caught.value).kind is FaultKind.ENGINE and counters.engine_restarts == 2


def test_guarded_engine_does_not_retry_a_kernel_fault():
    fault = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    guard = GuardedEngine(FakeEngine([fault], []), lambda: pytest.fail("no rebuild after a kernel fault"),
                          lambda: [], FaultCounters(), say=lambda _: None)
    with pytest.raises(torch.AcceleratorError):
        guard.generate([1], "s")


def test_a_failed_weight_load_is_repaired_by_the_rebuild():
    class BrokenLoad(FakeEngine):
        def update_weights(self, weights):
            raise RuntimeError("worker process died")

    log = []
    counters = FaultCounters()
    guard = GuardedEngine(BrokenLoad([], log), lambda: FakeEngine([], log), lambda: [("w", 3.0)], counters,
                          say=lambda _: None)
    guard.update_weights(iter([("w", 3.0)]))
    assert guard.engine.weights == {"w": 3.0} and counters.engine_restarts == 1
