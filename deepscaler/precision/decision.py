"""The record of an attention decision: a model's attention geometry, the chosen backend with its reasons, and
the once-per-process log line. Kept apart from the choosing (``resolver.py``), so that code that only reads a
decision (``loading.py``, the trainer, the rollout engine) need not import how it was made."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger("deepscaler.precision")


class AttentionBackendError(ValueError):
    """An explicit backend request is incompatible and ``on_incompatible="error"``."""


@dataclass(frozen=True)
class ModelGeometry:
    """The attention shape of a model: what backends care about."""

    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (< num_heads means GQA)."""
    head_dim: int
    """Per-head dimension."""
    sliding_window: int | None = None
    """Window size when sliding-window attention is active, else None."""

    @classmethod
    def from_config(cls, config: Any) -> ModelGeometry:
        """From a HF PretrainedConfig (or a dict / ModelGeometry / None = Qwen2-1.5B geometry)."""
        if config is None:
            return QWEN2_1_5B
        if isinstance(config, ModelGeometry):
            return config
        if isinstance(config, dict):
            config = SimpleNamespace(**config)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        heads = getattr(config, "num_attention_heads", None)
        if not heads:
            raise ValueError("model_config has no num_attention_heads; pass a HF PretrainedConfig or "
                             "ModelGeometry(num_heads=, num_kv_heads=, head_dim=)")
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        window = getattr(config, "sliding_window", None)
        if not getattr(config, "use_sliding_window", window is not None):
            window = None  # Qwen2 configs carry a sliding_window value with use_sliding_window=False
        return cls(int(heads), int(kv_heads), int(head_dim), int(window) if window else None)


QWEN2_1_5B = ModelGeometry(num_heads=12, num_kv_heads=2, head_dim=128)
"""DeepSeek-R1-Distill-Qwen-1.5B / Qwen2-1.5B attention geometry (hidden 1536)."""


@dataclass
class AttentionDecision:
    """The chosen backend for one engine, why, and how to apply it."""

    engine: str
    """'trainer' or 'rollout'."""
    backend: str | None
    """transformers ``attn_implementation`` (trainer) or the vLLM backend name as the installed vLLM spells it
    (rollout); None = leave the choice to vLLM (only when it has nothing to choose or is absent)."""
    reason: str
    """Why this backend (one sentence)."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """Alternatives considered, each with the reason it lost."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """kwargs for ``vllm.LLM(...)`` (rollout), e.g. ``{"attention_backend": "TRITON_ATTN"}``."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Environment variables to set before importing vLLM (only vLLM < 0.13, where that was the mechanism)."""
    compute_dtype: str = "float32"
    """dtype the attention kernel actually sees."""
    request: str = "auto"
    """What was asked for."""
    fell_back: bool = False
    """True when an explicit request was incompatible and ``auto`` chose instead."""
    notes: list[str] = field(default_factory=list)
    """Caveats (false-alarm warnings, TF32, dispatch surprises)."""
    named: bool = True
    """Rollout: True when ``backend`` is passed to vLLM; False when vLLM's own selector picks (``backend`` is
    then the backend its order is expected to choose, and ``engine_kwargs`` / ``env_vars`` name none)."""
    self_checks: dict[str, str] = field(default_factory=dict)
    """Trainer: backend -> summary of its self-check on this machine, for each backend checked."""

    def describe(self) -> str:
        """One line for start-up logs."""
        chosen = self.backend or "vLLM default"
        if self.backend and not self.named:
            chosen = f"vLLM's choice (expected {self.backend})"
        rejected = ", ".join(f"{name}({why})" for name, why in self.rejected[:6])
        more = f" +{len(self.rejected) - 6} more" if len(self.rejected) > 6 else ""
        line = f"attention[{self.engine}]={chosen} compute={self.compute_dtype} request={self.request}: {self.reason}"
        if rejected:
            line += f"; rejected: {rejected}{more}"
        if self.notes:
            line += "; notes: " + " | ".join(self.notes)
        return line


_LOGGED: set[str] = set()


def log_decision(decision: AttentionDecision, log: logging.Logger | None = None) -> bool:
    """Log ``decision.describe()`` once per process per distinct decision; True when it was logged now."""
    line = decision.describe()
    if line in _LOGGED:
        return False
    _LOGGED.add(line)
    (log or logger).log(logging.WARNING if decision.fell_back else logging.INFO, line)
    return True
