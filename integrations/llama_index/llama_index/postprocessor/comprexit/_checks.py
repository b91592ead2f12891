"""Argument checks shared by the LlamaIndex classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comprexit_rag.errors import InvalidInputError

__all__ = ["NamedComponent", "check_known_arguments"]


def check_known_arguments(owner: type, kwargs: Mapping[str, Any], *also: str) -> None:
    """Refuse keyword arguments that are neither fields of ``owner`` nor in ``also``.

    LlamaIndex components accept ``**kwargs``, so a misspelt or foreign option (``top_n=``,
    ``response_mode=``) would otherwise be dropped silently.
    """
    known = {*getattr(owner, "model_fields", {}), *also}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InvalidInputError(
            f"{owner.__name__} got unknown argument(s) {', '.join(unknown)}; it accepts: {', '.join(sorted(known))}."
        )


class NamedComponent:
    """Mixed into the LlamaIndex components: their serialised ``class_name`` is their Python class name."""

    @classmethod
    def class_name(cls) -> str:
        return cls.__name__
