"""Name → function registries: one helper so every lookup fails the same, explanatory way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, kind: str, field: str) -> T:
    """Return ``registry[name]``; on an unknown name raise ``ValueError`` naming the config field and every
    valid choice (e.g. ``kind="KL estimator", field="kl_estimator"``)."""
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(repr(key) for key in registry)
        raise ValueError(f"unknown {kind} {name!r} for `{field}`; valid names: {valid}") from None
