"""RAGPipeline: dense retrieval, stored ComprExIT slots and a frozen reader over one backbone.

Passages are compressed once, at indexing time, into soft slots that are kept in a
:class:`~comprexit_rag.slots.SlotStore`; answering a question then costs one retrieval, one
slot lookup and one generation. The same retriever, reader and ``k`` also serve the two
comparison methods, so all three answer on equal terms:

``comprexit``
    reads the stored slots of the retrieved passages (a passage missing from the store is
    compressed and stored on the spot);
``comi``
    compresses the retrieved passages together with the question (query-aware COMI), per query;
``full``
    reads the raw text of the retrieved passages.

A pipeline lives in one directory::

    <directory>/
        pipeline.json      # format version, backbone, head ("default" or a path), ratio
        retriever/         # DenseRetriever.save
        slots/             # SlotStore, one sub-directory per head fingerprint and ratio
        head/              # only when built from a head instance: that head
        untrained-head/    # only while no trained default head is shipped (see load_head_or_untrained)
        .index.lock        # held (flock) by the one index run allowed at a time

>>> pipeline = RAGPipeline.build("my-index")
>>> pipeline.index([{"title": "Paris", "text": "Paris is the capital of France."}])
>>> pipeline.ask("What is the capital of France?").answer
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from .adapter import ADAPTER_DIR, ReaderAdapter
from .backbone import Backbone
from .compressor import ComprExITCompressor, head_digest
from .data import Passage
from .default_model import DEFAULT_BACKBONE_NAME
from .errors import BackboneMismatchError, CheckpointError, InvalidInputError
from .head import DEFAULT_HEAD, ComprExITHead
from .methods import get_method, method_names
from .pipeline_directory import (
    HEAD_DIR,
    PIPELINE_FILE,
    PIPELINE_FORMAT,
    PIPELINE_VERSION,
    RETRIEVER_DIR,
    SLOTS_DIR,
    UNTRAINED_HEAD_DIR,
    atomic_write_json,
    index_lock,
    make_pipeline_directory,
    read_record,
)
from .pipeline_results import Answer, AnswerStats, IndexReport, Source
from .reader import Reader
from .retrieval import DenseRetriever, RetrievedPassage
from .slots import SlotService, SlotStore, content_key
from .soft_context import SoftContext
from .validation import check_positive_int, check_text, validate_ratio

if TYPE_CHECKING:
    from .comi import COMICompressor, COMIMerger
    from .methods import MethodSpec
    from .methods.base import Compressor

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "Answer",
    "AnswerStats",
    "IndexReport",
    "RAGPipeline",
    "Source",
    "load_compressor",
    "load_head_or_untrained",
]

DEFAULT = "default"
METHODS = method_names(pipeline=True)
"""The methods :meth:`RAGPipeline.ask` serves (see the method registry)."""

PassageInput = str | Passage | Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading the learned modules, with a loud fallback while no trained one is shipped.
# ---------------------------------------------------------------------------------------------


def load_head_or_untrained(backbone: Backbone, untrained_dir: str | os.PathLike[str] | None = None) -> ComprExITHead:
    """The shipped default head for ``backbone``; an untrained head (WARNING) when there is none.

    The trained head ships at :data:`comprexit_rag.head.DEFAULT_HEAD`. Until it does (or when
    ``backbone`` is not the backbone it was trained for), this returns a randomly initialised
    head, with a logged WARNING that answers will be poor. Slots depend on the head's weights,
    so the untrained head is saved to ``untrained_dir`` on first use and reloaded from there
    afterwards: stored slots stay valid across runs. Once the trained head ships it is picked
    up automatically; its new fingerprint makes the pipeline recompute every slot.
    """
    if DEFAULT_HEAD.is_dir():
        head = ComprExITHead.from_pretrained(DEFAULT_HEAD)
        if head.fingerprint == backbone.fingerprint:
            return head
        reason = f"the shipped head was trained for {head.fingerprint.describe()}, not {backbone.name}"
    else:
        reason = f"no trained head is shipped yet at {DEFAULT_HEAD}"
    saved = Path(untrained_dir) if untrained_dir is not None else None
    if saved is not None and saved.is_dir():
        head = ComprExITHead.from_pretrained(saved)
        if head.fingerprint == backbone.fingerprint:
            logger.warning("Using the UNTRAINED ComprExIT head saved in %s (%s): answers will be poor.", saved, reason)
            return head
    logger.warning(
        "Using a randomly initialised, UNTRAINED ComprExIT head (%s): answers will be poor. "
        "Pass a trained head with head=PATH (CLI: --head PATH).",
        reason,
    )
    head = ComprExITHead.for_backbone(backbone)
    if saved is not None:
        head.save_pretrained(saved, untrained=True)
    return head


def load_comi_merger_or_untrained(backbone: Backbone) -> COMIMerger:
    """The shipped default COMI merger; an untrained one (WARNING) when none fits ``backbone``."""
    from .comi import DEFAULT_MERGER, COMIMerger

    if DEFAULT_MERGER.is_dir():
        merger = COMIMerger.from_pretrained(DEFAULT_MERGER)
        if merger.fingerprint == backbone.fingerprint:
            return merger
        reason = f"the shipped merger was trained for {merger.fingerprint.describe()}, not {backbone.name}"
    else:
        reason = f"no trained COMI merger is shipped yet at {DEFAULT_MERGER}"
    logger.warning("Using an UNTRAINED COMI merger (%s): COMI answers will be poor.", reason)
    return COMIMerger.for_backbone(backbone)


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


class RAGPipeline:
    """Retriever + slot store + ComprExIT compressor + reader, sharing one frozen backbone.

    Create one with :meth:`build` (new directory) or :meth:`load` (existing one); :meth:`open`
    does whichever applies. The compressor, the reader and (lazily) the COMI compressor all
    use ``compressor.backbone``: the backbone is loaded once.

    :meth:`ask` may be called from several threads at once: model forwards and tokenizer calls
    are serialised by the backbone's lock, retrieval and the slot store have locks of their own,
    and the lazily built parts (slot stores, COMI) are created under the pipeline's lock. Answers
    equal those of sequential calls. :meth:`index` is meant to run in one thread at a time.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        compressor: ComprExITCompressor,
        retriever: DenseRetriever,
        ratio: int | None = None,
        comi_merger: str | os.PathLike[str] | COMIMerger | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        """Wire already-built parts; prefer :meth:`build` / :meth:`load`, which also persist them."""
        self.directory = Path(directory)
        self.compressor = compressor
        self.retriever = retriever
        self.ratio = validate_ratio(compressor.config.ratio if ratio is None else ratio, compressor.config.window)
        # The head's reader adapter (if it has one) reads its slots and the raw text; COMI's projector
        # was trained for the frozen reader, so its slots are read without the adapter.
        self.reader = Reader(compressor.backbone, adapter=compressor.reader_adapter)
        self.frozen_reader = Reader(compressor.backbone, adapter=None) if compressor.reader_adapter else self.reader
        self._comi_merger = comi_merger
        self._comi: COMICompressor | None = None
        # Stored slots of the compressor, one store per ratio under slots/ (see comprexit_rag.slots).
        self.slots = SlotService(compressor, self.directory / SLOTS_DIR)
        self._keys: dict[str, str] = {}  # passage id -> store key: each indexed text is hashed once per process
        self._lock = threading.RLock()  # guards the lazily built COMI compressor and the key memo
        self.record: dict[str, Any] = dict(record or {})

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike[str],
        *,
        backbone: str | os.PathLike[str] | Backbone | None = None,
        head: str | os.PathLike[str] | ComprExITHead | None = None,
        ratio: int | None = None,
        embedder: str | os.PathLike[str] | SentenceTransformer | None = None,
        retriever: DenseRetriever | None = None,
        comi_merger: str | os.PathLike[str] | COMIMerger | None = None,
        device: str | torch.device | None = None,
    ) -> RAGPipeline:
        """Create a new, empty pipeline in ``directory`` (which must not hold one yet).

        Args:
            backbone: a loaded :class:`Backbone`, a Hugging Face name or path, or ``None`` for
                the embedded SmolLM2-135M-Instruct.
            head: a :class:`ComprExITHead`, a checkpoint directory, or ``None`` for the shipped
                default head (see :func:`load_head_or_untrained`).
            ratio: compression ratio of the stored slots (default: the head's).
            embedder: sentence-transformers model for the retriever (default all-MiniLM-L6-v2).
            retriever: an empty (or pre-filled) retriever to use instead of building one.
            comi_merger: COMI merger for ``method="comi"`` (a module or directory; default the
                shipped one).
            device: where to load the backbone when it is loaded here.
        """
        directory = Path(directory)
        if (directory / PIPELINE_FILE).exists():
            raise _PipelineExistsError(f"{directory} already holds a pipeline; use RAGPipeline.load (or open).")
        make_pipeline_directory(directory)
        backbone = _load_backbone(backbone, DEFAULT, device)
        compressor, head_source = _resolve_compressor(directory, head, DEFAULT, backbone, save=False)
        if retriever is None:
            retriever = DenseRetriever(embedder)
        pipeline = cls(
            directory,
            compressor=compressor,
            retriever=retriever,
            ratio=ratio,
            comi_merger=comi_merger,
        )
        # Loading the models above takes seconds: another process may have built (and indexed)
        # this directory meanwhile. Check again, and write, under the index lock.
        with index_lock(directory):
            if (directory / PIPELINE_FILE).exists():
                raise _PipelineExistsError(
                    f"{directory} was built by another process meanwhile; use RAGPipeline.load (or open).",
                    backbone=backbone,
                )
            if head_source == HEAD_DIR:
                compressor.head.save_pretrained(directory / HEAD_DIR)
            pipeline.retriever.save(directory / RETRIEVER_DIR)
            pipeline._save_record(head_source, _comi_source(comi_merger))
        logger.info("Built pipeline in %s", directory)
        return pipeline

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        backbone: str | os.PathLike[str] | Backbone | None = None,
        head: str | os.PathLike[str] | ComprExITHead | None = None,
        ratio: int | None = None,
        embedder: str | os.PathLike[str] | SentenceTransformer | None = None,
        comi_merger: str | os.PathLike[str] | COMIMerger | None = None,
        device: str | torch.device | None = None,
    ) -> RAGPipeline:
        """Open the pipeline saved in ``directory``.

        Every argument defaults to what ``pipeline.json`` records; passing ``head`` or
        ``ratio`` switches the pipeline to them (and records the switch), while ``comi_merger``
        and ``embedder`` apply to this session only. Stored slots are
        keyed by head fingerprint and ratio, so slots of another head or ratio are never
        served: they are recomputed on the next :meth:`index` or on demand in :meth:`ask`.

        Raises:
            InvalidInputError: ``directory`` holds no pipeline, or one of another format.
            BackboneMismatchError: ``backbone`` is not the backbone the pipeline was built with.
        """
        directory = Path(directory)
        record = read_record(directory)
        loaded = _load_backbone(backbone, record["backbone"], device)
        # Pipelines saved before the fingerprint covered the weights record the layout digest.
        if record["backbone_fingerprint"] not in (loaded.fingerprint.digest, loaded.fingerprint.layout_digest):
            raise BackboneMismatchError(
                f"{directory} was built with backbone {record.get('backbone_name')!r} (fingerprint "
                f"{record['backbone_fingerprint']}), not {loaded.name!r} ({loaded.fingerprint.digest}); "
                "load it with the same backbone or build a new pipeline."
            )
        compressor, head_source = _resolve_compressor(directory, head, record["head"], loaded)
        pipeline = cls(
            directory,
            compressor=compressor,
            retriever=_load_retriever(directory, embedder),
            ratio=record["ratio"] if ratio is None else ratio,
            comi_merger=comi_merger if comi_merger is not None else record.get("comi_merger"),
            record=record,
        )
        pipeline._save_record(head_source, record.get("comi_merger"))
        logger.info("Loaded pipeline from %s (%d passages)", directory, len(pipeline))
        return pipeline

    @classmethod
    def open(cls, directory: str | os.PathLike[str], **kwargs: Any) -> RAGPipeline:
        """:meth:`load` the pipeline in ``directory`` if there is one, else :meth:`build` it."""
        if not (Path(directory) / PIPELINE_FILE).exists():
            try:
                return cls.build(directory, **kwargs)
            except _PipelineExistsError as race:  # built by another process since the check above
                if race.backbone is not None:
                    kwargs["backbone"] = race.backbone
        kwargs.pop("retriever", None)  # a saved pipeline reloads its own retriever
        return cls.load(directory, **kwargs)

    def _save_record(self, head_source: str, comi_source: str | None) -> None:
        backbone = self.backbone
        record = {
            "format": PIPELINE_FORMAT,
            "version": PIPELINE_VERSION,
            # How load() finds the backbone again: "default", a name or path, or None (pass backbone=).
            "backbone": DEFAULT if backbone.name == DEFAULT_BACKBONE_NAME else (backbone.name or None),
            "backbone_name": backbone.name,
            "backbone_fingerprint": backbone.fingerprint.digest,
            "head": head_source,
            "head_fingerprint": self.compressor.fingerprint,
            "ratio": self.ratio,
            "embedder": self.retriever.embedder_name,
            "comi_merger": comi_source,
        }
        if record != self.record:
            atomic_write_json(self.directory / PIPELINE_FILE, record)
            self.record = record

    # ------------------------------------------------------------------ parts

    @property
    def backbone(self) -> Backbone:
        """The one frozen backbone shared by the compressor, the reader and COMI."""
        return self.compressor.backbone

    @property
    def comi(self) -> COMICompressor:
        """The query-aware COMI compressor (built on first use, over the shared backbone)."""
        with self._lock:
            if self._comi is None:
                from .comi import COMICompressor, COMIMerger

                merger = self._comi_merger
                if merger is None:
                    merger = load_comi_merger_or_untrained(self.backbone)
                elif not isinstance(merger, COMIMerger):
                    merger = COMIMerger.from_pretrained(merger)
                self._comi = COMICompressor.from_pretrained(merger=merger, backbone=self.backbone)
            return self._comi

    @property
    def store(self) -> SlotStore:
        """The slot store of the current head at the pipeline's ratio."""
        return self.store_for(self.ratio)

    def store_for(self, ratio: int) -> SlotStore:
        """The slot store of the current head at ``ratio`` (slots of each ratio are kept apart)."""
        return self.slots.backend(ratio)

    def __len__(self) -> int:
        """Number of indexed passages."""
        return len(self.retriever)

    def info(self) -> dict[str, Any]:
        """A summary: passages, stored slots, bytes on disk, backbone, head and ratio."""
        store = self.store
        return {
            "directory": str(self.directory),
            "passages": len(self),
            "stored": sum(1 for key in self._passage_keys() if key in store),
            "slot_bytes": store.size_on_disk(),
            "backbone": self.backbone.name,
            "head": self.record.get("head"),
            "head_fingerprint": self.compressor.fingerprint,
            "ratio": self.ratio,
        }

    # ------------------------------------------------------------------ indexing

    def index(
        self,
        passages: Sequence[PassageInput],
        *,
        batch_size: int = 8,
        chunk_size: int | None = None,
        show_progress: bool | None = None,
        verify: bool = False,
    ) -> IndexReport:
        """Add passages to the retriever and store the slots of every passage that lacks them.

        Passages are strings, :class:`~comprexit_rag.data.Passage` records or dicts with
        ``text`` and optional ``id`` and ``title``; ids default to the content hash of the
        formatted text ``"title\\ntext"``. The retriever is saved first; slots are then
        computed in chunks of ``chunk_size`` passages (default ``8 * batch_size``), each chunk
        committed to the store on its own, so an interrupted run loses at most one chunk and
        a rerun resumes where it stopped. Every indexed passage without stored slots (for the
        current head and ratio) is compressed, including those of earlier calls.

        Before compressing, the slot store checks itself and repairs what an interrupted run
        (``kill -9``, power loss, full disk) can leave: missing or truncated shards are retired
        (their passages are recomputed), orphan shard files and temporary files are deleted and
        a torn manifest line is truncated. Committed slots are never lost.

        Args:
            passages: the passages to add (already indexed ones are skipped).
            batch_size: compressor batch size.
            chunk_size: passages compressed and committed together.
            show_progress: tqdm bar; by default shown for 64 passages to compress or more.
            verify: check the store fully first (sha256 of every shard, as ``SlotStore.verify``)
                instead of by file sizes only, and repair it.
        """
        started = time.perf_counter()
        if isinstance(passages, str | bytes | Mapping | Passage):
            raise InvalidInputError("index() takes a list of passages, not a single one.")
        if passages is None or not hasattr(passages, "__iter__"):
            raise InvalidInputError(f"index() takes a list of passages, got {type(passages).__name__}.")
        check_positive_int(batch_size, "batch_size")
        chunk_size = 8 * batch_size if chunk_size is None else check_positive_int(chunk_size, "chunk_size")

        records = _unique_by_text([_as_passage(p, i) for i, p in enumerate(passages)])
        with index_lock(self.directory):
            return self._index(records, batch_size, chunk_size, show_progress, verify, started)

    def _index(
        self,
        records: list[Passage],
        batch_size: int,
        chunk_size: int,
        show_progress: bool | None,
        verify: bool,
        started: float,
    ) -> IndexReport:
        """The body of :meth:`index`, run under the directory's index lock."""
        # Another process or pipeline object may have indexed since this one loaded: adopt what
        # is on disk first, so that saving below merges their passages instead of dropping them.
        if self.retriever.reload_if_changed(self.directory / RETRIEVER_DIR):
            logger.info("Merged passages indexed by another writer: %d in the index", len(self.retriever))
        before = len(self.retriever)
        if records:
            texts = [p.formatted() for p in records]
            keys = [content_key(text) for text in texts]
            ids = [p.id or key for p, key in zip(records, keys, strict=True)]
            self.retriever.add(
                texts, ids=ids, metadatas=[{"title": p.title} for p in records], show_progress=show_progress
            )
            with self._lock:  # the ids are now indexed with these texts
                self._keys.update(zip(ids, keys, strict=True))
        added = len(self.retriever) - before
        if added:
            self.retriever.save(self.directory / RETRIEVER_DIR)

        store = self.store
        repaired = store.verify(repair=True, quick=not verify)
        if repaired:
            logger.info("Repaired %d problem(s) of the slot store before indexing", len(repaired))
        keys = self._passage_keys()
        missing = {key: self.retriever.get(passage_id).text for key, passage_id in keys.items() if key not in store}
        compressed = self.slots.fill(
            missing, ratio=self.ratio, batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress
        )
        report = IndexReport(
            passages=len(records),
            added=added,
            compressed=compressed,
            stored=sum(1 for key in keys if key in store),
            seconds=time.perf_counter() - started,
        )
        logger.info("Indexed %s", report)
        return report

    def _passage_keys(self) -> dict[str, str]:
        """Store key -> passage id of every indexed passage, in insertion order (a text is hashed once)."""
        with self._lock:
            for passage_id in self.retriever.ids:
                if passage_id not in self._keys:
                    self._keys[passage_id] = content_key(self.retriever.get(passage_id).text)
            return {self._keys[passage_id]: passage_id for passage_id in self.retriever.ids}

    # ------------------------------------------------------------------ answering

    def ask(
        self,
        question: str,
        *,
        method: str = "comprexit",
        k: int = 5,
        ratio: int | None = None,
        max_new_tokens: int = 20,
    ) -> Answer:
        """Answer ``question`` from the ``k`` best passages, read as ``method`` prescribes.

        Args:
            question: the question.
            method: ``"comprexit"`` (stored slots), ``"comi"`` (query-aware slots computed now)
                or ``"full"`` (raw text).
            k: passages to retrieve (all of them when the index holds fewer).
            ratio: compression ratio (default the pipeline's; ignored by ``full``). A ratio
                other than the pipeline's uses, and fills, a separate slot store.
            max_new_tokens: longest answer, in tokens.

        Raises:
            InvalidInputError: empty question, unknown method, bad ``k``, ratio or
                ``max_new_tokens``, an empty index, or a question too long for the reader (prompt,
                question, context and answer must fit the backbone's maximum length; see
                :meth:`Reader.context_budget <comprexit_rag.reader.Reader.context_budget>`).
        """
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(f"The question must be a non-empty string, got {question!r:.80}.")
        check_text(question, "The question")
        spec = get_method(method, pipeline=True)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
        compressor = self._compressor_for(spec)
        ratio = validate_ratio(self.ratio if ratio is None else ratio, (compressor or self.compressor).max_ratio)
        # Refuse a question that cannot fit the reader before any retrieval or compression work.
        self.reader.context_budget(question, max_new_tokens)
        if not len(self.retriever):
            raise InvalidInputError(f"{self.directory} holds no passages yet; index some first.")

        started = time.perf_counter()
        hits = self.retriever.search(question, k=k)
        retrieved = time.perf_counter()
        texts = [hit.text for hit in hits]
        hits_in_store = misses = 0
        context: SoftContext | list[str] = texts
        if spec.storable:
            context, hits_in_store, misses = self._stored_context(texts, ratio)
        elif spec.query_aware:
            context = compressor.compress(texts, query=question, ratio=ratio)
        compressed = time.perf_counter()
        answer = self._reader_for(compressor).generate(question, context, max_new_tokens=max_new_tokens)
        finished = time.perf_counter()

        if isinstance(context, SoftContext):
            tokens, slots, achieved = context.num_tokens, context.num_slots, context.ratio
        else:
            tokens, slots, achieved = sum(len(ids) for ids in self.backbone.tokenize(texts)), 0, 1.0
        return Answer(
            question=question,
            answer=answer,
            method=method,
            sources=tuple(_source(hit) for hit in hits),
            timings={
                "retrieve": retrieved - started,
                "compress": compressed - retrieved,
                "read": finished - compressed,
                "total": finished - started,
            },
            stats=AnswerStats(tokens, slots, achieved, hits_in_store, misses),
        )

    def ask_many(self, questions: Sequence[str], *, show_progress: bool | None = None, **kwargs: Any) -> list[Answer]:
        """:meth:`ask` each question in turn (same keyword arguments); answers in input order."""
        if isinstance(questions, str):
            raise InvalidInputError("ask_many() takes a list of questions; use ask() for one.")
        questions = list(questions)
        show = len(questions) >= 10 if show_progress is None else show_progress
        return [self.ask(q, **kwargs) for q in tqdm(questions, desc="answering", unit="question", disable=not show)]

    def _compressor_for(self, spec: MethodSpec) -> Compressor | None:
        """The compressor of a slot method: the stored head's, or the query-aware one (COMI); None for text."""
        if spec.context != "slots":
            return None
        return self.compressor if spec.storable else self.comi

    def _reader_for(self, compressor: Compressor | None) -> Reader:
        """The reader of the compressor's slots: through its reader adapter, or the frozen one (COMI)."""
        adapter = (compressor or self.compressor).reader_adapter
        return self.reader if adapter is self.reader.adapter else self.frozen_reader

    def _stored_context(self, texts: Sequence[str], ratio: int) -> tuple[SoftContext, int, int]:
        """Slots of ``texts`` from the store; missing ones are compressed and stored now."""
        found = self.slots.lookup(texts, ratio=ratio)
        return found.context, found.hits, found.misses

    def __repr__(self) -> str:
        return (
            f"RAGPipeline({str(self.directory)!r}, passages={len(self)}, backbone={self.backbone.name!r}, "
            f"ratio={self.ratio})"
        )


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


class _PipelineExistsError(InvalidInputError):
    """:meth:`RAGPipeline.build` on a directory that holds a pipeline (``open`` then loads it)."""

    def __init__(self, message: str, backbone: Backbone | None = None) -> None:
        super().__init__(message)
        self.backbone = backbone  # already loaded: open() reuses it instead of loading it twice


def _load_backbone(
    backbone: str | os.PathLike[str] | Backbone | None, recorded: str | None, device: str | torch.device | None
) -> Backbone:
    """``backbone`` if given (an instance, a name or a path), else the recorded one."""
    if isinstance(backbone, Backbone):
        return backbone
    source = backbone if backbone is not None else recorded
    if source is None:
        raise InvalidInputError(
            "This pipeline was built from an in-memory backbone with no name; pass the same backbone= to load it."
        )
    if source == DEFAULT:
        return Backbone.from_pretrained(None, device=device)
    local = Path(source).expanduser()
    # A local directory is recorded by absolute path, so the pipeline loads from any working directory.
    return Backbone.from_pretrained(str(local.resolve()) if local.is_dir() else source, device=device)


def _load_retriever(directory: Path, embedder: str | os.PathLike[str] | SentenceTransformer | None) -> DenseRetriever:
    try:
        return DenseRetriever.load(directory / RETRIEVER_DIR, embedder)
    except FileNotFoundError as error:
        raise CheckpointError(f"{directory} is incomplete ({error}); rebuild it with `index`.") from error


def _resolve_compressor(
    directory: Path,
    head: str | os.PathLike[str] | ComprExITHead | None,
    recorded: str,
    backbone: Backbone,
    *,
    save: bool = True,
) -> tuple[ComprExITCompressor, str]:
    """The compressor of the head to use (with the head's reader adapter, if it has one) and how
    ``pipeline.json`` refers to the head (``"default"`` or a path).

    A head instance is saved to ``directory/head`` (unless ``save`` is false: build saves it under
    the index lock, so that a racing build cannot overwrite the head of another's pipeline).
    """
    if isinstance(head, ComprExITHead):
        if save:
            head.save_pretrained(directory / HEAD_DIR)
        return load_compressor(backbone, head), HEAD_DIR
    source = os.fspath(head) if head is not None else recorded
    if source == DEFAULT:
        return load_compressor(backbone, untrained_dir=directory / UNTRAINED_HEAD_DIR), DEFAULT
    head_dir = Path(source) if Path(source).is_absolute() or head is not None else directory / source
    return load_compressor(backbone, head_dir), source if head is None else str(head_dir.resolve())


def load_compressor(
    backbone: Backbone,
    head: str | os.PathLike[str] | ComprExITHead | None = None,
    *,
    untrained_dir: str | os.PathLike[str] | None = None,
) -> ComprExITCompressor:
    """The ComprExIT compressor of ``head`` over ``backbone``, with the head's reader adapter if it has one.

    ``head``: a head instance (used as it is), a checkpoint directory (its ``reader_adapter/`` is
    attached), or ``None`` for the shipped head and its adapter, or an untrained head when none fits
    ``backbone`` (see :func:`load_head_or_untrained`; ``untrained_dir`` keeps it across runs).
    """
    if isinstance(head, ComprExITHead):
        return ComprExITCompressor(backbone, head)
    if head is None:
        module = load_head_or_untrained(backbone, untrained_dir)
        head_dir = DEFAULT_HEAD if _is_saved_head(module, DEFAULT_HEAD) else None  # not the untrained fallback
    else:
        head_dir = Path(head)
        module = ComprExITHead.from_pretrained(head_dir)
    adapter = None
    if head_dir is not None and (head_dir / ADAPTER_DIR).is_dir():
        adapter = ReaderAdapter.from_pretrained(head_dir / ADAPTER_DIR, backbone)
    return ComprExITCompressor(backbone, module, reader_adapter=adapter)


def _is_saved_head(head: ComprExITHead, directory: Path) -> bool:
    """Whether ``head`` holds the weights saved in ``directory`` (e.g. the shipped head, not a fallback)."""
    if not (directory / "model.safetensors").is_file():
        return False
    return head_digest(head) == head_digest(ComprExITHead.from_pretrained(directory))


def _comi_source(merger: object) -> str | None:
    """How ``pipeline.json`` refers to the COMI merger given at build time (a path, else ``None``)."""
    return str(Path(merger).resolve()) if isinstance(merger, str | os.PathLike) else None


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


def _source(hit: RetrievedPassage) -> Source:
    return Source(id=hit.id, title=str(hit.metadata.get("title", "")), score=hit.score)
