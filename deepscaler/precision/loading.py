"""Load a causal LM for training with the resolved attention backend and the policy's master dtype."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepscaler.precision.decision import AttentionDecision, log_decision
from deepscaler.precision.policy import PrecisionPolicy, get_policy, to_torch_dtype
from deepscaler.precision.probe import EnvironmentProbe
from deepscaler.precision.registration import ensure_backend_registered
from deepscaler.precision.resolver import FA_FALSE_ALARM_NOTE, resolve_attention

# transformers and deepscaler.kernels (torch, triton) are imported inside the functions that use them: importing
# deepscaler.precision stays free of torch (see the package docstring).

_FA_DTYPE_WARNING = "only supports torch.float16 and torch.bfloat16 dtypes"


class _DropFlashDtypeFalseAlarm(logging.Filter):
    """Drops transformers' load-time 'Flash Attention N only supports fp16/bf16' warning. Installed only when
    the resolver established that the forward runs in 16-bit (mixed precision), where the warning is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _FA_DTYPE_WARNING not in record.getMessage()


@contextlib.contextmanager
def suppress_flash_dtype_false_alarm(decision: AttentionDecision) -> Iterator[None]:
    """Filter the FA dtype warning while loading, but only for decisions that carry the false-alarm note."""
    active = any(note.startswith(FA_FALSE_ALARM_NOTE[:40]) for note in decision.notes)
    if not active:
        yield
        return
    filt = _DropFlashDtypeFalseAlarm()
    loggers = [logging.getLogger("transformers.modeling_utils"), logging.getLogger("transformers")]
    for log in loggers:
        log.addFilter(filt)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(filt)


def load_causal_lm(path: str | Path, policy: PrecisionPolicy | str, request: str = "auto",
                   env: EnvironmentProbe | None = None, on_incompatible: str = "fallback",
                   decision: AttentionDecision | None = None, **from_pretrained_kwargs: Any) -> tuple[Any, AttentionDecision]:
    """(model, decision): ``AutoModelForCausalLM`` from ``path`` in the policy's master dtype with the resolved
    ``attn_implementation``. The decision is logged once per process; transformers' FA fp32 warning is
    filtered only when the resolver showed it to be a false alarm (16-bit compute over fp32 master weights).
    ``decision``: an attention decision already made for this model (then ``request``/``env`` are not used)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    policy = get_policy(policy)
    if decision is None:
        decision = resolve_attention("trainer", AutoConfig.from_pretrained(path), policy, request=request,
                                     on_incompatible=on_incompatible, env=env)
    ensure_backend_registered(decision.backend)
    with suppress_flash_dtype_false_alarm(decision):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=to_torch_dtype(policy.param_dtype), attn_implementation=decision.backend,
            **from_pretrained_kwargs)
    log_decision(decision)
    return model, decision
