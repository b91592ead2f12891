"""ComprExITDocumentCompressor: a LangChain document compressor that turns passages into soft slots.

Compressing a :class:`~langchain_core.documents.Document` keeps its ``page_content`` and
metadata and adds, under ``metadata["comprexit"]``, a JSON-safe record of its slots::

    {"slot_key": "<sha256>", "slots": 12, "tokens": 47, "ratio": 4,
     "fingerprint": "comprexit-…/ratio=4", "method": "comprexit"}

The slot tensors themselves never enter the metadata: the core's slot service
(:class:`~comprexit_rag.slots.SlotService`) keeps them in a :class:`~comprexit_rag.slots.SlotStore`
(``store=``, e.g. a pipeline's store, shared with :meth:`RAGPipeline.ask
<comprexit_rag.rag.pipeline.RAGPipeline.ask>`) or, without a store, in a bounded in-memory cache keyed by
content hash and fingerprint. Passages already stored are not compressed again.
:class:`~langchain_comprexit.readers.ComprExITReader` then reads the slots.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from comprexit_rag.defaults import default_compressor
from comprexit_rag.errors import BackboneMismatchError, InvalidInputError
from comprexit_rag.methods import get_method, method_names
from comprexit_rag.methods.comi import COMICompressor
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.slots import SlotService, SlotStore, store_fingerprint
from comprexit_rag.slots.service import check_store_fingerprint
from comprexit_rag.soft_context import SoftContext
from comprexit_rag.validation import check_positive_int, resolve_ratio, validate_ratio
from langchain_core.callbacks import CallbackManager, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from langchain_comprexit._checks import TypedErrors, check_documents, is_blank

if TYPE_CHECKING:
    from comprexit_rag.rag import RAGPipeline
    from comprexit_rag.reading.adapter import ReaderAdapter

__all__ = ["COMPRESS_EVENT", "METHODS", "SLOT_METADATA_KEY", "ComprExITDocumentCompressor", "Method", "SlotLookup"]

SLOT_METADATA_KEY = "comprexit"
"""Default metadata key of the slot record added to each compressed document."""
COMPRESS_EVENT = "comprexit_compress"
"""Name of the custom callback event dispatched by :meth:`ComprExITDocumentCompressor.compress_documents`."""
METHODS = method_names(pipeline=True, context="slots")
"""The slot methods a compressor serves: ``comprexit`` (stored) and ``comi`` (query-aware)."""
STORED = next(name for name in METHODS if get_method(name).storable)
Method = str


class SlotLookup(NamedTuple):
    """The soft context of some documents, as :meth:`ComprExITDocumentCompressor.soft_context` found it.

    ``context`` holds one passage per entry of ``documents`` (the documents with non-blank
    content, in input order); ``hits`` of them had stored or cached slots, ``misses`` were
    compressed now. ``context`` is ``None`` when no document has content.
    """

    context: SoftContext | None
    documents: list[Document]
    hits: int
    misses: int


class ComprExITDocumentCompressor(TypedErrors, BaseDocumentCompressor):
    """Compress LangChain documents into ComprExIT (or query-aware COMI) soft slots.

    Works on its own, as ``base_compressor`` of ``ContextualCompressionRetriever`` and as a
    step of ``DocumentCompressorPipeline`` (both from ``langchain_classic``).

    With no arguments it compresses with the embedded defaults (SmolLM2 and the shipped head, at
    the head's ratio), shared with every other default component of the process
    (:mod:`comprexit_rag.defaults`), into an in-memory cache. Unknown arguments raise
    :class:`~comprexit_rag.errors.InvalidInputError`.

    Args:
        compressor: the ComprExIT compressor (backbone + head); default
            :func:`comprexit_rag.defaults.default_compressor`.
        store: where ComprExIT slots are kept; its fingerprint must be
            ``f"{compressor.fingerprint}/ratio={ratio}"`` (what :class:`RAGPipeline` uses).
            Without one, slots live in an in-memory LRU of ``cache_size`` passages.
        ratio: compression ratio (default: the head's, or the COMI merger's for ``"comi"``).
        method: ``"comprexit"`` (query-independent, stored) or ``"comi"`` (query-aware, per
            query, cached in memory only; needs ``comi``).
        comi: the COMI compressor for ``method="comi"`` (same backbone as ``compressor``).
        metadata_key: metadata key of the slot record.
        batch_size: compressor batch size.
        cache_size: passages kept by the in-memory cache.

    >>> compressor = ComprExITDocumentCompressor.from_pipeline(pipeline)
    >>> docs = compressor.compress_documents(docs, query="Who wrote Hamlet?")
    >>> docs[0].metadata["comprexit"]["slots"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    compressor: ComprExITCompressor = Field(default_factory=default_compressor)
    store: SlotStore | None = None
    ratio: int | None = None
    method: Method = "comprexit"
    comi: COMICompressor | None = None
    metadata_key: str = SLOT_METADATA_KEY
    batch_size: int = 8
    cache_size: int = 4096

    _services: dict[str, SlotService] = PrivateAttr(default_factory=dict)  # one per method, built on first use
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("batch_size", "cache_size", mode="before")
    @classmethod
    def _positive(cls, value: object, info: ValidationInfo) -> int:
        return check_positive_int(value, str(info.field_name))

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, value: object) -> object:
        return get_method(value, pipeline=True, context="slots").name

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_type(cls, value: object) -> object:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            validate_ratio(value, 1)  # the core's InvalidInputError: "ratio must be a positive integer, got …"
        return value  # the range is checked against the window below

    @model_validator(mode="after")
    def _check(self) -> Self:
        if get_method(self.method).query_aware and self.comi is None:
            raise InvalidInputError(f"method={self.method!r} needs a COMICompressor: pass comi=COMICompressor(...).")
        if self.comi is not None and self.comi.backbone.fingerprint != self.compressor.backbone.fingerprint:
            raise BackboneMismatchError(
                "comi and compressor must share one backbone: their slots are read by the same reader. "
                "Build the COMICompressor over the compressor's backbone."
            )
        for method in METHODS if self.comi is not None else (STORED,):
            self.ratio_for(method)  # raises InvalidInputError on a bad ratio
        if self.store is not None:
            check_store_fingerprint(self.store, self.fingerprint(STORED))
        return self

    @classmethod
    def from_pipeline(
        cls, pipeline: RAGPipeline, *, ratio: int | None = None, method: Method = "comprexit", **kwargs: Any
    ) -> ComprExITDocumentCompressor:
        """A compressor over ``pipeline``'s head and slot store (and its COMI compressor for ``"comi"``)."""
        ratio = pipeline.ratio if ratio is None else ratio
        if get_method(method).query_aware and kwargs.get("comi") is None:
            kwargs["comi"] = pipeline.comi
        return cls(
            compressor=pipeline.compressor, store=pipeline.store_for(ratio), ratio=ratio, method=method, **kwargs
        )

    # ------------------------------------------------------------------ identities

    def ratio_for(self, method: Method | None = None) -> int:
        """The compression ratio used by ``method`` (default: this compressor's method)."""
        return resolve_ratio(self._compressor(method or self.method), self.ratio)

    def fingerprint(self, method: Method | None = None) -> str:
        """Names the slots of ``method``: compressor weights and backbone, then the ratio."""
        method = method or self.method
        return store_fingerprint(self._compressor(method).fingerprint, self.ratio_for(method))

    def reader_adapter(self, method: Method | None = None) -> ReaderAdapter | None:
        """The reader adapter ``method``'s slots are read through (``None``: the frozen reader)."""
        return self._compressor(method or self.method).reader_adapter

    def slot_key(self, text: str, query: str | None = None, method: Method | None = None) -> str:
        """Key of the slots of ``text``: its content hash (for COMI, of the query and the text)."""
        return self._service(method or self.method).key(text, query)

    # ------------------------------------------------------------------ LangChain API

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compress ``documents`` (reusing stored slots) and add the slot record to their metadata.

        Returns new documents, in input order, with the same ``id``, ``page_content`` and
        metadata plus ``metadata[metadata_key]``; documents with blank content are returned
        unchanged. ``query`` is only used by ``method="comi"``. When ``callbacks`` belong to a
        run (as inside ``ContextualCompressionRetriever``), a ``"comprexit_compress"`` custom
        event reports ``documents``, ``hits``, ``misses``, ``slots`` and ``tokens``.

        Raises:
            InvalidInputError: ``documents`` is not a list of Documents, a ``page_content`` is not
                a string or not valid Unicode, or ``method="comi"`` gets no query or one too long
                for the backbone.
            CheckpointError: the slot store is corrupt (see :class:`~comprexit_rag.slots.SlotStore`).
        """
        method = self.method
        documents = check_documents(documents)
        readable = [i for i, doc in enumerate(documents) if not is_blank(doc)]
        texts = [documents[i].page_content for i in readable]
        found = self._lookup(method, texts, query, load=False)
        fingerprint, ratio = self.fingerprint(method), self.ratio_for(method)
        out = list(documents)
        for i, key, slots, tokens in zip(readable, found.keys, found.slot_counts, found.token_counts, strict=True):
            record = {
                "slot_key": key,
                "slots": slots,
                "tokens": tokens,
                "ratio": ratio,
                "fingerprint": fingerprint,
                "method": method,
            }
            out[i] = documents[i].model_copy(update={"metadata": {**documents[i].metadata, self.metadata_key: record}})
        stats = {
            "method": method,
            "documents": len(texts),
            "hits": found.hits,
            "misses": found.misses,
            "slots": sum(found.slot_counts),
            "tokens": sum(found.token_counts),
        }
        _dispatch(callbacks, COMPRESS_EVENT, stats)
        return out

    # acompress_documents: BaseDocumentCompressor runs compress_documents in an executor.

    # ------------------------------------------------------------------ reading

    def soft_context(self, documents: Sequence[Document], question: str) -> SlotLookup:
        """The slots of ``documents`` for the reader, in order; missing ones are compressed now.

        A document is read from the slots its metadata record names when the record matches
        this compressor (same fingerprint, and a slot key that still matches the content and,
        for COMI, the question); otherwise, or when those slots are no longer stored, it is
        compressed with this compressor's method.
        """
        docs = [doc for doc in check_documents(documents) if not is_blank(doc)]
        if not docs:
            return SlotLookup(None, [], 0, 0)
        methods = [self._recorded_method(doc, question) or self.method for doc in docs]
        slots: list[Any] = [None] * len(docs)
        counts = [0] * len(docs)
        hits = misses = 0
        readers = set()  # the reader adapter each method's slots are made for
        for method in dict.fromkeys(methods):
            chosen = [i for i, m in enumerate(methods) if m == method]
            found = self._lookup(method, [docs[i].page_content for i in chosen], question, load=True)
            for i, tensor, tokens in zip(chosen, found.slots, found.token_counts, strict=True):
                slots[i], counts[i] = tensor, tokens
            hits, misses = hits + found.hits, misses + found.misses
            readers.add(found.context.reader_adapter)
        # Slots of one method carry its reader-adapter mark; a mix of methods is read as it is given.
        reader_adapter = readers.pop() if len(readers) == 1 else None
        context = SoftContext.from_passages(slots, counts, reader_adapter=reader_adapter)
        return SlotLookup(context, docs, hits, misses)

    # ------------------------------------------------------------------ internals

    def _compressor(self, method: Method) -> ComprExITCompressor | COMICompressor:
        """The compressor of ``method``: the stored head's, or the query-aware ``comi``."""
        if get_method(method).storable:
            return self.compressor
        if self.comi is None:
            raise InvalidInputError(f"method={method!r} needs a COMICompressor: pass comi=COMICompressor(...).")
        return self.comi

    def _service(self, method: Method) -> SlotService:
        """The slot service of ``method``: the given store (stored slots), else an in-memory cache."""
        with self._lock:
            service = self._services.get(method)
            if service is None:
                service = SlotService(self._compressor(method), cache_size=self.cache_size)
                if self.store is not None and get_method(method).storable:
                    service.adopt(self.store, self.ratio_for(method))
                self._services[method] = service
            return service

    def _lookup(self, method: Method, texts: list[str], query: str | None, *, load: bool) -> Any:
        return self._service(method).lookup(
            texts, query=query, ratio=self.ratio_for(method), batch_size=self.batch_size, load=load
        )

    def _recorded_method(self, doc: Document, question: str) -> Method | None:
        """The method of ``doc``'s slot record, when the record is valid for this compressor."""
        record = doc.metadata.get(self.metadata_key)
        if not isinstance(record, dict) or record.get("method") not in METHODS:
            return None
        method: Method = record["method"]
        if get_method(method).query_aware and self.comi is None:
            return None
        if record.get("fingerprint") != self.fingerprint(method):
            return None
        if record.get("slot_key") != self.slot_key(doc.page_content, question, method):
            return None
        return method


def _dispatch(callbacks: Callbacks | None, name: str, data: dict[str, Any]) -> None:
    """Send a custom event to ``callbacks`` when they belong to a run (no-op otherwise)."""
    if callbacks is None:
        return
    manager = CallbackManager.configure(inheritable_callbacks=callbacks)
    if manager.parent_run_id is not None and manager.handlers:
        manager.on_custom_event(name, data, run_id=manager.parent_run_id)
