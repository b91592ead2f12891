"""ComprExITNodePostprocessor: attach stored ComprExIT soft slots to retrieved LlamaIndex nodes.

The postprocessor compresses each retrieved node once into soft slots (``[S, H]`` tensors in
the reader LLM's input-embedding space) with :class:`comprexit_rag.ComprExITCompressor`, keeps
them in a :class:`comprexit_rag.slots.SlotStore` (or an in-memory cache) and attaches to the node
only the store key and a few statistics. Tensors never enter node metadata, so nodes stay
hashable, serialisable and cheap to copy; the keys it adds are excluded from the LLM and
embedding views of the node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from comprexit_rag.backbone import Backbone
from comprexit_rag.defaults import default_compressor
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods import get_method, method_names
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.rag.directory import UNTRAINED_HEAD_DIR
from comprexit_rag.rag.loading import load_comi_compressor, load_comi_merger_or_untrained, load_compressor
from comprexit_rag.reading.adapter import ReaderAdapter
from comprexit_rag.slots import SlotService, SlotStore, store_fingerprint
from comprexit_rag.slots.service import SlotBackend
from comprexit_rag.soft_context import SoftContext
from comprexit_rag.validation import check_positive_int, check_text, validate_ratio

from ._checks import NamedComponent, check_known_arguments

logger = logging.getLogger(__name__)

METHODS = method_names(pipeline=True, context="slots")
"""``comprexit``: query-independent slots, stored and reused; ``comi``: query-aware slots, per query."""
STORED = next(name for name in METHODS if get_method(name).storable)

SLOT_KEY = "comprexit_slot_key"
"""Metadata key of the node's key in the slot store (the sha256 of the compressed text)."""
SLOTS_KEY = "comprexit_slots"
"""Metadata key of the number of soft slots of the node."""
TOKENS_KEY = "comprexit_tokens"
"""Metadata key of the number of source tokens the slots stand for."""
RATIO_KEY = "comprexit_ratio"
"""Metadata key of the achieved compression: tokens per slot."""
FINGERPRINT_KEY = "comprexit_fingerprint"
"""Metadata key of the fingerprint of the slots (compressor weights, backbone and ratio)."""
METHOD_KEY = "comprexit_method"
"""Metadata key of the method that made the slots (``comprexit`` or ``comi``)."""
METADATA_KEYS = (SLOT_KEY, SLOTS_KEY, TOKENS_KEY, RATIO_KEY, FINGERPRINT_KEY, METHOD_KEY)
"""Every metadata key the postprocessor adds; all are hidden from the LLM and the embedder."""


@dataclass(frozen=True)
class CompressedNodes:
    """What :meth:`ComprExITNodePostprocessor.compress_nodes` made of a list of nodes.

    ``nodes`` are annotated copies of the input nodes (blank ones are passed through without
    slots); ``context`` holds the slots of the annotated ones, in node order, ready for
    :class:`comprexit_rag.Reader`; ``hits`` / ``misses`` count annotated nodes whose slots were /
    were not already stored.
    """

    nodes: list[NodeWithScore]
    context: SoftContext
    hits: int
    misses: int
    fingerprint: str
    method: str
    reader_adapter: ReaderAdapter | None = None  # what the slots are read through (None: the frozen reader)


class ComprExITNodePostprocessor(NamedComponent, BaseNodePostprocessor):
    """Compress retrieved nodes into ComprExIT soft slots, stored once and reused.

    Each node with text gets, on an annotated copy, the metadata :data:`SLOT_KEY` (its key in
    :attr:`store`) and the stats :data:`SLOTS_KEY`, :data:`TOKENS_KEY`, :data:`RATIO_KEY`,
    :data:`FINGERPRINT_KEY` and :data:`METHOD_KEY`; all are added to the node's
    ``excluded_llm_metadata_keys`` and ``excluded_embed_metadata_keys``. The text compressed is
    ``node.get_content(metadata_mode)``, and the key is :func:`comprexit_rag.slots.content_key` of
    that text: with ``metadata_mode=MetadataMode.NONE`` and node text ``"title\\ntext"``, keys are
    those of a :class:`~comprexit_rag.rag.pipeline.RAGPipeline` store (see :meth:`from_pipeline`).

    With no arguments it compresses with the embedded defaults (SmolLM2 and the shipped head at its
    ratio), shared with every other default component of the process (:mod:`comprexit_rag.defaults`),
    into an in-memory cache. Unknown arguments raise :class:`~comprexit_rag.errors.InvalidInputError`.

    Its slots are read by :class:`~llama_index.postprocessor.comprexit.ComprExITQueryEngine` or, in a
    standard ``index.as_query_engine(...)``, by :class:`~llama_index.postprocessor.comprexit.ComprExITSynthesizer`
    (``response_synthesizer=``). A text LLM's synthesizer reads the nodes' text instead, so then the
    postprocessor does nothing useful: it logs a WARNING once.

    Args:
        compressor: the ComprExIT compressor (its backbone is the reader's); default
            :func:`comprexit_rag.defaults.default_compressor`.
        method: ``"comprexit"`` (query-independent, stored) or ``"comi"`` (query-aware COMI,
            computed per query and cached in memory only; needs the query bundle).
        ratio: compression ratio, tokens per slot (default the head's).
        store: a :class:`SlotStore` for this compressor and ratio, or a directory to open one in;
            ``None`` keeps slots in a bounded in-memory cache instead.
        comi: COMI compressor (or a zero-argument factory) for ``method="comi"``; default the
            shipped COMI merger over the same backbone, loaded on first use.
        metadata_mode: which view of the node is compressed (default what the LLM would read).
        batch_size: compressor batch size.
        cache_size: entries of each in-memory cache.

    >>> postprocessor = ComprExITNodePostprocessor.from_defaults(store_dir="slots")
    >>> nodes = postprocessor.postprocess_nodes(retriever.retrieve("Who wrote Hamlet?"))
    >>> nodes[0].metadata["comprexit_slots"]
    """

    method: str = Field(default=STORED, description="comprexit (stored) or comi (query-aware).")
    ratio: int = Field(description="Compression ratio: source tokens per soft slot.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.LLM, description="View of the node that is compressed.")
    store_dir: str | None = Field(default=None, description="SlotStore directory; None: in-memory cache.")
    batch_size: int = Field(default=8, ge=1, description="Compressor batch size.")
    cache_size: int = Field(default=4096, ge=1, description="Entries of each in-memory slot cache.")

    _compressor: ComprExITCompressor = PrivateAttr()
    _comi: COMICompressor | Callable[[], COMICompressor] | None = PrivateAttr(default=None)
    _services: dict[str, SlotService] = PrivateAttr(default_factory=dict)  # one per method, built on first use
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _slot_reader: bool = PrivateAttr(default=False)  # a ComprExITSynthesizer reads this postprocessor's slots
    _warned_text_llm: bool = PrivateAttr(default=False)

    def __init__(
        self,
        compressor: ComprExITCompressor | None = None,
        *,
        method: str = STORED,
        ratio: int | None = None,
        store: SlotStore | str | os.PathLike[str] | None = None,
        comi: COMICompressor | Callable[[], COMICompressor] | None = None,
        metadata_mode: MetadataMode = MetadataMode.LLM,
        batch_size: int = 8,
        cache_size: int = 4096,
        **kwargs: Any,
    ) -> None:
        """Wrap an already built compressor (default: the embedded one); see :meth:`from_defaults` to load one."""
        check_known_arguments(type(self), kwargs)
        if compressor is None:
            compressor = default_compressor()
        if not isinstance(compressor, ComprExITCompressor):
            raise InvalidInputError(f"compressor must be a ComprExITCompressor, got {type(compressor).__name__}.")
        get_method(method, pipeline=True, context="slots")  # InvalidInputError naming the choices
        ratio = validate_ratio(compressor.config.ratio if ratio is None else ratio, compressor.config.window)
        check_positive_int(batch_size, "batch_size")
        check_positive_int(cache_size, "cache_size")
        store_dir = store.root if isinstance(store, SlotStore) else store
        super().__init__(
            method=method,
            ratio=ratio,
            metadata_mode=metadata_mode,
            store_dir=None if store_dir is None else os.fspath(store_dir),
            batch_size=batch_size,
            cache_size=cache_size,
            **kwargs,
        )
        self._compressor = compressor
        self._comi = comi
        if isinstance(store, SlotStore):
            self._service(STORED).adopt(store, self.ratio)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_defaults(
        cls,
        backbone: str | os.PathLike[str] | Backbone | None = None,
        head: str | os.PathLike[str] | ComprExITHead | None = None,
        *,
        store_dir: str | os.PathLike[str] | None = None,
        comi_merger: str | os.PathLike[str] | COMIMerger | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> ComprExITNodePostprocessor:
        """Load the compressor the way :meth:`RAGPipeline.build` does and wrap it.

        Args:
            backbone: a :class:`Backbone`, a Hugging Face name or path, or ``None`` for the
                embedded SmolLM2-135M-Instruct.
            head: a :class:`ComprExITHead`, a checkpoint directory, the name of a shipped head
                (``"comprexit-smollm2-135m-multi-ratio"`` reads 8x and 16x), or ``None`` for the default
                head (an untrained one, with a WARNING, while none ships: see
                :func:`comprexit_rag.rag.loading.load_head_or_untrained`; it is saved under
                ``store_dir`` so stored slots stay valid across runs). A head directory's reader
                adapter is attached, as :func:`comprexit_rag.rag.loading.load_compressor` does.
            store_dir: where to keep the slots (a :class:`SlotStore`); ``None``: in memory.
            comi_merger: COMI merger for ``method="comi"`` (a module, or a directory: its reader adapter, if
                it has one, comes with it).
            device: where to load the backbone when it is loaded here.
            **kwargs: the other arguments of the constructor (``method``, ``ratio``, ...).
        """
        if not isinstance(backbone, Backbone):
            backbone = Backbone.from_pretrained(backbone, device=device)
        untrained_dir = Path(store_dir) / UNTRAINED_HEAD_DIR if store_dir is not None else None
        compressor = load_compressor(backbone, head, untrained_dir=untrained_dir)
        comi = load_comi_compressor(backbone, comi_merger) if comi_merger is not None else None
        return cls(compressor, store=store_dir, comi=comi, **kwargs)

    @classmethod
    def from_pipeline(cls, pipeline: RAGPipeline, **kwargs: Any) -> ComprExITNodePostprocessor:
        """Share a :class:`RAGPipeline`'s compressor, slot store, ratio and COMI compressor.

        Slots the pipeline stored (``comprexit-rag index``) are reused for nodes whose text is the
        pipeline's passage text ``"title\\ntext"``: the node's text alone is compressed
        (``metadata_mode`` defaults to ``MetadataMode.NONE`` here), so node metadata never changes
        the key.
        """
        kwargs.setdefault("metadata_mode", MetadataMode.NONE)
        ratio = kwargs.pop("ratio", None)
        ratio = validate_ratio(pipeline.ratio if ratio is None else ratio, pipeline.compressor.config.window)
        return cls(
            pipeline.compressor,
            ratio=ratio,
            store=pipeline.store_for(ratio),
            comi=lambda: pipeline.comi,
            **kwargs,
        )

    # ------------------------------------------------------------------ parts

    @property
    def compressor(self) -> ComprExITCompressor:
        """The ComprExIT compressor; its backbone is the one the reader must use."""
        return self._compressor

    @property
    def comi(self) -> COMICompressor:
        """The query-aware COMI compressor (built on first use, over the compressor's backbone)."""
        with self._lock:
            if not isinstance(self._comi, COMICompressor):
                if self._comi is None:
                    backbone = self._compressor.backbone
                    self._comi = COMICompressor(backbone, load_comi_merger_or_untrained(backbone))
                else:
                    self._comi = self._comi()
            return self._comi

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the slots :attr:`method` makes: compressor weights, backbone and ratio."""
        return self._fingerprint_for(self.method)

    @property
    def store(self) -> SlotBackend:
        """Where the slots of :attr:`method` at :attr:`ratio` are kept (opened on first use).

        A :class:`SlotStore` under :attr:`store_dir` for ``comprexit`` when one is set; otherwise
        (and always for ``comi``, whose slots depend on the question) a :class:`MemorySlotCache`.
        """
        return self._service(self.method).backend(self.ratio)

    def _fingerprint_for(self, method: str) -> str:
        # The format of RAGPipeline.store_for, so that a pipeline's store directory can be shared.
        return store_fingerprint(self._compressor_for(method).fingerprint, self.ratio)

    def _compressor_for(self, method: str) -> ComprExITCompressor | COMICompressor:
        return self._compressor if get_method(method).storable else self.comi

    def _service(self, method: str) -> SlotService:
        """The slot service of ``method``: stored slots under :attr:`store_dir`, else an in-memory cache."""
        with self._lock:
            service = self._services.get(method)
            if service is None:
                root = self.store_dir if get_method(method).storable else None
                service = SlotService(self._compressor_for(method), root, cache_size=self.cache_size)
                self._services[method] = service
            return service

    # ------------------------------------------------------------------ compressing

    def compress_nodes(
        self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> CompressedNodes:
        """Annotate copies of ``nodes`` and return them with their slots as one context.

        Slots found in :attr:`store` are reused; the others are compressed now and stored.

        Raises:
            InvalidInputError: ``nodes`` is not a list of ``NodeWithScore``, a node's content is not
                a string or not valid Unicode, or ``method="comi"`` has no query bundle (COMI
                compresses every passage together with the question) or one too long for the backbone.
            CheckpointError: the slot store is corrupt (see :class:`~comprexit_rag.slots.SlotStore`).
        """
        annotated = _check_nodes(nodes)
        query = self._query(query_bundle)
        method, fingerprint = self.method, self.fingerprint
        positions: list[int] = []
        texts: list[str] = []
        for position, item in enumerate(annotated):
            node = _hide_keys(item.node)
            text = node.get_content(metadata_mode=self.metadata_mode)
            if isinstance(text, str) and not text.strip():
                logger.debug("Node %s has no text to compress; passed through without slots.", node.node_id)
                continue
            check_text(text, f"The content of node {position} ({node.node_id})")  # a string of valid Unicode
            annotated[position] = NodeWithScore(node=node, score=item.score)
            positions.append(position)
            texts.append(text)

        found = self._service(method).lookup(texts, query=query, ratio=self.ratio, batch_size=self.batch_size)
        for position, key, slots, tokens in zip(
            positions, found.keys, found.slot_counts, found.token_counts, strict=True
        ):
            annotated[position].node.metadata.update(
                {
                    SLOT_KEY: key,
                    SLOTS_KEY: slots,
                    TOKENS_KEY: tokens,
                    RATIO_KEY: tokens / max(slots, 1),
                    FINGERPRINT_KEY: fingerprint,
                    METHOD_KEY: method,
                }
            )
        context = found.context if texts else SoftContext.empty(self._compressor.backbone.hidden_size)
        adapter = self._compressor_for(method).reader_adapter
        return CompressedNodes(annotated, context, found.hits, found.misses, fingerprint, method, adapter)

    async def acompress_nodes(
        self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> CompressedNodes:
        """:meth:`compress_nodes` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.compress_nodes, nodes, query_bundle)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        self._warn_if_read_as_text()
        return self.compress_nodes(nodes, query_bundle).nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        self._warn_if_read_as_text()
        return (await self.acompress_nodes(nodes, query_bundle)).nodes

    def _warn_if_read_as_text(self) -> None:
        """Warn once when nothing reads the slots: a text LLM would get the full passage text."""
        with self._lock:
            if self._slot_reader or self._warned_text_llm:
                return
            self._warned_text_llm = True
        logger.warning(
            "ComprExITNodePostprocessor attached slots, but a text LLM's response synthesizer reads the nodes' full "
            "text, not the slots. Read them with response_synthesizer=ComprExITSynthesizer(postprocessor) in "
            "index.as_query_engine(...), or use ComprExITQueryEngine / build_query_engine."
        )

    def _query(self, query_bundle: QueryBundle | None) -> str | None:
        if not get_method(self.method).query_aware:
            return None
        query = query_bundle.query_str if query_bundle is not None else None
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError(
                f"method={self.method!r} compresses each passage together with the question, so it needs the query: "
                "call postprocess_nodes(nodes, query_bundle=QueryBundle(question)) or "
                "postprocess_nodes(nodes, query_str=question) (a query engine passes it for you)."
            )
        return query


def _check_nodes(nodes: object) -> list[NodeWithScore]:
    """``nodes`` as a list of ``NodeWithScore`` (what retrievers return), or InvalidInputError."""
    if nodes is None or isinstance(nodes, str | bytes | BaseNode | NodeWithScore | Mapping):
        raise InvalidInputError(f"Expected a list of NodeWithScore, got {type(nodes).__name__}.")
    try:
        checked = list(nodes)  # type: ignore[call-overload]
    except TypeError as error:
        raise InvalidInputError(f"Expected a list of NodeWithScore, got {type(nodes).__name__}.") from error
    for index, item in enumerate(checked):
        if not isinstance(item, NodeWithScore):
            hint = " wrap it as NodeWithScore(node=node)" if isinstance(item, BaseNode) else " pass retrieved nodes"
            raise InvalidInputError(f"Node {index} is a {type(item).__name__}, not a NodeWithScore;{hint}.")
    return checked


def _hide_keys(node: BaseNode) -> BaseNode:
    """A copy of ``node`` with its own metadata dict, the postprocessor's keys hidden from LLM and embedder."""

    def hidden(keys: list[str]) -> list[str]:
        return [*keys, *(key for key in METADATA_KEYS if key not in keys)]

    return node.model_copy(
        update={
            "metadata": dict(node.metadata),
            "excluded_llm_metadata_keys": hidden(node.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": hidden(node.excluded_embed_metadata_keys),
        }
    )
