"""A rollout engine that comes back: :class:`GuardedEngine` wraps the vLLM engine; when a call fails (generation,
weight loading, scoring, or the engine's worker gone) it rebuilds the engine, loads the trainer's current
weights into it and retries the same call with the same arguments (so the same sampling seeds, and the run
stays deterministic). After ``max_in_a_row`` failed attempts in a row it raises
:class:`~deepscaler.training.faults.EngineFailure`. Kernel faults are not retried: the device context is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from deepscaler.training.faults import (
    EngineFailure,
    FaultCounters,
    after_engine_failure,
    after_engine_success,
    classify,
    injected,
    where,
)

EngineFactory = Callable[[], Any]
WeightsFn = Callable[[], Iterable[tuple[str, Any]]]


class InjectedEngineDeath(RuntimeError):
    """The fault injected by ``DEEPSCALER_INJECT_FAULTS=engine@<step>`` (what vLLM's dead-engine error says)."""


class GuardedEngine:
    """Forwards to ``engine``; ``generate``, ``update_weights`` and ``score`` survive engine failures.

    Args:
        engine: the RolloutEngine in use.
        factory: builds a fresh engine (from the base model path); None = failures are not retried.
        weights: yields the trainer's current ``(name, tensor)`` pairs, loaded into a rebuilt engine.
        counters: the run's :class:`FaultCounters` (``faults/engine_restarts``).
        max_in_a_row: restarts allowed in a row before giving up.
        say: where restarts are reported.
    """

    GUARDED = ("generate", "update_weights", "score")

    def __init__(self, engine: Any, factory: EngineFactory | None, weights: WeightsFn, counters: FaultCounters,
                 max_in_a_row: int = 3, say: Callable[[str], None] = print) -> None:
        self.engine, self.factory, self.weights = engine, factory, weights
        self.counters, self.max_in_a_row, self.say = counters, max_in_a_row, say

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("generate", args, kwargs)

    def update_weights(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("update_weights", args, kwargs)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("score", args, kwargs)

    def close(self) -> None:
        self.engine.close()

    def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        rebuilt = False
        while True:
            try:
                if rebuilt:
                    self._rebuild()
                    if method == "update_weights":  # the rebuilt engine already holds the trainer's weights
                        after_engine_success(self.counters)
                        return None
                if method == "generate" and injected("engine", where.step):
                    raise InjectedEngineDeath("EngineDeadError: EngineCore encountered an issue (injected by "
                                              "DEEPSCALER_INJECT_FAULTS)")
                result = getattr(self.engine, method)(*args, **kwargs)
            except Exception as err:
                classification = classify(err)
                if classification.corrupts_context or self.factory is None:
                    raise
                decision = after_engine_failure(self.counters, self.max_in_a_row)
                if decision.action == "stop":
                    raise EngineFailure(f"rollout engine {method} failed: {err}; {decision.reason}") from err
                self.say(f"rollout engine {method} failed at step {where.step} ({type(err).__name__}: "
                         f"{str(err)[:200]}); {decision.reason}")
                rebuilt = True
                continue
            after_engine_success(self.counters)
            return result

    def _rebuild(self) -> None:
        try:
            self.engine.close()
        except Exception as err:  # a dead engine may fail to close; the new one must start regardless
            self.say(f"closing the failed engine raised {type(err).__name__}: {err} (ignored)")
        self.engine = self.factory()
        self.engine.update_weights(self.weights())
