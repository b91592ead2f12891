"""The names of slots: a passage's key, a query-aware pair's key, and a store's fingerprint.

Every component that stores or looks up slots (the pipeline, the integrations, the Ray indexer)
builds its keys here, so a store written by one is read by the others.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import InvalidInputError

__all__ = ["content_key", "query_key", "store_fingerprint"]


def content_key(text: str) -> str:
    """Return the store key of a passage: the hex sha256 of its UTF-8 text."""
    if not isinstance(text, str):
        raise InvalidInputError(f"content_key expects a str, got {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"text is not valid Unicode ({exc.reason} at character {exc.start}); decode your files with "
            "errors='replace'"
        ) from exc
    return hashlib.sha256(data).hexdigest()


def query_key(query: str, text: str) -> str:
    """The key of a passage's query-aware slots (COMI): the content hash of the (question, passage) pair.

    The pair is JSON-encoded, so no two pairs share a key (a separator character could occur in either).
    """
    return content_key(json.dumps([query, text]))


def store_fingerprint(compressor_fingerprint: str, ratio: int) -> str:
    """The fingerprint of a slot store: the compressor's (backbone, the module's weights and config) and the ratio."""
    return f"{compressor_fingerprint}/ratio={ratio}"
