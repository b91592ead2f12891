"""The saved form of a :class:`~comprexit_rag.retrieval.dense.DenseRetriever`: ``retriever.json``, its faiss index.

``retriever.json`` holds the ids, texts and metadata of every passage, the embedder's name, the index
settings and the name of the faiss file saved with it; reading checks every field, so a truncated,
edited or foreign file is a :class:`~comprexit_rag.errors.CheckpointError`, never a crash or a path
that leads out of the directory.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import faiss

from ..errors import CheckpointError, InvalidInputError

__all__ = ["STATE_FORMAT", "STATE_NAME", "STATE_VERSION", "new_index_file_name", "read_state"]

STATE_NAME = "retriever.json"
STATE_FORMAT = "comprexit-dense-retriever"
STATE_VERSION = 1
# The faiss file names save() writes; retriever.json may name nothing else.
_INDEX_FILE = re.compile(r"index-[0-9a-f]{16}\.faiss")


def new_index_file_name() -> str:
    """A fresh name for the faiss file of the next save (the previous one stays until the state names this)."""
    return f"index-{uuid.uuid4().hex[:16]}.faiss"


def read_state(source: Path) -> tuple[dict[str, Any], faiss.Index]:
    """Read and check ``retriever.json`` and its faiss index; every stored path stays in ``source``."""
    state_path = source / STATE_NAME
    if not state_path.is_file():
        raise FileNotFoundError(f"no saved retriever in {source} (missing {STATE_NAME})")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{state_path} is truncated or corrupt ({exc}); rebuild the index (rerun `comprexit-rag index`)"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} does not hold a JSON object; rebuild the index")
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise InvalidInputError(
            f"{state_path} is not a {STATE_FORMAT} v{STATE_VERSION} state file "
            f"(format={state.get('format')!r}, version={state.get('version')!r})"
        )
    required = ("embedder", "dimension", "index_type", "index_file", "ids", "texts", "metadata", "hnsw_m")
    required += ("hnsw_ef_construction", "hnsw_ef_search")
    absent = [key for key in required if key not in state]
    if absent:
        raise CheckpointError(f"{state_path} lacks {', '.join(absent)}; rebuild the index")
    _check_state_entries(state, state_path)
    index_path = source / state["index_file"]
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:  # faiss reports missing and unreadable files alike
        raise CheckpointError(
            f"cannot read the faiss index {index_path} ({str(exc).strip()[:200]}); "
            "rebuild the index (rerun `comprexit-rag index`)"
        ) from exc
    ids = state["ids"]
    if index.d != state["dimension"] or not index.ntotal == len(ids) == len(state["texts"]) == len(state["metadata"]):
        raise InvalidInputError(
            f"{source} is inconsistent: index holds {index.ntotal} vectors of dimension {index.d}, "
            f"state lists {len(ids)} ids of dimension {state['dimension']}"
        )
    return state, index


def _check_state_entries(state: dict[str, Any], state_path: Path) -> None:
    """Types of the stored entries, and an ``index_file`` that names a file inside the directory."""
    index_file = state["index_file"]
    # Only a bare name written by save(): never a path that leads out of the index directory.
    if not isinstance(index_file, str) or not _INDEX_FILE.fullmatch(index_file):
        raise CheckpointError(
            f"{state_path} names the faiss index {index_file!r}, not a file of its own directory "
            "(index-<hex>.faiss); rebuild the index (rerun `comprexit-rag index`)"
        )
    for key, kind in (("ids", str), ("texts", str), ("metadata", dict)):
        values = state[key]
        if not isinstance(values, list):
            raise CheckpointError(
                f"{state_path}: {key!r} must be a list, got {type(values).__name__}; rebuild the index"
            )
        for position, value in enumerate(values):
            if not isinstance(value, kind):
                raise CheckpointError(
                    f"{state_path}: {key}[{position}] must be a JSON {'object' if kind is dict else 'string'}, "
                    f"got {type(value).__name__}; rebuild the index (rerun `comprexit-rag index`)"
                )
    if not isinstance(state["dimension"], int) or isinstance(state["dimension"], bool):
        raise CheckpointError(f"{state_path}: 'dimension' must be an integer; rebuild the index")
