"""ComprExITSynthesizer: a LlamaIndex response synthesizer that answers from the nodes' soft slots.

The standard seam for a LlamaIndex engine: ``index.as_query_engine(response_synthesizer=...,
node_postprocessors=[postprocessor])`` retrieves and postprocesses as usual, then this
synthesizer reads the slots the :class:`ComprExITNodePostprocessor` stored (they are looked up
again by content key, so every node is a store hit) with :class:`ComprExITLLM`, instead of
pasting the node text into a text LLM's prompt.

>>> from llama_index.core import Settings
>>> Settings.llm = ComprExITLLM()  # as_query_engine resolves an LLM even when a synthesizer is given
>>> postprocessor = ComprExITNodePostprocessor()
>>> engine = index.as_query_engine(
...     response_synthesizer=ComprExITSynthesizer(postprocessor), node_postprocessors=[postprocessor]
... )
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from comprexit_rag.defaults import reader_for
from comprexit_rag.errors import BackboneMismatchError, InvalidInputError
from comprexit_rag.validation import check_positive_int

from .base import ComprExITNodePostprocessor
from .llm import ComprExITLLM
from .query_engine import EMPTY_RESPONSE, _in_threads, response_metadata

__all__ = ["ComprExITSynthesizer"]

Nodes = Sequence[NodeWithScore]

dispatcher = instrument.get_dispatcher(__name__)


class ComprExITSynthesizer(BaseSynthesizer):
    """Answer from the ComprExIT slots of the nodes, with the frozen reader.

    Args:
        postprocessor: the :class:`ComprExITNodePostprocessor` whose store holds the slots
            (default: ``ComprExITNodePostprocessor()``, the embedded defaults); pass the same one
            as the engine's node postprocessor.
        llm: the reader as a :class:`ComprExITLLM` (default: the reader over the postprocessor's
            backbone); it must share that backbone.
        max_new_tokens: longest answer, in tokens.
        streaming: return a :class:`StreamingResponse` (``AsyncStreamingResponse`` from ``asynthesize``).
        callback_manager: LlamaIndex callbacks (default ``Settings.callback_manager``).

    The response's ``metadata`` holds the method, the slot fingerprint, the answer's statistics
    (``context_tokens``, ``slots``, ``achieved_ratio``, ``store_hits``, ``store_misses``) and ``timings``.
    """

    def __init__(
        self,
        postprocessor: ComprExITNodePostprocessor | None = None,
        *,
        llm: ComprExITLLM | None = None,
        max_new_tokens: int = 20,
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        check_positive_int(max_new_tokens, "max_new_tokens")
        postprocessor = postprocessor if postprocessor is not None else ComprExITNodePostprocessor()
        if not isinstance(postprocessor, ComprExITNodePostprocessor):
            raise InvalidInputError(
                f"postprocessor must be a ComprExITNodePostprocessor, got {type(postprocessor).__name__}."
            )
        backbone = postprocessor.compressor.backbone
        if llm is None:
            llm = ComprExITLLM(reader_for(backbone), max_new_tokens=max_new_tokens)
        elif llm.reader.backbone.fingerprint != backbone.fingerprint:
            raise BackboneMismatchError(
                f"The LLM's backbone {llm.reader.backbone.name!r} is not the compressor's {backbone.name!r}: "
                "slots live in the input-embedding space of the backbone that made them."
            )
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming)
        self._postprocessor = postprocessor
        self._max_new_tokens = max_new_tokens
        postprocessor._slot_reader = True  # its slots are read: no "text LLM" warning

    @property
    def postprocessor(self) -> ComprExITNodePostprocessor:
        return self._postprocessor

    @property
    def llm(self) -> ComprExITLLM:
        """The reader as a LlamaIndex LLM (pass it as ``as_query_engine(llm=...)`` when no ``Settings.llm`` is set)."""
        return self._llm  # type: ignore[return-value]

    def _get_prompts(self) -> PromptDictType:
        return {}  # no text prompt: the reader's own QA template holds only the question

    def _update_prompts(self, prompts: PromptDictType) -> None:
        if prompts:
            raise InvalidInputError("ComprExITSynthesizer has no text prompt to update: it reads slots.")

    # ------------------------------------------------------------------ synthesis from nodes

    @dispatcher.span
    def synthesize(
        self, query: QueryType, nodes: Nodes, additional_source_nodes: Nodes | None = None, **response_kwargs: Any
    ) -> RESPONSE_TYPE:
        """Read the slots of ``nodes`` (compressing any the store lacks) and answer ``query``."""
        bundle = _bundle(query)
        started = time.perf_counter()
        compressed = self._postprocessor.compress_nodes(nodes, bundle)
        return self._respond(bundle.query_str, compressed, additional_source_nodes, started)

    @dispatcher.span
    async def asynthesize(
        self, query: QueryType, nodes: Nodes, additional_source_nodes: Nodes | None = None, **response_kwargs: Any
    ) -> RESPONSE_TYPE:
        """:meth:`synthesize` with compression and generation in worker threads."""
        bundle = _bundle(query)
        started = time.perf_counter()
        compressed = await self._postprocessor.acompress_nodes(nodes, bundle)
        response = await asyncio.to_thread(
            self._respond, bundle.query_str, compressed, additional_source_nodes, started
        )
        if isinstance(response, StreamingResponse):
            return AsyncStreamingResponse(
                _in_threads(response.response_gen), source_nodes=response.source_nodes, metadata=response.metadata
            )
        return response

    def _respond(
        self,
        question: str,
        compressed: Any,
        additional_source_nodes: Sequence[NodeWithScore] | None,
        started: float,
    ) -> Response | StreamingResponse:
        sources = [*compressed.nodes, *(additional_source_nodes or [])]
        timings = {"compress": time.perf_counter() - started}
        metadata = response_metadata(compressed, timings)
        if not len(compressed.context):
            return Response(EMPTY_RESPONSE, source_nodes=sources, metadata=metadata)
        llm = self.llm
        with self._callback_manager.event(CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: question}) as event:
            if self._streaming:
                stream = llm.stream_read(
                    question, compressed.context, max_new_tokens=self._max_new_tokens, adapter=compressed.reader_adapter
                )
                response: Response | StreamingResponse = StreamingResponse(
                    stream, source_nodes=sources, metadata=metadata
                )
            else:
                read_from = time.perf_counter()
                answer = llm.read(
                    question, compressed.context, max_new_tokens=self._max_new_tokens, adapter=compressed.reader_adapter
                ).text
                timings["read"] = time.perf_counter() - read_from
                response = Response(answer, source_nodes=sources, metadata=metadata)
            event.on_end(payload={EventPayload.RESPONSE: response})
        timings["total"] = time.perf_counter() - started
        return response

    # ------------------------------------------------------------------ text chunks cannot carry slots

    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> str:
        raise InvalidInputError(
            "ComprExITSynthesizer reads the slots of nodes, not text chunks: call synthesize(query, nodes)."
        )

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> str:
        return self.get_response(query_str, text_chunks, **response_kwargs)


def _bundle(query: QueryType) -> QueryBundle:
    bundle = QueryBundle(query_str=query) if isinstance(query, str) else query
    if not isinstance(bundle, QueryBundle) or not bundle.query_str.strip():
        raise InvalidInputError(f"The question must be a non-empty string, got {query!r:.80}.")
    return bundle
