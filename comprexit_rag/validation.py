"""Checks of user input shared by every layer: texts, counts, ratios and config fields.

Each raises :class:`~comprexit_rag.errors.InvalidInputError` with a message that says what to pass
instead. Nothing here imports torch: the CLI parser and the slot store use these checks too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "check_int_field",
    "check_positive_int",
    "check_ratios_field",
    "check_real_field",
    "check_text",
    "check_texts",
    "resolve_ratio",
    "validate_ratio",
]


def check_text(text: object, what: str) -> str:
    """Validate one user text (passage, question...): a non-empty string of valid Unicode.

    Control characters are kept (the tokenizer reads them like any other character); lone
    surrogates (e.g. from bytes decoded with ``errors="surrogateescape"``) are refused because
    no tokenizer can encode them.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} is a {type(text).__name__}, not a string.")
    if not text.strip():
        raise InvalidInputError(f"{what} is empty or whitespace only; drop it or pass some text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{what} is not valid Unicode text ({error.reason} at character {error.start}); "
            "decode your files with errors='replace'."
        ) from error
    return text


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """Validate passage texts, raising InvalidInputError with the offending index."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, bytes | bytearray):
        raise InvalidInputError("Expected a string or a list of strings, got bytes; decode them first.")
    if not isinstance(texts, Sequence):
        raise InvalidInputError(f"Expected a string or a list of strings, got {type(texts).__name__}.")
    return [check_text(text, f"Passage {index}") for index, text in enumerate(texts)]


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else InvalidInputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
    return value


def validate_ratio(ratio: object, window: int) -> int:
    """Check a compression ratio: a positive integer no larger than the window."""
    if isinstance(ratio, bool) or not isinstance(ratio, int):
        raise InvalidInputError(f"ratio must be a positive integer, got {ratio!r}.")
    if not 1 <= ratio <= window:
        raise InvalidInputError(f"ratio must be between 1 and the window size {window}, got {ratio}.")
    return ratio


def check_int_field(config: object, name: str, minimum: int = 1) -> int:
    """The integer field ``name`` of ``config``, refused (InvalidInputError) below ``minimum`` or not an int."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidInputError(f"{name} must be {what}, got {value!r}.")
    return value


def check_real_field(
    config: object, name: str, *, low: float, high: float | None = None, closed: bool = False, hint: str = ""
) -> float:
    """A finite number field: ``> low`` (``>= low`` when ``closed``) and ``<= high`` when given."""
    value = getattr(config, name)
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (value < low if closed else value <= low) or (high is not None and value > high):
        bound = f"{'>=' if closed else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise InvalidInputError(f"{name} must be {bound}, a finite number{hint}; got {value!r}.")
    return float(value)


def check_ratios_field(config: object, name: str, window: int) -> list[int]:
    """A non-empty list of compression ratios, each valid for ``window``."""
    values = getattr(config, name)
    if not isinstance(values, list) or not values:
        raise InvalidInputError(f"{name} must be a non-empty list of ratios, got {values!r}.")
    for value in values:
        try:
            validate_ratio(value, window)
        except InvalidInputError as error:
            raise InvalidInputError(f"{name}: {error}") from error
    return values


def resolve_ratio(compressor: Any, ratio: int | None) -> int:
    """``ratio`` checked against what ``compressor`` accepts (its ``max_ratio``); its own default when ``None``."""
    return validate_ratio(compressor.default_ratio if ratio is None else ratio, compressor.max_ratio)
