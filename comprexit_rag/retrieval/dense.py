"""Dense passage retrieval: a sentence-transformers embedder over a faiss index.

Passages are embedded once, L2-normalised and added to a faiss inner-product index, so
scores are cosine similarities. Passage ids default to :func:`comprexit_rag.slots.content_key`
(the sha256 of the text), the same key :class:`comprexit_rag.slots.SlotStore` uses, so a
retrieved passage's id looks up its precomputed slots directly. The default embedder is the
embedded all-MiniLM-L6-v2 (:mod:`comprexit_rag.retrieval.embedder`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import faiss
import numpy as np
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from ..durable import atomic_write
from ..errors import InvalidInputError, StorageError
from ..validation import check_text
from .embedder import DEFAULT_EMBEDDER, load_embedder
from .inputs import check_passages, checked_metadata, id_conflict
from .state import STATE_FORMAT, STATE_NAME, STATE_VERSION, new_index_file_name, read_state

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EMBEDDER", "DenseRetriever", "RetrievedPassage"]

IndexType = Literal["flat", "hnsw"]


@dataclass(frozen=True)
class RetrievedPassage:
    """One search hit: the passage id, its text, the cosine score and its metadata."""

    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


class DenseRetriever:
    """Cosine-similarity passage retriever with incremental adds and atomic persistence.

    Args:
        embedder: a sentence-transformers model name or path, an already built
            ``SentenceTransformer``, or ``None`` for the embedded all-MiniLM-L6-v2.
        index_type: ``"flat"`` (exact inner product) or ``"hnsw"`` (approximate,
            ``IndexHNSWFlat`` with the inner-product metric).
        hnsw_m: neighbours per HNSW node.
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width (raised to ``k`` when smaller).
        device: torch device for the embedder when it is loaded here (``None``: automatic).
        embedder_name: name recorded by :meth:`save` for a ``SentenceTransformer`` instance,
            so that :meth:`load` can rebuild it without an explicit ``embedder``.

    Ids are stable: faiss position ``i`` maps to ``ids[i]``, and nothing is ever removed.
    Adds and searches are serialised by a lock; embedding runs outside it, under a second lock
    of its own (a fast tokenizer must not be used by two threads at once), so concurrent
    searches return exactly what sequential ones do.

    The embedder reads at most ``embedder.max_seq_length`` word pieces (256 for MiniLM) of a
    passage: only the beginning of a longer passage is searchable (a warning says so). Split long
    documents into passages, as :func:`comprexit_rag.corpus.read_corpus` does.
    """

    def __init__(
        self,
        embedder: str | os.PathLike[str] | SentenceTransformer | None = None,
        *,
        index_type: IndexType = "flat",
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 64,
        device: str | None = None,
        embedder_name: str | None = None,
    ) -> None:
        if index_type not in ("flat", "hnsw"):
            raise InvalidInputError(f"index_type must be 'flat' or 'hnsw', got {index_type!r}")
        if min(hnsw_m, hnsw_ef_construction, hnsw_ef_search) < 1:
            raise InvalidInputError("hnsw_m, hnsw_ef_construction and hnsw_ef_search must be >= 1")
        self._embed_lock = threading.Lock()
        self.embedder, recorded_name = load_embedder(embedder, device)
        self.embedder_name = embedder_name if embedder_name is not None else recorded_name
        self.index_type: IndexType = index_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.dimension = self._probe_dimension()
        self._index = self._new_index()
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._metadata: list[dict[str, Any]] = []
        self._position: dict[str, int] = {}
        self._saved_as: str | None = None  # index_file of the state last saved or loaded
        self._lock = threading.RLock()

    def _probe_dimension(self) -> int:
        """Embedding width, measured (works across sentence-transformers versions)."""
        return int(self._embed(["dimension probe"], batch_size=1).shape[1])

    def _new_index(self) -> faiss.Index:
        if self.index_type == "hnsw":
            index = faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.hnsw_ef_construction
            index.hnsw.efSearch = self.hnsw_ef_search
            return index
        return faiss.IndexFlatIP(self.dimension)

    def _embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        with self._embed_lock:
            vectors = self.embedder.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        with self._lock:
            return self._index.ntotal  # one vector per indexed passage

    def __contains__(self, passage_id: object) -> bool:
        """Whether a passage of this id is indexed."""
        with self._lock:
            return passage_id in self._position

    @property
    def ids(self) -> list[str]:
        """Passage ids in insertion order (a copy)."""
        with self._lock:
            return list(self._ids)

    def get(self, passage_id: str) -> RetrievedPassage:
        """Return the stored passage of ``passage_id`` (score 1.0); ``KeyError`` if absent."""
        with self._lock:
            position = self._position[passage_id]
            return RetrievedPassage(passage_id, self._texts[position], 1.0, dict(self._metadata[position]))

    def add(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Embed and index passages; return the id of every input text, in input order.

        Ids default to ``content_key(text)``. Ids are keys: a passage whose id is already indexed
        (or repeats within the call) with the same text is skipped, so re-adding is idempotent;
        with other text it is an :class:`InvalidInputError` naming both passages, raised before
        anything of the call is added. Metadata must be
        JSON-serialisable; it is stored as a copy.

        Args:
            texts: passage texts (non-empty strings).
            ids: optional explicit ids, one per text.
            metadatas: optional metadata dicts (or ``None``), one per text.
            batch_size: embedder batch size.
            show_progress: tqdm progress bar; by default shown for 1,000 new passages or more.
        """
        texts, ids, metadatas = check_passages(texts, ids, metadatas, batch_size)
        self._warn_if_truncated(texts)

        new: dict[str, tuple[str, dict[str, Any]]] = {}
        first_at: dict[str, int] = {}
        with self._lock:
            for position, (text, passage_id, metadata) in enumerate(zip(texts, ids, metadatas, strict=True)):
                # Ids are keys: a repeat with the same text is a no-op, one with other text an error
                # (skipping it would lose that passage without a word).
                if passage_id in self._position:
                    indexed = self._texts[self._position[passage_id]]
                    if indexed != text:
                        raise id_conflict(passage_id, f"Passage {position}", "already indexed", indexed, text)
                    continue
                if passage_id in new:
                    if new[passage_id][0] != text:
                        first = f"Passages {first_at[passage_id]} and {position}"
                        raise id_conflict(passage_id, first, "shared", new[passage_id][0], text)
                    continue
                first_at[passage_id] = position
                new[passage_id] = (text, checked_metadata(passage_id, metadata))
        if len(new) < len(texts):
            logger.info("skipping %d passages already indexed", len(texts) - len(new))
        if not new:
            return ids

        pending = list(new.items())
        chunk = batch_size  # one encoder batch per step, so the bar moves per batch
        show = len(pending) >= 1000 if show_progress is None else show_progress
        with tqdm(total=len(pending), desc="embedding passages", unit="passage", disable=not show) as bar:
            for start in range(0, len(pending), chunk):
                part = pending[start : start + chunk]
                vectors = self._embed([text for _, (text, _) in part], batch_size)
                with self._lock:
                    keep = [i for i, (pid, _) in enumerate(part) if pid not in self._position]
                    if keep:
                        self._index.add(vectors[keep])
                        for i in keep:
                            passage_id, (text, metadata) = part[i]
                            self._position[passage_id] = len(self._ids)
                            self._ids.append(passage_id)
                            self._texts.append(text)
                            self._metadata.append(metadata)
                bar.update(len(part))
        logger.debug("indexed %d passages (%d total)", len(new), len(self))
        return ids

    def _warn_if_truncated(self, texts: Sequence[str]) -> None:
        """Warn when passages certainly exceed the embedder's window (more words than word pieces fit)."""
        window = getattr(self.embedder, "max_seq_length", None)
        if not isinstance(window, int) or window < 1:
            return
        longer = sum(1 for text in texts if len(text.split()) > window)
        if longer:
            logger.warning(
                "%d passage(s) are longer than the embedder's %d-token window: only their beginning is searchable "
                "(their slots still cover all of them); split long documents into passages of about 200 words "
                "before indexing (comprexit_rag.corpus.split_paragraphs; read_corpus and `comprexit-rag index` do)",
                longer,
                window,
            )

    # ------------------------------------------------------------------ search

    @overload
    def search(self, queries: str, k: int = 5) -> list[RetrievedPassage]: ...

    @overload
    def search(self, queries: Sequence[str], k: int = 5) -> list[list[RetrievedPassage]]: ...

    def search(self, queries: str | Sequence[str], k: int = 5) -> list[RetrievedPassage] | list[list[RetrievedPassage]]:
        """Return the ``k`` passages most similar to each query, best first.

        A single ``str`` query returns one list of hits; a list of queries returns one list
        per query. ``k`` larger than the corpus returns every passage; an empty index
        returns empty lists.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive int, got {k!r}")
        single = isinstance(queries, str)
        if not single and (isinstance(queries, bytes | bytearray) or not isinstance(queries, Sequence)):
            raise InvalidInputError(f"queries must be a string or a list of strings, got {type(queries).__name__}")
        batch = [queries] if single else list(queries)
        for index, query in enumerate(batch):
            if not isinstance(query, str):
                raise InvalidInputError(f"queries must be strings, got {type(query).__name__}")
            check_text(query, "The query" if single else f"Query {index}")
        if not batch:
            return []
        with self._lock:
            empty = not self._ids
        if empty:
            hits: list[list[RetrievedPassage]] = [[] for _ in batch]
            return hits[0] if single else hits
        vectors = self._embed(batch, batch_size=64)
        with self._lock:
            top = min(k, len(self._ids))
            if self.index_type == "hnsw":
                self._index.hnsw.efSearch = max(self.hnsw_ef_search, top)
            scores, positions = self._index.search(vectors, top)
            hits = [
                [
                    RetrievedPassage(self._ids[pos], self._texts[pos], float(score), dict(self._metadata[pos]))
                    for score, pos in zip(row_scores, row_positions, strict=True)
                    if pos >= 0
                ]
                for row_scores, row_positions in zip(scores, positions, strict=True)
            ]
        return hits[0] if single else hits

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save the index and passages to ``directory`` atomically; return the state file.

        The faiss index goes to a new uniquely named file, then ``retriever.json`` (ids,
        texts, metadata, embedder name, dimension, index settings, index file name) replaces
        the previous one with ``os.replace``: a crash leaves either the old or the new state.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        index_name = new_index_file_name()
        try:
            with self._lock:  # the index and the state it is saved with are one snapshot
                atomic_write(target / index_name, lambda path: faiss.write_index(self._index, str(path)))
                state = {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "embedder": self.embedder_name,
                    "dimension": self.dimension,
                    "index_type": self.index_type,
                    "hnsw_m": self.hnsw_m,
                    "hnsw_ef_construction": self.hnsw_ef_construction,
                    "hnsw_ef_search": self.hnsw_ef_search,
                    "index_file": index_name,
                    "ids": self._ids,
                    "texts": self._texts,
                    "metadata": self._metadata,
                }
                payload = json.dumps(state, ensure_ascii=False).encode("utf-8")
            atomic_write(target / STATE_NAME, payload)
        except BaseException as exc:
            (target / index_name).unlink(missing_ok=True)  # the state on disk still names the previous index
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise StorageError(
                    exc.errno or 5,
                    f"{exc.strerror or exc}: saving the retriever to {target} failed; the previously saved "
                    "state is unchanged; free space and rerun the same command to resume",
                ) from exc
            raise
        with self._lock:
            self._saved_as = index_name
        for stale in target.glob("index-*.faiss"):
            if stale.name != index_name:
                stale.unlink(missing_ok=True)
        logger.info("saved %d passages to %s", len(self._ids), target)
        return target / STATE_NAME

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        embedder: str | os.PathLike[str] | SentenceTransformer | None = None,
        *,
        device: str | None = None,
    ) -> DenseRetriever:
        """Load a retriever saved by :meth:`save`.

        Args:
            directory: the directory given to :meth:`save`.
            embedder: the embedder to use; by default the one recorded at save time.
            device: torch device for an embedder loaded here.

        Raises:
            FileNotFoundError: no saved retriever in ``directory``.
            InvalidInputError: (a ``ValueError``) the embedder's dimension differs from the
                saved index, the state is inconsistent, or no embedder is recorded or given.
            CheckpointError: ``retriever.json`` or the faiss index is truncated or corrupt, holds
                entries of the wrong type, or names a faiss file outside ``directory``.
        """
        state, index = read_state(Path(directory))
        recorded = state["embedder"]
        if embedder is None:
            if recorded is None:
                raise InvalidInputError(
                    f"{Path(directory) / STATE_NAME} records no embedder name (it was built from a model "
                    "instance); pass embedder= to DenseRetriever.load"
                )
            embedder = recorded
        retriever = cls(
            embedder,
            index_type=state["index_type"],
            hnsw_m=state["hnsw_m"],
            hnsw_ef_construction=state["hnsw_ef_construction"],
            hnsw_ef_search=state["hnsw_ef_search"],
            device=device,
            embedder_name=recorded if isinstance(embedder, SentenceTransformer) else None,
        )
        if retriever.embedder_name is not None and recorded is not None and retriever.embedder_name != recorded:
            logger.warning(
                "loading an index built with embedder %r using %r; scores may be meaningless",
                recorded,
                retriever.embedder_name,
            )
        retriever._adopt(state, index, Path(directory))
        return retriever

    def reload_if_changed(self, directory: str | os.PathLike[str]) -> bool:
        """Adopt the state saved in ``directory`` when another writer saved it since this object did.

        A writer holding the pipeline's index lock calls this before adding, so passages another
        process or object indexed meanwhile are merged in, never overwritten. Returns whether the
        state on disk was adopted (``False``: nothing saved there, or it is this object's own).
        """
        source = Path(directory)
        if not (source / STATE_NAME).is_file():
            return False
        state, index = read_state(source)
        if state["index_file"] == self._saved_as:
            return False
        if state["index_type"] != self.index_type:
            raise InvalidInputError(
                f"{source} holds a {state['index_type']!r} index, this retriever builds {self.index_type!r} ones; "
                "load the pipeline again"
            )
        self._adopt(state, index, source)
        return True

    def _adopt(self, state: dict[str, Any], index: faiss.Index, source: Path) -> None:
        """Replace the contents with a state read by :func:`_read_state`."""
        if self.dimension != state["dimension"]:
            raise InvalidInputError(
                f"embedder dimension {self.dimension} does not match the saved index dimension "
                f"{state['dimension']} (saved with embedder {state['embedder']!r}); load with the same embedder"
            )
        ids, texts, metadata = state["ids"], state["texts"], state["metadata"]
        with self._lock:
            self._index = index
            self._ids = list(ids)
            self._texts = list(texts)
            self._metadata = [dict(m) for m in metadata]
            self._position = {passage_id: i for i, passage_id in enumerate(ids)}
            self._saved_as = state["index_file"]
        logger.info("loaded %d passages from %s", len(ids), source)

    def __repr__(self) -> str:
        return (
            f"DenseRetriever(embedder={self.embedder_name!r}, index_type={self.index_type!r}, "
            f"dimension={self.dimension}, passages={len(self)})"
        )
