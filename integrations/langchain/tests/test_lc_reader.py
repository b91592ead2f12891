"""ComprExITReader: answers from slots (never from text), invoke/batch/stream/async, stats, misses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import torch
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.reading.adapter import ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.reading.reader import Reader
from comprexit_rag.slots import content_key
from comprexit_rag.soft_context import SoftContext
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.load import dumps

from langchain_comprexit import (
    EMPTY_RESPONSE,
    STATS_EVENT,
    ComprExITDocumentCompressor,
    ComprExITReader,
    ComprExITRetriever,
)

STAT_KEYS = {
    "context_tokens",
    "slots",
    "achieved_ratio",
    "store_hits",
    "store_misses",
    "tokens_saved",
    "documents",
    "method",
    "timings",
}


class Recorder(BaseCallbackHandler):
    """Collects custom events and the inputs of every chain run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.inputs: list[Any] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.inputs.append(inputs)


@pytest.fixture
def compressed(tiny_pipeline, hotpot) -> tuple[str, list[Document]]:
    """A question and its three best documents, compressed against the pipeline's store."""
    question = hotpot[1].question
    docs = ComprExITRetriever.from_pipeline(tiny_pipeline, k=3).invoke(question)
    return question, list(ComprExITDocumentCompressor.from_pipeline(tiny_pipeline).compress_documents(docs, question))


@pytest.fixture
def reader(tiny_pipeline) -> ComprExITReader:
    return ComprExITReader.from_pipeline(tiny_pipeline, max_new_tokens=8)


def test_prompt_holds_only_the_question_and_the_slots_go_in_as_embeddings(monkeypatch, reader, compressed):
    question, docs = compressed
    seen: list[tuple[list[str], list[Any], Any]] = []
    original = Reader.build_inputs

    def build_inputs(self, questions, contexts, *args, **kwargs):
        batch = original(self, questions, contexts, *args, **kwargs)
        seen.append((list(questions), list(contexts), batch))
        return batch

    monkeypatch.setattr(Reader, "build_inputs", build_inputs)
    reader.invoke({"question": question, "documents": docs})

    [(questions, [context], batch)] = seen
    assert questions == [question]
    assert isinstance(context, SoftContext)  # never a string: no passage text is tokenised
    store = reader.compressor.store
    stored = [store.get(doc.metadata["comprexit"]["slot_key"]) for doc in docs]
    assert torch.equal(context.embeddings(), torch.cat(stored))

    core = reader.reader
    before, after = core.prompt.pieces(core.backbone.tokenizer, question)
    assert int(batch.attention_mask.sum()) == len(before) + context.num_slots + len(after)
    prompt = core.backbone.tokenizer.decode(before + after)
    assert question.strip() in prompt
    for doc in docs:
        assert doc.page_content not in prompt and doc.metadata["title"] not in prompt
    first_values = context.embeddings()[0, :4].tolist()
    assert not any(f"{value:.3f}" in prompt for value in first_values)


def test_invoke_reports_tokens_saved(reader, compressed):
    question, docs = compressed
    recorder = Recorder()
    answer = reader.invoke({"question": question, "documents": docs}, config={"callbacks": [recorder]})

    assert isinstance(answer, str)
    [(name, stats)] = recorder.events
    assert name == STATS_EVENT and set(stats) == STAT_KEYS and stats == reader.last_stats
    assert stats["context_tokens"] == sum(d.metadata["comprexit"]["tokens"] for d in docs)
    assert stats["slots"] == sum(d.metadata["comprexit"]["slots"] for d in docs)
    assert stats["tokens_saved"] == stats["context_tokens"] - stats["slots"] > 0
    assert (stats["store_hits"], stats["store_misses"], stats["documents"]) == (3, 0, 3)
    json.dumps(stats)
    json.dumps([d.metadata for d in recorder.inputs[0]["documents"]])  # run inputs carry no tensors

    with_stats = reader.model_copy(update={"return_stats": True})
    output = with_stats.invoke({"question": question, "documents": docs})
    assert output.content == answer and output.response_metadata["comprexit_stats"]["slots"] == stats["slots"]


def test_batch_stream_and_async(reader, compressed, hotpot, tiny_pipeline):
    question, docs = compressed
    inputs = [{"question": question, "documents": docs}, {"question": hotpot[2].question, "documents": docs[:1]}]
    single = [reader.invoke(item) for item in inputs]

    recorder = Recorder()
    batched = reader.batch(inputs, config={"callbacks": [recorder]})
    assert len(batched) == 2 and all(isinstance(answer, str) for answer in batched)
    assert [data["documents"] for _, data in recorder.events] == [3, 1]
    failed = reader.batch([inputs[0], {"question": ""}], return_exceptions=True)
    assert isinstance(failed[0], str) and isinstance(failed[1], InvalidInputError)

    chunks = list(reader.stream(inputs[0]))
    assert "".join(chunks) == single[0] and all(isinstance(chunk, str) for chunk in chunks)
    streamed = list(reader.model_copy(update={"return_stats": True}).stream(inputs[0]))
    assert "".join(c.content for c in streamed) == single[0] and "comprexit_stats" in streamed[-1].response_metadata

    assert asyncio.run(reader.ainvoke(inputs[0])) == single[0]

    async def collect() -> list[str]:
        return [chunk async for chunk in reader.astream(inputs[0])]

    assert "".join(asyncio.run(collect())) == single[0]


def test_missing_or_stale_slots_are_compressed_on_the_spot(tiny_pipeline, hotpot):
    compressor = ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor)  # in-memory cache only
    reader = ComprExITReader(compressor=compressor, max_new_tokens=4, return_stats=True)
    example = hotpot[0]
    raw = [Document(page_content=p.formatted()) for p in example.passages[:2]]

    first = reader.invoke({"question": example.question, "documents": raw}).response_metadata["comprexit_stats"]
    assert (first["store_hits"], first["store_misses"]) == (0, 2)
    again = reader.invoke({"question": example.question, "documents": raw}).response_metadata["comprexit_stats"]
    assert (again["store_hits"], again["store_misses"]) == (2, 0)

    # A record whose content changed since compression is not trusted: the new content is read.
    tagged = compressor.compress_documents(raw, example.question)
    edited = tagged[0].model_copy(update={"page_content": "Edited.\n" + tagged[0].page_content})
    lookup = compressor.soft_context([edited], example.question)
    assert lookup.misses == 1
    expected = tiny_pipeline.compressor.compress([edited.page_content], ratio=compressor.ratio_for())
    assert torch.equal(lookup.context.embeddings(), expected.embeddings())
    assert compressor.slot_key(edited.page_content) == content_key(edited.page_content)


def test_no_documents_and_bad_inputs(reader):
    output = reader.model_copy(update={"return_stats": True}).invoke({"question": "Who?", "documents": []})
    stats = output.response_metadata["comprexit_stats"]
    assert output.content == EMPTY_RESPONSE and stats["documents"] == stats["slots"] == 0  # nothing generated
    with pytest.raises(InvalidInputError, match="question"):
        reader.invoke({"documents": []})
    with pytest.raises(InvalidInputError, match="Documents"):
        reader.invoke({"question": "Who?", "documents": ["text"]})
    with pytest.raises(InvalidInputError, match="dict"):
        reader.invoke("Who?")


def test_serialising_the_reader_writes_no_tensors(reader):
    text = dumps(reader)
    assert "tensor(" not in text.lower()


def test_comi_slots_are_read_through_the_adapter_their_merger_was_trained_with(make_tiny_backbone):
    # The head has a reader adapter; the COMI merger was trained for the frozen reader (no adapter of its own).
    backbone = make_tiny_backbone()
    adapter = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=2))
    core = ComprExITCompressor(backbone, ComprExITHead.for_backbone(backbone), reader_adapter=adapter)
    comi = COMICompressor(backbone, COMIMerger.for_backbone(backbone))
    documents = [Document(page_content="Ada founded the town of Rell in 1512.")]

    stored = ComprExITReader(compressor=ComprExITDocumentCompressor(compressor=core), max_new_tokens=3)
    query_aware = ComprExITReader(
        compressor=ComprExITDocumentCompressor(compressor=core, method="comi", comi=comi), max_new_tokens=3
    )

    assert stored._core().adapter is adapter
    assert query_aware._core().adapter is None and query_aware._core() is query_aware._core()
    assert query_aware._core().backbone is backbone and query_aware._core().prompt is query_aware.reader.prompt
    assert isinstance(query_aware.invoke({"question": "Who founded Rell?", "documents": documents}), str)
