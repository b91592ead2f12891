"""Answering: retrieve the passages, give them to the reader as the method prescribes, read, time it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..reading.reader import Reader
from ..retrieval.dense import RetrievedPassage
from ..soft_context import SoftContext
from .results import Answer, AnswerStats, Source

if TYPE_CHECKING:
    from ..methods import MethodSpec
    from ..methods.base import Compressor
    from .pipeline import RAGPipeline

__all__ = ["answer_question", "reader_for"]


def answer_question(
    pipeline: RAGPipeline,
    question: str,
    spec: MethodSpec,
    compressor: Compressor | None,
    *,
    k: int,
    ratio: int,
    max_new_tokens: int,
    search_query: str | None = None,
) -> Answer:
    """The body of :meth:`RAGPipeline.ask <comprexit_rag.rag.pipeline.RAGPipeline.ask>`, its arguments checked.

    ``spec`` is a pipeline method; ``compressor`` makes its slots (``None`` for text).
    """
    started = time.perf_counter()
    hits: list[RetrievedPassage] = []
    if spec.context != "none":  # closed-book reads no passages, so it retrieves none
        hits = pipeline.retriever.search(question if search_query is None else search_query, k=k)
    retrieved = time.perf_counter()
    texts = [hit.text for hit in hits]
    hits_in_store = misses = 0
    context: SoftContext | list[str] | None = texts if spec.context == "text" else None
    if spec.storable:
        context, hits_in_store, misses = stored_context(pipeline, texts, ratio)
    elif spec.query_aware:
        context = compressor.compress(texts, query=question, ratio=ratio)
    compressed = time.perf_counter()
    answer = reader_for(pipeline, compressor).generate(question, context, max_new_tokens=max_new_tokens)
    finished = time.perf_counter()

    if isinstance(context, SoftContext):
        tokens, slots, achieved = context.num_tokens, context.num_slots, context.ratio
    elif context is None:
        tokens, slots, achieved = 0, 0, 1.0
    else:
        tokens, slots, achieved = sum(len(ids) for ids in pipeline.backbone.tokenize(texts)), 0, 1.0
    return Answer(
        question=question,
        answer=answer,
        method=spec.name,
        sources=tuple(_source(hit) for hit in hits),
        timings={
            "retrieve": retrieved - started,
            "compress": compressed - retrieved,
            "read": finished - compressed,
            "total": finished - started,
        },
        stats=AnswerStats(tokens, slots, achieved, hits_in_store, misses),
    )


def stored_context(pipeline: RAGPipeline, texts: Sequence[str], ratio: int) -> tuple[SoftContext, int, int]:
    """Slots of ``texts`` from the pipeline's store (missing ones compressed and stored now), hits, misses."""
    found = pipeline.slots.lookup(texts, ratio=ratio)
    return found.context, found.hits, found.misses


def reader_for(pipeline: RAGPipeline, compressor: Compressor | None) -> Reader:
    """The reader of the compressor's slots: through its reader adapter (the frozen reader for a COMI merger
    trained without one); text, and the closed-book question, are read like the stored slots."""
    return pipeline.reader.through((compressor or pipeline.compressor).reader_adapter)


def _source(hit: RetrievedPassage) -> Source:
    return Source(id=hit.id, title=str(hit.metadata.get("title", "")), score=hit.score)
