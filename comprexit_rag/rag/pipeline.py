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

A pipeline lives in one directory (:mod:`comprexit_rag.rag.directory`). Indexing and answering are
:mod:`~comprexit_rag.rag.indexing` and :mod:`~comprexit_rag.rag.answering`; loading the parts, with
their fallbacks, :mod:`~comprexit_rag.rag.loading`.

>>> pipeline = RAGPipeline.build("my-index")
>>> pipeline.index([{"title": "Paris", "text": "Paris is the capital of France."}])
>>> pipeline.ask("What is the capital of France?").answer
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from ..backbone import Backbone
from ..default_model import DEFAULT_BACKBONE_NAME
from ..errors import BackboneMismatchError, InvalidInputError, RatioMismatchError
from ..methods import get_method, method_names
from ..methods.comprexit.compressor import ComprExITCompressor
from ..methods.comprexit.head import ComprExITHead
from ..reading.reader import Reader
from ..retrieval.dense import DenseRetriever
from ..slots import SlotService, SlotStore
from ..validation import check_positive_int, check_text, resolve_ratio, validate_ratio
from .answering import answer_question
from .directory import (
    HEAD_DIR,
    PIPELINE_FILE,
    RETRIEVER_DIR,
    SLOTS_DIR,
    PipelineExistsError,
    PipelineRecord,
    index_lock,
    make_pipeline_directory,
)
from .indexing import PassageInput, PassageKeys, index_passages, prepare_passages
from .loading import (
    DEFAULT,
    comi_source,
    load_backbone,
    load_comi_compressor,
    load_retriever,
    resolve_compressor,
)
from .results import Answer, IndexReport

if TYPE_CHECKING:
    from ..methods import MethodSpec
    from ..methods.base import Compressor
    from ..methods.comi import COMICompressor, COMIMerger

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "RAGPipeline"]

METHODS = method_names(pipeline=True)
"""The methods :meth:`RAGPipeline.ask` serves (see the method registry)."""


# ---------------------------------------------------------------------------------------------
# Loading the learned modules, with a loud fallback while no trained one is shipped.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


def check_query(text: object, what: str) -> None:
    """Refuse a question or search query that is not a non-empty, well-formed string."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"{what} must be a non-empty string, got {text!r:.80}.")
    check_text(text, what)


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
        record: PipelineRecord | None = None,
    ) -> None:
        """Wire already-built parts; prefer :meth:`build` / :meth:`load`, which also persist them."""
        self.directory = Path(directory)
        self.compressor = compressor
        self.retriever = retriever
        self.ratio = resolve_ratio(compressor, ratio)
        # The head's reader adapter (if it has one) reads its slots and the raw text; COMI's slots are read
        # through the adapter its merger was trained with (``reader.through``): none unless it brought one.
        self.reader = Reader(compressor.backbone, adapter=compressor.reader_adapter)
        self._comi_merger = comi_merger
        self._comi: COMICompressor | None = None
        # Stored slots of the compressor, one store per ratio under slots/ (see comprexit_rag.slots).
        self.slots = SlotService(compressor, self.directory / SLOTS_DIR)
        self.keys = PassageKeys(retriever)  # the store key of every indexed passage
        self._lock = threading.RLock()  # guards the lazily built COMI compressor
        self.record = record

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
            raise PipelineExistsError(f"{directory} already holds a pipeline; use RAGPipeline.load (or open).")
        make_pipeline_directory(directory)
        backbone = load_backbone(backbone, DEFAULT, device)
        compressor, head_source = resolve_compressor(directory, head, DEFAULT, backbone, save=False)
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
                raise PipelineExistsError(
                    f"{directory} was built by another process meanwhile; use RAGPipeline.load (or open).",
                    backbone=backbone,
                )
            if head_source == HEAD_DIR:
                compressor.head.save_pretrained(directory / HEAD_DIR)
            pipeline.retriever.save(directory / RETRIEVER_DIR)
            pipeline._save_record(head_source, comi_source(comi_merger))
        logger.info("Built pipeline in %s", directory)
        return pipeline

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        backbone: str | os.PathLike[str] | Backbone | None = None,
        embedder: str | os.PathLike[str] | SentenceTransformer | None = None,
        device: str | torch.device | None = None,
        head: str | os.PathLike[str] | ComprExITHead | None = None,
        ratio: int | None = None,
        comi_merger: str | os.PathLike[str] | COMIMerger | None = None,
    ) -> RAGPipeline:
        """Open the pipeline saved in ``directory``.

        Every argument defaults to what ``pipeline.json`` records; passing ``head`` switches the
        pipeline to that head (and records the switch), while ``comi_merger`` and ``embedder`` apply
        to this session only. Stored slots are keyed by head fingerprint and ratio, so slots of another
        head are never served: they are recomputed on the next :meth:`index` or on demand in :meth:`ask`.
        ``ratio`` must be the recorded one (or ``None``): the pipeline's ratio changes only through
        :meth:`switch_ratio`.

        Raises:
            InvalidInputError: ``directory`` holds no pipeline, or one of another format.
            RatioMismatchError: ``ratio`` is not the ratio of the stored slots.
            BackboneMismatchError: ``backbone`` is not the backbone the pipeline was built with.
        """
        directory = Path(directory)
        record = PipelineRecord.read(directory)
        loaded = load_backbone(backbone, record.backbone, device)
        # Pipelines saved before the fingerprint covered the weights record the layout digest.
        if record.backbone_fingerprint not in (loaded.fingerprint.digest, loaded.fingerprint.layout_digest):
            raise BackboneMismatchError(
                f"{directory} was built with backbone {record.backbone_name!r} (fingerprint "
                f"{record.backbone_fingerprint}), not {loaded.name!r} ({loaded.fingerprint.digest}); "
                "load it with the same backbone or build a new pipeline."
            )
        compressor, head_source = resolve_compressor(directory, head, record.head, loaded)
        if ratio is not None and validate_ratio(ratio, compressor.max_ratio) != record.ratio:
            raise RatioMismatchError(
                f"{directory} stores its slots at ratio {record.ratio}, not {ratio}. Open it without a ratio; ask "
                f"one question at ratio {ratio} with ask(..., ratio={ratio}) (those slots are kept apart), or "
                f"switch the pipeline with RAGPipeline.load(directory).switch_ratio({ratio}) (CLI: comprexit-rag "
                f"index CORPUS --out {directory} --ratio {ratio} --switch-ratio)."
            )
        pipeline = cls(
            directory,
            compressor=compressor,
            retriever=load_retriever(directory, embedder),
            ratio=record.ratio,
            comi_merger=comi_merger if comi_merger is not None else record.comi_merger,
            record=record,
        )
        pipeline._save_record(head_source, record.comi_merger)
        logger.info("Loaded pipeline from %s (%d passages)", directory, len(pipeline))
        return pipeline

    @classmethod
    def open(cls, directory: str | os.PathLike[str], **kwargs: Any) -> RAGPipeline:
        """:meth:`load` the pipeline in ``directory`` if there is one, else :meth:`build` it."""
        if not (Path(directory) / PIPELINE_FILE).exists():
            try:
                return cls.build(directory, **kwargs)
            except PipelineExistsError as race:  # built by another process since the check above
                if race.backbone is not None:
                    kwargs["backbone"] = race.backbone
        kwargs.pop("retriever", None)  # a saved pipeline reloads its own retriever
        return cls.load(directory, **kwargs)

    def switch_ratio(self, ratio: int) -> None:
        """Make ``ratio`` the pipeline's ratio, and record it: :meth:`ask` and :meth:`index` then use the
        slots of that ratio (kept apart from those of the previous one, which stay on disk)."""
        self.ratio = validate_ratio(ratio, self.compressor.max_ratio)
        self._save_record(self.record.head, self.record.comi_merger)
        logger.info("Switched %s to ratio %d", self.directory, self.ratio)

    def _save_record(self, head_source: str, comi_source: str | None) -> None:
        backbone = self.backbone
        record = PipelineRecord(
            # How load() finds the backbone again: "default", a name or path, or None (pass backbone=).
            backbone=DEFAULT if backbone.name == DEFAULT_BACKBONE_NAME else (backbone.name or None),
            backbone_name=backbone.name,
            backbone_fingerprint=backbone.fingerprint.digest,
            head=head_source,
            head_fingerprint=self.compressor.fingerprint,
            ratio=self.ratio,
            embedder=self.retriever.embedder_name,
            comi_merger=comi_source,
        )
        if record != self.record:
            record.write(self.directory)
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
                self._comi = load_comi_compressor(self.backbone, self._comi_merger)
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
            "stored": sum(1 for key in self.keys.by_key() if key in store),
            "slot_bytes": store.size_on_disk(),
            "backbone": self.backbone.name,
            "head": self.record.head,
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
        check_positive_int(batch_size, "batch_size")
        chunk_size = 8 * batch_size if chunk_size is None else check_positive_int(chunk_size, "chunk_size")
        records = prepare_passages(passages)
        with index_lock(self.directory):
            return index_passages(
                self, records, batch_size=batch_size, chunk_size=chunk_size, show_progress=show_progress, verify=verify
            )

    # ------------------------------------------------------------------ answering

    def ask(
        self,
        question: str,
        *,
        method: str = "comprexit",
        k: int = 5,
        ratio: int | None = None,
        max_new_tokens: int = 20,
        search_query: str | None = None,
    ) -> Answer:
        """Answer ``question`` from the ``k`` best passages, read as ``method`` prescribes.

        Args:
            question: the question.
            method: ``"comprexit"`` (stored slots), ``"comi"`` (query-aware slots computed now),
                ``"full"`` (raw text) or ``"closed-book"`` (no passages, through the same reader: the
                control that shows what the passages add).
            k: passages to retrieve (all of them when the index holds fewer).
            ratio: compression ratio (default the pipeline's; ignored by ``full``). A ratio
                other than the pipeline's uses, and fills, a separate slot store.
            max_new_tokens: longest answer, in tokens.
            search_query: the text to retrieve with, when it is not the question (a rewritten
                query, or keywords); the reader, and COMI's compression, still see the question.

        Raises:
            InvalidInputError: empty question or search query, unknown method, bad ``k``, ratio or
                ``max_new_tokens``, an empty index, or a question too long for the reader (prompt,
                question, context and answer must fit the backbone's maximum length; see
                :meth:`Reader.context_budget <comprexit_rag.reading.reader.Reader.context_budget>`).
        """
        check_query(question, "The question")
        if search_query is not None:
            check_query(search_query, "The search query")
        spec = get_method(method, pipeline=True)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
        compressor = self._compressor_for(spec)
        ratio = validate_ratio(self.ratio if ratio is None else ratio, (compressor or self.compressor).max_ratio)
        # Refuse a question that cannot fit the reader before any retrieval or compression work.
        self.reader.context_budget(question, max_new_tokens)
        if spec.context != "none" and not len(self.retriever):
            raise InvalidInputError(f"{self.directory} holds no passages yet; index some first.")

        return answer_question(
            self, question, spec, compressor, k=k, ratio=ratio, max_new_tokens=max_new_tokens, search_query=search_query
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

    def __repr__(self) -> str:
        return (
            f"RAGPipeline({str(self.directory)!r}, passages={len(self)}, backbone={self.backbone.name!r}, "
            f"ratio={self.ratio})"
        )
