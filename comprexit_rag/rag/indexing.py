"""Indexing: passages in, the retriever extended and saved, the slots of every indexed passage stored.

Run under the pipeline directory's index lock (:func:`~comprexit_rag.rag.directory.index_lock`) by
:meth:`RAGPipeline.index <comprexit_rag.rag.pipeline.RAGPipeline.index>`. Each step is resumable: the
retriever is saved before any slot is computed, slots are committed chunk by chunk, and a rerun skips
what is already indexed and stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..data import Passage
from ..errors import InvalidInputError
from ..retrieval.dense import DenseRetriever
from ..slots.keys import content_key
from ..validation import check_text
from .directory import RETRIEVER_DIR
from .results import IndexReport

if TYPE_CHECKING:
    from .pipeline import RAGPipeline

logger = logging.getLogger(__name__)

__all__ = ["PassageInput", "PassageKeys", "index_passages", "prepare_passages"]

PassageInput = str | Passage | Mapping[str, Any]


class PassageKeys:
    """The store key of every passage of a retriever, each text hashed once per process (ids never change)."""

    def __init__(self, retriever: DenseRetriever) -> None:
        self.retriever = retriever
        self._keys: dict[str, str] = {}  # passage id -> store key
        self._lock = threading.Lock()

    def remember(self, ids: Iterable[str], keys: Iterable[str]) -> None:
        """Record keys already computed (for ids now indexed with those texts)."""
        with self._lock:
            self._keys.update(zip(ids, keys, strict=True))

    def by_key(self) -> dict[str, str]:
        """Store key -> passage id of every indexed passage, in insertion order."""
        with self._lock:
            for passage_id in self.retriever.ids:
                if passage_id not in self._keys:
                    self._keys[passage_id] = content_key(self.retriever.get(passage_id).text)
            return {self._keys[passage_id]: passage_id for passage_id in self.retriever.ids}


def prepare_passages(passages: Sequence[PassageInput]) -> list[Passage]:
    """The input passages as :class:`Passage` records, checked, without repeated texts."""
    if isinstance(passages, str | bytes | Mapping | Passage):
        raise InvalidInputError("index() takes a list of passages, not a single one.")
    if passages is None or not hasattr(passages, "__iter__"):
        raise InvalidInputError(f"index() takes a list of passages, got {type(passages).__name__}.")
    return _unique_by_text([_as_passage(p, i) for i, p in enumerate(passages)])


def index_passages(
    pipeline: RAGPipeline,
    records: list[Passage],
    *,
    batch_size: int,
    chunk_size: int,
    show_progress: bool | None,
    verify: bool,
) -> IndexReport:
    """Add ``records`` to the pipeline's retriever (saved), then store the slots every indexed passage lacks."""
    started = time.perf_counter()
    retriever, directory = pipeline.retriever, pipeline.directory
    # Another process or pipeline object may have indexed since this one loaded: adopt what is on
    # disk first, so that saving below merges their passages instead of dropping them.
    if retriever.reload_if_changed(directory / RETRIEVER_DIR):
        logger.info("Merged passages indexed by another writer: %d in the index", len(retriever))
    before = len(retriever)
    if records:
        texts = [p.formatted() for p in records]
        keys = [content_key(text) for text in texts]
        ids = [p.id or key for p, key in zip(records, keys, strict=True)]
        retriever.add(texts, ids=ids, metadatas=[{"title": p.title} for p in records], show_progress=show_progress)
        pipeline.keys.remember(ids, keys)  # the ids are now indexed with these texts
    added = len(retriever) - before
    if added:
        retriever.save(directory / RETRIEVER_DIR)

    store = pipeline.store
    repaired = store.verify(repair=True, quick=not verify)
    if repaired:
        logger.info("Repaired %d problem(s) of the slot store before indexing", len(repaired))
    keys_by_text = pipeline.keys.by_key()
    missing = {key: retriever.get(passage_id).text for key, passage_id in keys_by_text.items() if key not in store}
    compressed = pipeline.slots.fill(
        missing, ratio=pipeline.ratio, batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress
    )
    report = IndexReport(
        passages=len(records),
        added=added,
        compressed=compressed,
        stored=sum(1 for key in keys_by_text if key in store),
        seconds=time.perf_counter() - started,
    )
    logger.info("Indexed %s", report)
    return report


def _as_passage(value: PassageInput, index: int) -> Passage:
    """Normalise one input passage, raising InvalidInputError naming its position."""
    if isinstance(value, Passage):
        passage = value
    elif isinstance(value, str):
        passage = Passage(text=value)
    elif isinstance(value, Mapping):
        text, title, passage_id = value.get("text"), value.get("title") or "", value.get("id")
        if not isinstance(text, str) or not isinstance(title, str):
            raise InvalidInputError(f"Passage {index} needs a string 'text' (and a string 'title' if any).")
        passage = Passage(text=text, title=title, id="" if passage_id is None else str(passage_id))
    else:
        raise InvalidInputError(f"Passage {index} is a {type(value).__name__}; expected a str, dict or Passage.")
    if not passage.text.strip():
        raise InvalidInputError(f"Passage {index} has empty text; drop it before indexing.")
    check_text(passage.formatted(), f"Passage {index}")
    return passage


def _unique_by_text(passages: Sequence[Passage]) -> list[Passage]:
    seen: set[str] = set()
    unique = []
    for passage in passages:
        text = passage.formatted()
        if text not in seen:
            seen.add(text)
            unique.append(passage)
    return unique
