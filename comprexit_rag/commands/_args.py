"""Argument types shared by the sub-commands: a bad value is a one-line usage error before anything loads."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (``--limit 0`` or ``--batch-size 0`` would mean nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


GIVEN = "given_options"  # the namespace attribute naming the dataclass options given on the command line


class _Given(argparse.Action):
    """Stores the flag's value (``const`` for a switch) and notes that it was given: an option given on the
    command line overrides a config file's value even when it equals the flag's default."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, frozenset()) | {self.dest})


def add_dataclass_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of ``config_class``, read off the field: its metadata holds the help text and the
    flag's settings (``flag``, ``choices``, ``positive``, ``cli_default``), its type and default the rest. The
    names of the ones given end up in the namespace's ``given_options``."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        kind = _without_none(hints[field.name])
        options: dict[str, Any] = {"dest": field.name, "help": meta["help"], "default": _default(field)}
        options["action"] = _Given
        if kind is bool:
            options.update(nargs=0, const=True)
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        elif "choices" in meta:
            options["choices"] = meta["choices"]
        else:
            options["type"] = positive_int if meta.get("positive") else kind
        parser.add_argument(meta.get("flag", "--" + field.name.replace("_", "-")), **options)


def _without_none(kind: Any) -> Any:
    """``X`` for ``X | None``; ``str`` for a ``Literal`` of strings (its choices are the metadata's)."""
    if typing.get_origin(kind) is typing.Literal:
        return str
    if isinstance(kind, types.UnionType):
        kept = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else kind
    return kind


def _default(field: dataclasses.Field) -> Any:
    if "cli_default" in field.metadata:
        return field.metadata["cli_default"]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default
