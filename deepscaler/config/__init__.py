"""Typed configuration machinery shared by ``deepscaler train`` and ``deepscaler eval``: dataclass schemas filled
from YAML presets and ``key=value`` overrides, every value type-checked (see :mod:`deepscaler.config.typed`)."""

from deepscaler.config.typed import (
    ConfigError,
    all_keys,
    apply_override,
    build_config,
    coerce,
    dump_yaml,
    from_dict,
    list_presets,
    normalise_overrides,
    parse_overrides,
    parse_value,
    resolve_preset,
    to_dict,
    unknown_key,
)

__all__ = [
    "ConfigError",
    "all_keys",
    "apply_override",
    "build_config",
    "coerce",
    "dump_yaml",
    "from_dict",
    "list_presets",
    "normalise_overrides",
    "parse_overrides",
    "parse_value",
    "resolve_preset",
    "to_dict",
    "unknown_key",
]
