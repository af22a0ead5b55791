"""Name → function registries: one helper so every lookup, and every config check of a name, fails the same
explanatory way (the field, the closest valid names, then all of them)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def unknown_name_message(name: str, valid: Iterable[str], kind: str, field: str) -> str:
    """``unknown <kind> 'grop' for `<field>` (did you mean 'grpo'?); valid names: 'grpo', ...``."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {kind} {name!r} for `{field}`{hint}; valid names: {', '.join(repr(key) for key in valid)}"


def check_name(registry: Mapping[str, object] | Iterable[str], name: str, kind: str, field: str) -> str | None:
    """``None`` when ``name`` is registered, else the message of :func:`unknown_name_message` (for config
    validation, which collects every problem before failing)."""
    valid = list(registry)
    return None if name in valid else unknown_name_message(name, valid, kind, field)


def lookup(registry: Mapping[str, T], name: str, kind: str, field: str) -> T:
    """Return ``registry[name]``; on an unknown name raise ``ValueError`` naming the config field, the closest
    names and every valid choice (e.g. ``kind="KL estimator", field="kl_estimator"``)."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(unknown_name_message(name, registry, kind, field)) from None
