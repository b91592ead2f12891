"""Retrieval: dense passage search (a sentence-transformers embedder over faiss), persisted atomically.

The names load on first use (PEP 562): a machine without faiss (the GPU trainer's) can still import
:mod:`comprexit_rag.retrieval.nearest`, which reads cached neighbours without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dense import DenseRetriever, RetrievedPassage
    from .embedder import DEFAULT_EMBEDDER, default_embedder_path, warn_if_truncated

# Each public name and the submodule that defines it.
_HOMES = {
    "DEFAULT_EMBEDDER": ".embedder",
    "DenseRetriever": ".dense",
    "RetrievedPassage": ".dense",
    "default_embedder_path": ".embedder",
    "warn_if_truncated": ".embedder",
}
__all__ = ["DEFAULT_EMBEDDER", "DenseRetriever", "RetrievedPassage", "default_embedder_path", "warn_if_truncated"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
