"""ComprExITReader: an LCEL Runnable answering a question from the soft slots of LangChain documents.

Input ``{"question": str, "documents": list[Document]}`` (``"context"``, the key most LangChain
examples use, is read too); output the answer (``str``), or with ``return_stats=True`` an
``AIMessage`` whose ``response_metadata["comprexit_stats"]`` holds the statistics (so a following
``StrOutputParser`` still works). The slots are spliced into the reader LLM's input as embeddings
by :class:`comprexit_rag.reading.reader.Reader`: the text prompt holds only the instruction and the
question, never a passage or a slot value. That is why the reader is a Runnable over documents,
not a language model: a ``PromptValue`` or a string cannot carry slots.

>>> chain = {"documents": compression_retriever, "question": RunnablePassthrough()} | reader
>>> chain.invoke("Which magazine was started first?")
>>> reader.bind(max_new_tokens=5)  # generation options: bind, with_config(configurable=...) or fields
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Self

from comprexit_rag.defaults import reader_for
from comprexit_rag.errors import BackboneMismatchError, InvalidInputError
from comprexit_rag.rag.results import AnswerStats
from comprexit_rag.reading.reader import Reader
from comprexit_rag.validation import check_positive_int
from langchain_core.callbacks import CallbackManagerForChainRun
from langchain_core.callbacks.manager import dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_comprexit._checks import TypedErrors, check_documents
from langchain_comprexit.document_compressors import ComprExITDocumentCompressor, SlotLookup

if TYPE_CHECKING:
    from comprexit_rag.rag import RAGPipeline

__all__ = ["DOCUMENTS_KEY_ALIASES", "EMPTY_RESPONSE", "GENERATION_OPTIONS", "STATS_EVENT", "ComprExITReader"]

logger = logging.getLogger(__name__)

STATS_EVENT = "comprexit_stats"
"""Name of the custom callback event carrying the statistics of each answer (and of the
``response_metadata`` key of the ``AIMessage`` returned with ``return_stats=True``)."""
EMPTY_RESPONSE = "Empty Response"
"""The answer when no document has content: nothing is generated (LlamaIndex's convention too)."""
GENERATION_OPTIONS = ("max_new_tokens",)
"""Options a call may override, through ``bind``, ``with_config(configurable=...)`` or the fields."""
DOCUMENTS_KEY_ALIASES = ("context",)
"""Input keys read as the documents when ``documents_key`` is absent (``context`` is LangChain's usual key)."""


class ComprExITReader(TypedErrors, RunnableSerializable[dict[str, Any], str | dict[str, Any]]):
    """Answer ``{"question", "documents"}`` from the documents' slots with the frozen reader LLM.

    Each document is read from the slots its ``metadata["comprexit"]`` record names (written
    by :class:`ComprExITDocumentCompressor`); documents without valid stored slots are
    compressed on the spot. Supports ``invoke``, ``batch`` (one batched generation),
    ``stream`` (text chunks as they are generated), ``ainvoke``/``abatch`` and ``astream``.

    Every answer's statistics (``context_tokens``, ``slots``, ``tokens_saved``,
    ``achieved_ratio``, ``store_hits``, ``store_misses``, ``documents``, ``method``, ``timings``)
    are dispatched as the ``"comprexit_stats"`` custom callback event, kept in
    :attr:`last_stats`, and returned with the answer when ``return_stats=True``.

    An input without ``documents_key`` (nor ``"context"``) raises: the reader never answers
    closed-book by accident. When no document has content, nothing is generated and the answer
    is :data:`EMPTY_RESPONSE`, as LlamaIndex answers with no nodes.

    With no arguments it reads with the embedded defaults (SmolLM2, the shipped head at its
    ratio, and the default reader), shared with every other default component of the process.
    Unknown constructor arguments and unknown generation options raise
    :class:`~comprexit_rag.errors.InvalidInputError`.

    Args:
        compressor: the document compressor whose store/cache holds the slots (default:
            ``ComprExITDocumentCompressor()``).
        reader: the core reader (default: a :class:`~comprexit_rag.reading.reader.Reader` over the
            compressor's backbone; :func:`comprexit_rag.defaults.default_reader` for the default one).
        max_new_tokens: longest answer, in tokens (per call: ``reader.bind(max_new_tokens=5)`` or
            ``with_config(configurable={"max_new_tokens": 5})``).
        return_stats: return an ``AIMessage`` (answer as ``content``, statistics in
            ``response_metadata["comprexit_stats"]``) instead of the answer string.
        question_key: input key of the question.
        documents_key: input key of the documents.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    compressor: ComprExITDocumentCompressor = Field(default_factory=ComprExITDocumentCompressor)
    reader: Reader | None = None
    max_new_tokens: int = 20
    return_stats: bool = False
    question_key: str = "question"
    documents_key: str = "documents"

    _last_stats: dict[str, Any] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _positive(cls, value: object) -> int:
        return check_positive_int(value, "max_new_tokens")

    @model_validator(mode="after")
    def _check(self) -> Self:
        backbone = self.compressor.compressor.backbone
        if self.reader is None:
            self.reader = reader_for(backbone)
        elif self.reader.backbone.fingerprint != backbone.fingerprint:
            raise BackboneMismatchError(
                f"The reader's backbone {self.reader.backbone.name!r} is not the compressor's {backbone.name!r}: "
                "slots live in the input-embedding space of the backbone that made them. Use one backbone for both."
            )
        return self

    @classmethod
    def from_pipeline(
        cls, pipeline: RAGPipeline, *, compressor: ComprExITDocumentCompressor | None = None, **kwargs: Any
    ) -> ComprExITReader:
        """A reader over ``pipeline``'s reader and slot store (or over ``compressor`` when given)."""
        compressor = compressor or ComprExITDocumentCompressor.from_pipeline(pipeline)
        return cls(compressor=compressor, reader=pipeline.reader, **kwargs)

    @property
    def OutputType(self) -> Any:
        return AIMessage if self.return_stats else str

    @property
    def last_stats(self) -> dict[str, Any] | None:
        """Statistics of the most recent answer (of any thread), or ``None`` before the first."""
        with self._lock:
            return None if self._last_stats is None else dict(self._last_stats)

    # ------------------------------------------------------------------ Runnable API

    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> str | dict[str, Any]:
        """Answer one ``{"question", "documents"}`` input."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[dict[str, Any]],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str | dict[str, Any]]:
        """Answer several inputs with one batched generation (one run per input for callbacks).

        The ``read`` timing of each answer's statistics is the time of the whole batched generation.
        """
        if not inputs:
            return []
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str | dict[str, Any]]:
        """Yield the answer in text chunks as it is generated (``AddableDict`` chunks with ``return_stats``)."""
        return self.transform(iter([input]), config, **kwargs)

    def transform(
        self, input: Iterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str | dict[str, Any]]:
        """Stream the answer once the (possibly streamed) input is complete."""
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str | dict[str, Any]]:
        """Async :meth:`stream`: each chunk is generated in an executor thread."""
        chunks = self.stream(input, config, **kwargs)
        done = object()
        while (chunk := await run_in_executor(config, next, chunks, done)) is not done:
            yield chunk

    # ------------------------------------------------------------------ implementation

    def _invoke(
        self,
        input: dict[str, Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **options: Any,
    ) -> str | AIMessage:
        max_new_tokens = self._max_new_tokens(config, options)
        return self._answer_all([self._parse(input, max_new_tokens)], [config], max_new_tokens)[0]

    def _batch(
        self,
        inputs: list[dict[str, Any]],
        run_manager: list[CallbackManagerForChainRun],
        config: list[RunnableConfig],
        **options: Any,
    ) -> list[str | AIMessage | Exception]:
        max_new_tokens = self._max_new_tokens(config[0] if config else {}, options)
        outputs: list[str | AIMessage | Exception] = []
        good: list[int] = []
        items: list[tuple[str, list[Document]]] = []
        for index, item in enumerate(inputs):
            try:
                items.append(self._parse(item, max_new_tokens))
            except InvalidInputError as error:  # reported for this input only
                outputs.append(error)
            else:
                outputs.append("")
                good.append(index)
        answers = self._answer_all(items, [config[i] for i in good], max_new_tokens)
        for index, answer in zip(good, answers, strict=True):
            outputs[index] = answer
        return outputs

    def _transform(
        self,
        chunks: Iterator[dict[str, Any]],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **options: Any,
    ) -> Iterator[str | AIMessageChunk]:
        max_new_tokens = self._max_new_tokens(config, options)
        final: Any = None
        for chunk in chunks:
            final = chunk if final is None else _merge(final, chunk)
        question, documents = self._parse(final, max_new_tokens)
        started = time.perf_counter()
        lookup = self.compressor.soft_context(documents, question)
        looked_up = time.perf_counter()
        if lookup.context is None:
            pieces: Iterator[str] = iter([EMPTY_RESPONSE])
        else:
            pieces = self._core().stream(question, lookup.context, max_new_tokens=max_new_tokens)
        for piece in pieces:
            yield AIMessageChunk(content=piece) if self.return_stats else piece
        stats = self._stats(lookup, looked_up - started, time.perf_counter() - looked_up)
        self._report(stats, config)
        if self.return_stats:
            yield AIMessageChunk(content="", response_metadata={STATS_EVENT: stats})

    def _max_new_tokens(self, config: RunnableConfig, options: Mapping[str, Any]) -> int:
        """The call's answer length: a ``bind`` option, else ``configurable``, else the field."""
        unknown = sorted(set(options) - set(GENERATION_OPTIONS))
        if unknown:
            raise InvalidInputError(
                f"ComprExITReader got unknown option(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(GENERATION_OPTIONS)}."
            )
        value = options.get("max_new_tokens", (config.get("configurable") or {}).get("max_new_tokens"))
        return self.max_new_tokens if value is None else check_positive_int(value, "max_new_tokens")

    def _answer_all(
        self, items: Sequence[tuple[str, list[Document]]], configs: Sequence[RunnableConfig], max_new_tokens: int
    ) -> list[str | AIMessage]:
        """Look up (or compute) each input's slots, then generate every answer in one batch.

        Inputs without any document content get :data:`EMPTY_RESPONSE`, with nothing generated.
        """
        if not items:
            return []
        started = time.perf_counter()
        lookups = [self.compressor.soft_context(documents, question) for question, documents in items]
        looked_up = time.perf_counter()
        readable = [i for i, lookup in enumerate(lookups) if lookup.context is not None]
        answers = [EMPTY_RESPONSE] * len(items)
        if len(readable) < len(items):
            logger.warning(
                "%d input(s) have no document with content: answering %r without reading (not closed-book).",
                len(items) - len(readable),
                EMPTY_RESPONSE,
            )
        if readable:
            generated = self._core().generate(
                [items[i][0] for i in readable],
                [lookups[i].context for i in readable],
                max_new_tokens=max_new_tokens,
            )
            for i, answer in zip(readable, generated, strict=True):
                answers[i] = answer
        read = time.perf_counter() - looked_up
        outputs: list[str | AIMessage] = []
        for answer, lookup, config in zip(answers, lookups, configs, strict=True):
            stats = self._stats(lookup, (looked_up - started) / len(items), read if lookup.context else 0.0)
            self._report(stats, config)
            outputs.append(
                AIMessage(content=answer, response_metadata={STATS_EVENT: stats}) if self.return_stats else answer
            )
        return outputs

    def _core(self) -> Reader:
        """``reader``, through the adapter the compressor's slots are read through (a COMI merger's may differ
        from the head's: none, or its own)."""
        assert self.reader is not None  # set by the validator
        return self.reader.through(self.compressor.reader_adapter())

    def _parse(self, value: Any, max_new_tokens: int) -> tuple[str, list[Document]]:
        """The question and documents of one input, checked before any slot is looked up or compressed.

        A question too long for the reader (R3 of docs/RELIABILITY.md) is refused here, before
        its documents are compressed.
        """
        if not isinstance(value, Mapping):
            raise InvalidInputError(
                f"ComprExITReader takes a dict with {self.question_key!r} and {self.documents_key!r}, "
                f"got {type(value).__name__}. It reads documents' slots, which a text prompt cannot carry: "
                'build the chain as {"documents": retriever, "question": RunnablePassthrough()} | reader.'
            )
        key = next((k for k in (self.documents_key, *DOCUMENTS_KEY_ALIASES) if k in value), None)
        if key is None:
            raise InvalidInputError(
                f"ComprExITReader got no documents: the input has no {self.documents_key!r} key "
                f"(keys: {', '.join(map(repr, value)) or 'none'}). Pass the retrieved documents under "
                f"{self.documents_key!r} (or 'context'); pass [] to get {EMPTY_RESPONSE!r} on purpose."
            )
        question, documents = value.get(self.question_key), value[key]
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(f"{self.question_key!r} must be a non-empty string, got {question!r:.80}.")
        if isinstance(documents, Document):
            documents = [documents]
        documents = check_documents(documents, repr(self.documents_key))
        self._core().context_budget(question, max_new_tokens)  # InvalidInputError if it cannot fit
        return question, documents

    def _stats(self, lookup: SlotLookup, lookup_seconds: float, read_seconds: float) -> dict[str, Any]:
        context = lookup.context
        tokens = context.num_tokens if context is not None else 0
        slots = context.num_slots if context is not None else 0
        core = asdict(
            AnswerStats(tokens, slots, context.ratio if context is not None else 0.0, lookup.hits, lookup.misses)
        )
        # Tokens per slot actually read; the configured ratio is the "ratio" of each document's slot record.
        core["achieved_ratio"] = core.pop("ratio")
        return {
            **core,
            "tokens_saved": tokens - slots,
            "documents": len(lookup.documents),
            "method": self.compressor.method,
            "timings": {"lookup": lookup_seconds, "read": read_seconds, "total": lookup_seconds + read_seconds},
        }

    def _report(self, stats: dict[str, Any], config: RunnableConfig) -> None:
        with self._lock:
            self._last_stats = stats
        dispatch_custom_event(STATS_EVENT, stats, config=config)


def _merge(left: Any, right: Any) -> Any:
    """Join two chunks of a streamed input (dict chunks update each other)."""
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return {**left, **right}
    try:
        return left + right
    except TypeError:
        return right
