"""ComprExITNodePostprocessor: attach stored ComprExIT soft slots to retrieved LlamaIndex nodes.

The postprocessor compresses each retrieved node once into soft slots (``[S, H]`` tensors in
the reader LLM's input-embedding space) with :class:`comprexit_rag.ComprExITCompressor`, keeps
them in a :class:`comprexit_rag.store.SlotStore` (or an in-memory cache) and attaches to the node
only the store key and a few statistics. Tensors never enter node metadata, so nodes stay
hashable, serialisable and cheap to copy; the keys it adds are excluded from the LLM and
embedding views of the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from comprexit_rag.backbone import Backbone
from comprexit_rag.comi import COMICompressor, COMIMerger
from comprexit_rag.compressor import ComprExITCompressor
from comprexit_rag.config import validate_ratio
from comprexit_rag.defaults import default_compressor
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.head import ComprExITHead
from comprexit_rag.methods import get_method, method_names
from comprexit_rag.pipeline import (
    UNTRAINED_HEAD_DIR,
    RAGPipeline,
    load_comi_merger_or_untrained,
    load_head_or_untrained,
)
from comprexit_rag.segments import check_positive_int, check_text
from comprexit_rag.soft_context import SoftContext
from comprexit_rag.store import SlotStore, content_key

from ._checks import check_known_arguments

logger = logging.getLogger(__name__)

__all__ = [
    "FINGERPRINT_KEY",
    "METADATA_KEYS",
    "METHODS",
    "METHOD_KEY",
    "RATIO_KEY",
    "SLOTS_KEY",
    "SLOT_KEY",
    "TOKENS_KEY",
    "ComprExITNodePostprocessor",
    "CompressedNodes",
    "MemorySlotCache",
]

METHODS = method_names(pipeline=True, context="slots")
"""``comprexit``: query-independent slots, stored and reused; ``comi``: query-aware slots, per query."""

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


class MemorySlotCache:
    """A bounded, thread-safe, in-memory stand-in for a :class:`SlotStore` of one fingerprint.

    Entries are keyed by content hash within the fingerprint; the least recently used entry is
    dropped once ``max_entries`` are held. Slots are kept on the CPU.
    """

    def __init__(self, fingerprint: str, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise InvalidInputError(f"max_entries must be >= 1, got {max_entries}.")
        self.fingerprint = fingerprint
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def lookup(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        """``(slots, token count)`` of each key, or ``None`` where absent (marks hits as recently used)."""
        with self._lock:
            found = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                found.append(entry)
            return found

    def get(self, key: str) -> torch.Tensor | None:
        """The slots of ``key``, or ``None`` (the :meth:`SlotStore.get` signature)."""
        entry = self.lookup([key])[0]
        return None if entry is None else entry[0]

    def put_many(self, keys: Sequence[str], slots: Sequence[torch.Tensor], token_counts: Sequence[int]) -> list[str]:
        """Keep the slots of several passages (the :meth:`SlotStore.put_many` signature)."""
        written = []
        with self._lock:
            for key, tensor, tokens in zip(keys, slots, token_counts, strict=True):
                if key in self._entries:
                    continue
                self._entries[key] = (tensor.detach().to("cpu"), int(tokens))
                written.append(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return written

    def __repr__(self) -> str:
        return f"MemorySlotCache(fingerprint={self.fingerprint!r}, entries={len(self)}/{self.max_entries})"


SlotBackend = SlotStore | MemorySlotCache


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


class ComprExITNodePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes into ComprExIT soft slots, stored once and reused.

    Each node with text gets, on an annotated copy, the metadata :data:`SLOT_KEY` (its key in
    :attr:`store`) and the stats :data:`SLOTS_KEY`, :data:`TOKENS_KEY`, :data:`RATIO_KEY`,
    :data:`FINGERPRINT_KEY` and :data:`METHOD_KEY`; all are added to the node's
    ``excluded_llm_metadata_keys`` and ``excluded_embed_metadata_keys``. The text compressed is
    ``node.get_content(metadata_mode)``, and the key is :func:`comprexit_rag.store.content_key` of
    that text: with ``metadata_mode=MetadataMode.NONE`` and node text ``"title\\ntext"``, keys are
    those of a :class:`~comprexit_rag.pipeline.RAGPipeline` store (see :meth:`from_pipeline`).

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

    method: Literal["comprexit", "comi"] = Field(default="comprexit", description="comprexit (stored) or comi.")
    ratio: int = Field(description="Compression ratio: source tokens per soft slot.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.LLM, description="View of the node that is compressed.")
    store_dir: str | None = Field(default=None, description="SlotStore directory; None: in-memory cache.")
    batch_size: int = Field(default=8, ge=1, description="Compressor batch size.")
    cache_size: int = Field(default=4096, ge=1, description="Entries of each in-memory slot cache.")

    _compressor: ComprExITCompressor = PrivateAttr()
    _comi: COMICompressor | Callable[[], COMICompressor] | None = PrivateAttr(default=None)
    _backends: dict[str, SlotBackend] = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)
    _slot_reader: bool = PrivateAttr(default=False)  # a ComprExITSynthesizer reads this postprocessor's slots
    _warned_text_llm: bool = PrivateAttr(default=False)

    def __init__(
        self,
        compressor: ComprExITCompressor | None = None,
        *,
        method: Literal["comprexit", "comi"] = "comprexit",
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
            expected = self._fingerprint_for("comprexit")
            if store.fingerprint != expected:
                raise InvalidInputError(
                    f"The SlotStore holds slots of fingerprint {store.fingerprint!r}, but this postprocessor "
                    f"writes {expected!r} (another head, backbone or ratio); open the store with that fingerprint "
                    "or pass its directory instead."
                )
            self._backends[expected] = store

    # ------------------------------------------------------------------ construction

    @classmethod
    def class_name(cls) -> str:
        return "ComprExITNodePostprocessor"

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
            head: a :class:`ComprExITHead`, a checkpoint directory, or ``None`` for the shipped
                head (an untrained one, with a WARNING, while none ships: see
                :func:`comprexit_rag.pipeline.load_head_or_untrained`; it is saved under
                ``store_dir`` so stored slots stay valid across runs).
            store_dir: where to keep the slots (a :class:`SlotStore`); ``None``: in memory.
            comi_merger: COMI merger for ``method="comi"`` (a module or a directory).
            device: where to load the backbone when it is loaded here.
            **kwargs: the other arguments of the constructor (``method``, ``ratio``, ...).
        """
        if not isinstance(backbone, Backbone):
            backbone = Backbone.from_pretrained(backbone, device=device)
        if isinstance(head, ComprExITHead):
            module = head
        elif head is None:
            untrained_dir = Path(store_dir) / UNTRAINED_HEAD_DIR if store_dir is not None else None
            module = load_head_or_untrained(backbone, untrained_dir)
        else:
            module = ComprExITHead.from_pretrained(head)
        comi = None
        if comi_merger is not None:
            merger = comi_merger if isinstance(comi_merger, COMIMerger) else COMIMerger.from_pretrained(comi_merger)
            comi = COMICompressor(backbone, merger)
        return cls(ComprExITCompressor(backbone, module), store=store_dir, comi=comi, **kwargs)

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
        fingerprint = self.fingerprint
        with self._lock:
            backend = self._backends.get(fingerprint)
            if backend is None:
                if self.method == "comprexit" and self.store_dir is not None:
                    backend = SlotStore(self.store_dir, fingerprint)
                else:
                    backend = MemorySlotCache(fingerprint, self.cache_size)
                self._backends[fingerprint] = backend
            return backend

    def _fingerprint_for(self, method: str) -> str:
        # The format of RAGPipeline.store_for, so that a pipeline's store directory can be shared.
        source = self._compressor if method == "comprexit" else self.comi
        return f"{source.fingerprint}/ratio={self.ratio}"

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
            CheckpointError: the slot store is corrupt (see :class:`~comprexit_rag.store.SlotStore`).
        """
        annotated = _check_nodes(nodes)
        query = self._query(query_bundle)
        method, fingerprint, store = self.method, self.fingerprint, self.store
        positions: list[int] = []
        keys: list[str] = []
        texts: dict[str, str] = {}
        for position, item in enumerate(annotated):
            node = _hide_keys(item.node)
            text = node.get_content(metadata_mode=self.metadata_mode)
            if isinstance(text, str) and not text.strip():
                logger.debug("Node %s has no text to compress; passed through without slots.", node.node_id)
                continue
            check_text(text, f"The content of node {position} ({node.node_id})")  # a string of valid Unicode
            key = content_key(text) if method == "comprexit" else content_key(json.dumps([query, text]))
            annotated[position] = NodeWithScore(node=node, score=item.score)
            positions.append(position)
            keys.append(key)
            texts.setdefault(key, text)

        found = dict(zip(keys, _lookup(store, keys), strict=True))
        absent = [key for key, entry in found.items() if entry is None]
        if absent:
            fresh = self._compress([texts[key] for key in absent], query)
            slots, counts = fresh.passages(), fresh.token_counts.tolist()
            store.put_many(absent, slots, counts)
            # Read back what the store keeps (fp16 in a SlotStore), so an answer does not depend on
            # whether its slots were a hit or a miss; fall back to the fresh slots if evicted already.
            stored = _lookup(store, absent)
            for key, tensor, count, entry in zip(absent, slots, counts, stored, strict=True):
                found[key] = entry if entry is not None else (tensor, count)
        missed = set(absent)
        misses = sum(1 for key in keys if key in missed)

        passages: list[torch.Tensor] = []
        token_counts: list[int] = []
        for position, key in zip(positions, keys, strict=True):
            tensor, tokens = found[key]  # type: ignore[misc]
            num_slots = int(tensor.shape[0])
            annotated[position].node.metadata.update(
                {
                    SLOT_KEY: key,
                    SLOTS_KEY: num_slots,
                    TOKENS_KEY: int(tokens),
                    RATIO_KEY: tokens / max(num_slots, 1),
                    FINGERPRINT_KEY: fingerprint,
                    METHOD_KEY: method,
                }
            )
            passages.append(tensor.to("cpu"))
            token_counts.append(int(tokens))
        if passages:
            context = SoftContext.from_passages(passages, token_counts)
        else:
            context = SoftContext.empty(self._compressor.backbone.hidden_size)
        return CompressedNodes(annotated, context, len(keys) - misses, misses, fingerprint, method)

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
        if self.method != "comi":
            return None
        query = query_bundle.query_str if query_bundle is not None else None
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError(
                "method='comi' compresses each passage together with the question, so it needs the query: "
                "call postprocess_nodes(nodes, query_bundle=QueryBundle(question)) or "
                "postprocess_nodes(nodes, query_str=question) (a query engine passes it for you)."
            )
        return query

    def _compress(self, texts: list[str], query: str | None) -> SoftContext:
        if self.method == "comi":
            return self.comi.compress(
                texts, query=query, ratio=self.ratio, batch_size=self.batch_size, show_progress=False
            )
        return self._compressor.compress(texts, ratio=self.ratio, batch_size=self.batch_size, show_progress=False)


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


def _lookup(store: SlotBackend, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
    """``(slots, token count)`` per key from either kind of store; ``None`` where absent."""
    if isinstance(store, MemorySlotCache):
        return store.lookup(keys)
    found = store.get_many(keys)
    return [
        None if tensor is None else (tensor, store.token_count(key)) for key, tensor in zip(keys, found, strict=True)
    ]
