"""``--flag`` aliases generated from a config dataclass: one ``--field-name`` per top-level field (``--no-name`` for
a boolean), its help text the field's docstring, no default of its own. A given flag becomes a ``field=value``
override, so the dataclass stays the one definition of every setting and its default."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import typing
from typing import Any

FLAG_PREFIX = "flag__"


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields are each followed by a string literal."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for item, following in zip(body, body[1:], strict=False):
        if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)):
            docs[item.target.id] = " ".join(str(following.value.value).split())
    return docs


def add_field_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per scalar or list field of ``cls`` (nested sections are reached with
    ``section.key=value``)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name in skip or dataclasses.is_dataclass(hint):
            continue
        flag, dest = "--" + f.name.replace("_", "-"), FLAG_PREFIX + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(flag, dest=dest, action="store_const", const=True, default=argparse.SUPPRESS,
                                help=help_text)
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=dest, action="store_const", const=False,
                                default=argparse.SUPPRESS, help=f"set {f.name} to false")
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, dest=dest, nargs="+", metavar=f.name.upper(), default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=dest, metavar=f.name.upper(), default=argparse.SUPPRESS, help=help_text)


def flag_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The ``(field, value)`` overrides of the flags given on the command line (values are type-checked later,
    with every other override)."""
    return [(name.removeprefix(FLAG_PREFIX), value) for name, value in vars(args).items()
            if name.startswith(FLAG_PREFIX)]
