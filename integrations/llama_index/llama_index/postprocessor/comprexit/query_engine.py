"""ComprExITQueryEngine: retriever -> postprocessors -> ComprExIT slots -> the project's frozen Reader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.indices.base import BaseIndex
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.settings import Settings

from comprexit_rag.defaults import reader_for
from comprexit_rag.errors import BackboneMismatchError, InvalidInputError
from comprexit_rag.rag.results import AnswerStats
from comprexit_rag.reading.reader import Reader
from comprexit_rag.validation import check_positive_int

from ._checks import NamedComponent, check_known_arguments
from .base import CompressedNodes, ComprExITNodePostprocessor
from .llm import ComprExITLLM

__all__ = ["EMPTY_RESPONSE", "ComprExITQueryEngine", "build_query_engine"]

EMPTY_RESPONSE = "Empty Response"
"""The answer when the retriever returns no node with text (LlamaIndex's own wording)."""


class ComprExITQueryEngine(NamedComponent, CustomQueryEngine):
    """Answer from the ComprExIT slots of the retrieved nodes with :class:`comprexit_rag.Reader`.

    A query retrieves nodes, runs ``node_postprocessors`` (e.g. a reranker or a similarity
    cutoff), then reads the slots that ``postprocessor`` attached, compressing and storing those
    it does not hold yet (a miss). The :class:`Response` carries the annotated source nodes and,
    in ``metadata``, the method, the slot fingerprint, the fields of
    :class:`comprexit_rag.rag.results.AnswerStats` (``context_tokens``, ``slots``, ``store_hits``,
    ``store_misses``; ``achieved_ratio``, tokens per slot read, for its ``ratio``) and
    ``timings`` in seconds (``retrieve``, ``compress``, ``read``, ``total``; no ``read`` when
    streaming). The read is one call of :class:`ComprExITLLM`: callback handlers and the
    instrumentation dispatcher see an LLM event and span with the slot and token counts.
    ``aquery`` with ``streaming=True`` returns an :class:`AsyncStreamingResponse`.

    Args:
        retriever: any LlamaIndex retriever.
        postprocessor: the :class:`ComprExITNodePostprocessor` holding compressor and slots.
        node_postprocessors: run on the retrieved nodes before compression.
        reader: the reader (default a :class:`Reader` over the compressor's backbone).
        max_new_tokens: longest answer, in tokens.
        streaming: return a :class:`StreamingResponse` whose generator yields the answer as it
            is generated.
    """

    retriever: BaseRetriever = Field(description="Retriever of the nodes to answer from.")
    postprocessor: ComprExITNodePostprocessor = Field(description="Compressor and slot store.")
    node_postprocessors: list[BaseNodePostprocessor] = Field(
        default_factory=list, description="Run on the retrieved nodes before compression."
    )
    max_new_tokens: int = Field(default=20, ge=1, description="Longest answer, in tokens.")
    streaming: bool = Field(default=False, description="Return a StreamingResponse.")

    _reader: Reader = PrivateAttr()
    _llm: ComprExITLLM = PrivateAttr()

    def __init__(
        self,
        retriever: BaseRetriever,
        postprocessor: ComprExITNodePostprocessor,
        *,
        node_postprocessors: Sequence[BaseNodePostprocessor] | None = None,
        reader: Reader | None = None,
        max_new_tokens: int = 20,
        streaming: bool = False,
        **kwargs: Any,
    ) -> None:
        """Wire the parts; :func:`build_query_engine` builds them from an index in one line."""
        check_known_arguments(type(self), kwargs)
        check_positive_int(max_new_tokens, "max_new_tokens")
        kwargs.setdefault("callback_manager", Settings.callback_manager)  # as LlamaIndex's own engines do
        if not isinstance(postprocessor, ComprExITNodePostprocessor):
            raise InvalidInputError(
                f"postprocessor must be a ComprExITNodePostprocessor, got {type(postprocessor).__name__}."
            )
        super().__init__(
            retriever=retriever,
            postprocessor=postprocessor,
            node_postprocessors=list(node_postprocessors or []),
            max_new_tokens=max_new_tokens,
            streaming=streaming,
            **kwargs,
        )
        backbone = postprocessor.compressor.backbone
        if reader is not None and reader.backbone.fingerprint != backbone.fingerprint:
            raise BackboneMismatchError(
                f"The reader's backbone {reader.backbone.name!r} is not the compressor's {backbone.name!r}: "
                "slots live in the input-embedding space of the backbone that made them."
            )
        self._reader = reader if reader is not None else reader_for(backbone)
        self._llm = ComprExITLLM(self._reader, max_new_tokens=max_new_tokens, callback_manager=self.callback_manager)

    @property
    def reader(self) -> Reader:
        """The frozen reader LLM."""
        return self._reader

    @property
    def llm(self) -> ComprExITLLM:
        """The reader as a LlamaIndex LLM: what callback handlers and the dispatcher see read."""
        return self._llm

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        """Retrieve, compress (reusing stored slots) and read: one answer with its sources."""
        started = time.perf_counter()
        bundle = self._bundle(query_str)
        nodes = self.retriever.retrieve(bundle)
        retrieved = time.perf_counter()
        for postprocessor in self.node_postprocessors:
            nodes = postprocessor.postprocess_nodes(nodes, query_bundle=bundle)
        compressed = self.postprocessor.compress_nodes(nodes, bundle)
        return self._answer(query_str, compressed, started, retrieved)

    async def acustom_query(self, query_str: str) -> Response | StreamingResponse:
        """:meth:`custom_query` with the async retriever and postprocessors; compression and
        generation run in worker threads."""
        started = time.perf_counter()
        bundle = await asyncio.to_thread(self._bundle, query_str)
        nodes = await self.retriever.aretrieve(bundle)
        retrieved = time.perf_counter()
        for postprocessor in self.node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_bundle=bundle)
        compressed = await self.postprocessor.acompress_nodes(nodes, bundle)
        response = await asyncio.to_thread(self._answer, query_str, compressed, started, retrieved)
        if isinstance(response, StreamingResponse):
            return AsyncStreamingResponse(
                _in_threads(response.response_gen), source_nodes=response.source_nodes, metadata=response.metadata
            )
        return response

    def _bundle(self, query_str: str) -> QueryBundle:
        """The query as a bundle, refused before retrieval when it is empty or too long for the reader."""
        if not isinstance(query_str, str) or not query_str.strip():
            raise InvalidInputError(f"The question must be a non-empty string, got {query_str!r:.80}.")
        self._reader.context_budget(query_str, self.max_new_tokens)  # InvalidInputError if it cannot fit
        return QueryBundle(query_str)

    def _answer(
        self, question: str, compressed: CompressedNodes, started: float, retrieved: float
    ) -> Response | StreamingResponse:
        context = compressed.context
        timings = {"retrieve": retrieved - started, "compress": time.perf_counter() - retrieved}
        metadata = response_metadata(compressed, timings)
        sources: list[NodeWithScore] = compressed.nodes
        if not len(context):
            timings["total"] = time.perf_counter() - started
            return Response(EMPTY_RESPONSE, source_nodes=sources, metadata=metadata)
        if self.streaming:
            stream = self._llm.stream_read(
                question, context, max_new_tokens=self.max_new_tokens, adapter=compressed.reader_adapter
            )
            return StreamingResponse(stream, source_nodes=sources, metadata=metadata)
        read_from = time.perf_counter()
        answer = self._llm.read(
            question, context, max_new_tokens=self.max_new_tokens, adapter=compressed.reader_adapter
        ).text
        finished = time.perf_counter()
        timings.update(read=finished - read_from, total=finished - started)
        return Response(answer, source_nodes=sources, metadata=metadata)


def response_metadata(compressed: CompressedNodes, timings: dict[str, float]) -> dict[str, Any]:
    """A response's metadata: method, fingerprint, the answer's statistics and ``timings``.

    ``achieved_ratio`` is the tokens per slot read (the postprocessor's ``ratio`` is the configured one).
    """
    context = compressed.context
    stats = asdict(
        AnswerStats(
            context_tokens=context.num_tokens,
            slots=context.num_slots,
            ratio=context.ratio,
            store_hits=compressed.hits,
            store_misses=compressed.misses,
        )
    )
    stats["achieved_ratio"] = stats.pop("ratio")
    return {"method": compressed.method, "fingerprint": compressed.fingerprint, **stats, "timings": timings}


async def _in_threads(pieces: Iterator[str]) -> AsyncIterator[str]:
    """An async generator over ``pieces``, each generated in a worker thread (the event loop keeps running)."""
    done = object()
    while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
        yield piece  # type: ignore[misc]


def build_query_engine(
    index_or_retriever: BaseIndex | BaseRetriever,
    postprocessor: ComprExITNodePostprocessor | None = None,
    *,
    similarity_top_k: int | None = None,
    node_postprocessors: Sequence[BaseNodePostprocessor] | None = None,
    max_new_tokens: int = 20,
    streaming: bool = False,
    **postprocessor_kwargs: Any,
) -> ComprExITQueryEngine:
    """Build retriever -> :class:`ComprExITNodePostprocessor` -> :class:`ComprExITQueryEngine` in one line.

    Args:
        index_or_retriever: an index (its ``as_retriever(similarity_top_k=...)`` is used) or a
            retriever.
        postprocessor: the postprocessor to use; by default one is built with
            :meth:`ComprExITNodePostprocessor.from_defaults` from ``postprocessor_kwargs``
            (``backbone``, ``head``, ``store_dir``, ``method``, ``ratio``, ...).
        similarity_top_k: nodes to retrieve from an index (default LlamaIndex's).
        node_postprocessors, max_new_tokens, streaming: see :class:`ComprExITQueryEngine`.

    >>> engine = build_query_engine(index, similarity_top_k=3, store_dir="slots")
    >>> print(engine.query("Who wrote Hamlet?"))
    """
    if isinstance(index_or_retriever, BaseRetriever):
        if similarity_top_k is not None:
            raise InvalidInputError("similarity_top_k applies to an index; set it on the retriever you pass instead.")
        retriever = index_or_retriever
    elif isinstance(index_or_retriever, BaseIndex):
        top_k = {} if similarity_top_k is None else {"similarity_top_k": similarity_top_k}
        retriever = index_or_retriever.as_retriever(**top_k)
    else:
        raise InvalidInputError(
            f"build_query_engine takes a LlamaIndex index or retriever, got {type(index_or_retriever).__name__}."
        )
    if postprocessor is None:
        postprocessor = ComprExITNodePostprocessor.from_defaults(**postprocessor_kwargs)
    elif postprocessor_kwargs:
        raise InvalidInputError(
            f"{', '.join(sorted(postprocessor_kwargs))} configure a new postprocessor; "
            "pass them to ComprExITNodePostprocessor instead of giving one."
        )
    return ComprExITQueryEngine(
        retriever,
        postprocessor,
        node_postprocessors=node_postprocessors,
        max_new_tokens=max_new_tokens,
        streaming=streaming,
    )
