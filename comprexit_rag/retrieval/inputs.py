"""Checks of what is added to the retriever: texts, ids and metadata, with messages that say what to pass."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError
from ..slots.keys import content_key
from ..validation import check_text

__all__ = ["check_passages", "checked_metadata", "id_conflict"]


def check_passages(
    texts: Sequence[str],
    ids: Sequence[str] | None,
    metadatas: Sequence[Mapping[str, Any] | None] | None,
    batch_size: int,
) -> tuple[list[str], list[str], list[Mapping[str, Any] | None]]:
    """The arguments of :meth:`DenseRetriever.add` as lists; ids default to the texts' content keys."""
    if isinstance(texts, str | bytes | bytearray) or not isinstance(texts, Sequence):
        raise InvalidInputError(f"add() takes a list of texts, not a {type(texts).__name__}")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"passages must be non-empty strings, got {text!r:.60} at position {index}")
        check_text(text, f"Passage {index}")
    if ids is None:
        ids = [content_key(text) for text in texts]
    else:
        ids = list(ids)
        if len(ids) != len(texts):
            raise InvalidInputError(f"got {len(ids)} ids for {len(texts)} texts")
        for passage_id in ids:
            if not isinstance(passage_id, str) or not passage_id:
                raise InvalidInputError(f"ids must be non-empty strings, got {passage_id!r}")
    if metadatas is None:
        metadatas = [None] * len(texts)
    elif len(metadatas) != len(texts):
        raise InvalidInputError(f"got {len(metadatas)} metadata dicts for {len(texts)} texts")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    return texts, ids, list(metadatas)


def checked_metadata(passage_id: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe copy of a passage's metadata (``{}`` for ``None``)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata of {passage_id} must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata of {passage_id} is not JSON-serialisable: {exc}") from exc


def id_conflict(passage_id: str, where: str, how: str, first: str, second: str) -> InvalidInputError:
    """Ids are keys: one id with two texts (``how``: ``"already indexed"`` or ``"shared"``) is refused."""
    if how == "already indexed":
        what = f"{where} has id {passage_id!r}, which is already indexed with other text (indexed: {excerpt(first)}; "
        what += f"new: {excerpt(second)})"
    else:
        what = f"{where} share the id {passage_id!r} with different texts ({excerpt(first)} and {excerpt(second)})"
    return InvalidInputError(
        f"{what}. Ids are keys: give every passage its own id (e.g. '<document>#<chunk>'), or leave ids out to "
        "key passages by content. Nothing of this call was added."
    )


def excerpt(text: str, length: int = 60) -> str:
    """A short, single-line quote of a passage for error messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= length else flat[: length - 1] + "…")
