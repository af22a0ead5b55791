"""Typed configs from YAML and ``key=value`` overrides: build nested dataclasses from plain mappings, checking
every value against the field's type hint (with gentle conversions such as ``"1e-6"`` -> float and ``"a,b"`` ->
list), and name the closest valid keys when one is unknown.

A section dataclass may list keys that no longer exist in a class attribute ``retired_keys`` (name -> what to use
instead); such a key is an error that says what replaced it, rather than "unknown key".
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the field and the fix."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass (``optim.lr``, ``rollout.n``, ...)."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, key + "."))
        else:
            keys.append(key)
    return keys


def unknown_key(key: str, root: type, section: type | None = None) -> ConfigError:
    """The error for a key ``root`` does not have: what replaced it (``retired_keys``) or the closest keys."""
    leaf = key.rsplit(".", 1)[-1]
    retired = getattr(section, "retired_keys", {}) if section is not None else {}
    if leaf in retired:
        return ConfigError(f"config key '{key}' no longer exists: {retired[leaf]}")
    keys = all_keys(root)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    # also match on the last component, which catches a right name in the wrong section
    close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f" Did you mean: {', '.join(close[:4])}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint}")


def coerce(value: Any, hint: Any, key: str, root: type) -> Any:
    """Check (and gently convert) ``value`` against the type ``hint``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, root)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        choices = ", ".join(repr(a) for a in typing.get_args(hint))
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, prefix=key + ".", root=root)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item, f"{key}[{i}]", root) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint in _SCALARS:
        return _SCALARS[hint](value, key)
    return value


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: expected true/false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", root: type | None = None) -> Any:
    """Build dataclass ``cls`` from a nested mapping, type-checking every value. ``root`` is the top-level
    config class (for the suggestions of an unknown key); default ``cls``."""
    root = root or cls
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise unknown_key(prefix + key, root, cls)
        kwargs[key] = coerce(value, hints[key], prefix + key, root)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(config)


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalar/list syntax (``1e-6``, ``true``, ``[a, b]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(config: Any, dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` in place on nested dataclasses, type-checked."""
    parts = dotted_key.split(".")
    target, root = config, type(config)
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise unknown_key(dotted_key, root, type(target) if dataclasses.is_dataclass(target) else None)
        hint = _hints(type(target))[part]
        if i == len(parts) - 1:
            setattr(target, part, coerce(value, hint, dotted_key, root))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set {dotted_key}")


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``; a missing ``=`` is an error with the fix."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' has no '='; write it as key=value (e.g. optim.lr=1e-6)")
        key, text = item.split("=", 1)
        pairs.append((key.strip(), parse_value(text)))
    return pairs


def normalise_overrides(overrides: list[str] | list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """Overrides as ``(key, value)`` pairs, whether given as ``"key=value"`` strings or pairs already."""
    if not overrides:
        return []
    if all(isinstance(o, str) for o in overrides):
        return parse_overrides(list(overrides))  # type: ignore[arg-type]
    return list(overrides)  # type: ignore[arg-type]


def list_presets(folder: Path) -> list[str]:
    """Names of the YAML presets in ``folder``."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_preset(name_or_path: str, folder: Path) -> Path:
    """A preset name (a YAML file of ``folder`` without its suffix) or a YAML path -> the file path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = folder / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    names = list_presets(folder)
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Presets: {', '.join(names)}."
    raise ConfigError(f"--config '{name_or_path}' is neither a file nor a preset name.{hint}")


def build_config(cls: type, path: Path | None, overrides: list[str] | list[tuple[str, Any]] | None) -> Any:
    """Defaults of ``cls`` < the YAML file at ``path`` < ``overrides``, type-checked (not validated)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections or fields")
    config = from_dict(cls, data)
    for key, value in normalise_overrides(overrides):
        apply_override(config, key, value)
    return config


def dump_yaml(config: Any, path: str | Path) -> None:
    """Write the resolved config (every field) to ``path``."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
