"""ComprExITDocumentCompressor: slot records in metadata, slot reuse, COMI, async, LangChain composition."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
import torch
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.slots import SlotStore, content_key
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import BaseDocumentTransformer, Document
from langchain_core.load import dumpd, dumps

from langchain_comprexit import COMPRESS_EVENT, ComprExITDocumentCompressor, ComprExITRetriever

RECORD_KEYS = {"slot_key", "slots", "tokens", "ratio", "fingerprint", "method"}


class EventRecorder(BaseCallbackHandler):
    """Collects custom callback events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


class Reverse(BaseDocumentTransformer):
    """A plain LangChain document transformer (reverses the order) to chain with the compressor."""

    def transform_documents(self, documents, **kwargs):
        return list(reversed(documents))


@pytest.fixture
def documents(hotpot) -> list[Document]:
    example = hotpot[0]
    return [
        Document(id=p.id, page_content=p.formatted(), metadata={"title": p.title, "source": "hotpotqa"})
        for p in example.passages[:4]
    ]


@pytest.fixture
def compressor(tiny_pipeline) -> ComprExITDocumentCompressor:
    """No store: slots are kept in the compressor's in-memory cache."""
    return ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor)


def spy_compress(monkeypatch) -> list[int]:
    """Count the passages given to ComprExITCompressor.compress."""
    calls: list[int] = []
    original = ComprExITCompressor.compress

    def compress(self, texts, **kwargs):
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(ComprExITCompressor, "compress", compress)
    return calls


def test_records_are_json_safe_and_match_the_core_compressor(compressor, documents, tiny_pipeline):
    out = compressor.compress_documents(documents, query="unused by comprexit")

    assert [d.page_content for d in out] == [d.page_content for d in documents]
    assert [d.id for d in out] == [d.id for d in documents]
    core = tiny_pipeline.compressor.compress([d.page_content for d in documents], ratio=compressor.ratio_for())
    for doc, original, slots, tokens in zip(out, documents, core.slot_counts, core.token_counts, strict=True):
        record = doc.metadata["comprexit"]
        assert set(record) == RECORD_KEYS
        assert {k: v for k, v in doc.metadata.items() if k != "comprexit"} == original.metadata
        assert "comprexit" not in original.metadata  # inputs are not mutated
        assert record["slot_key"] == content_key(doc.page_content)
        assert record["slots"] == int(slots) and record["tokens"] == int(tokens)
        assert record["slots"] == math.ceil(record["tokens"] / record["ratio"])
        assert record["fingerprint"] == f"{tiny_pipeline.compressor.fingerprint}/ratio={tiny_pipeline.ratio}"
        assert record["method"] == "comprexit"

        # The metadata and the serialised document hold only plain values, never a tensor.
        assert json.loads(json.dumps(doc.metadata)) == doc.metadata
        dumped, text = dumpd(doc), dumps(doc)
        assert json.loads(text) == json.loads(json.dumps(dumped))
        assert "tensor" not in text.lower() and "not_implemented" not in text

        cached = compressor._service("comprexit").backend(record["ratio"]).lookup([record["slot_key"]])[0]
        assert isinstance(cached[0], torch.Tensor) and cached[0].shape[0] == record["slots"]


def test_stored_slots_are_reused(monkeypatch, tiny_pipeline, documents, tmp_path):
    calls = spy_compress(monkeypatch)
    fingerprint = f"{tiny_pipeline.compressor.fingerprint}/ratio={tiny_pipeline.ratio}"
    store = SlotStore(tmp_path / "slots", fingerprint)
    compressor = ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor, store=store)

    first = compressor.compress_documents(documents, query="q")
    assert calls == [len(documents)] and len(store) == len(documents)
    again = compressor.compress_documents([*documents, documents[0]], query="q")
    assert calls == [len(documents)]  # nothing recompressed, the repeat included
    assert [d.metadata for d in again[:-1]] == [d.metadata for d in first]

    # A new process (a new store object over the same directory) still finds them on disk.
    reopened = ComprExITDocumentCompressor(
        compressor=tiny_pipeline.compressor, store=SlotStore(tmp_path / "slots", fingerprint)
    )
    reopened.compress_documents(documents, query="q")
    assert calls == [len(documents)]

    # Passages indexed by the pipeline are served from its store without any compression.
    from_pipeline = ComprExITDocumentCompressor.from_pipeline(tiny_pipeline)
    out = from_pipeline.compress_documents(documents, query="q")
    assert calls == [len(documents)]
    for doc in out:
        key = doc.metadata["comprexit"]["slot_key"]
        assert key in tiny_pipeline.store
        assert doc.metadata["comprexit"]["slots"] == tiny_pipeline.store.shape(key)[0]


def test_blank_documents_pass_through(compressor):
    blank = Document(page_content="   ", metadata={"a": 1})
    out = compressor.compress_documents([blank, Document(page_content="Paris is in France.")], query="q")
    assert out[0] is blank and "comprexit" in out[1].metadata


def test_store_of_another_head_or_ratio_is_refused(tiny_pipeline, tmp_path):
    # The core's typed errors, not pydantic's ValidationError (test_lc_hardening.py has the rest).
    with pytest.raises(InvalidInputError, match="fingerprint"):
        ComprExITDocumentCompressor(
            compressor=tiny_pipeline.compressor, store=SlotStore(tmp_path / "slots", "another-head/ratio=4")
        )
    with pytest.raises(InvalidInputError, match="ratio"):
        ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor, ratio=0)
    with pytest.raises(InvalidInputError, match="COMICompressor"):
        ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor, method="comi")
    with pytest.raises(InvalidInputError, match="Unknown method 'magic'"):
        ComprExITDocumentCompressor(compressor=tiny_pipeline.compressor, method="magic")


def test_comi_is_query_aware_and_never_stored(tiny_pipeline, tiny_backbone, documents):
    comi = COMICompressor(tiny_backbone, COMIMerger.for_backbone(tiny_backbone, layer=1))
    compressor = ComprExITDocumentCompressor.from_pipeline(tiny_pipeline, method="comi", comi=comi)
    stored = len(tiny_pipeline.store)

    first = compressor.compress_documents(documents, query="Who is it?")
    other = compressor.compress_documents(documents, query="Where is it?")
    assert len(tiny_pipeline.store) == stored
    for a, b in zip(first, other, strict=True):
        assert a.metadata["comprexit"]["method"] == "comi"
        assert a.metadata["comprexit"]["fingerprint"].startswith(comi.fingerprint)
        assert a.metadata["comprexit"]["slot_key"] != b.metadata["comprexit"]["slot_key"]
        json.dumps(a.metadata)
    expected = comi.compress([d.page_content for d in documents], query="Who is it?", ratio=compressor.ratio_for())
    assert [d.metadata["comprexit"]["slots"] for d in first] == expected.slot_counts.tolist()
    with pytest.raises(ValueError, match="query"):
        compressor.compress_documents(documents, query="")


def test_acompress_documents_matches_sync(compressor, documents):
    expected = compressor.compress_documents(documents, query="q")
    got = asyncio.run(compressor.acompress_documents(documents, query="q"))
    assert [d.metadata for d in got] == [d.metadata for d in expected]


def test_contextual_compression_retriever_and_compressor_pipeline(tiny_pipeline, hotpot):
    question = hotpot[0].question
    compressor = ComprExITDocumentCompressor.from_pipeline(tiny_pipeline)
    base = ComprExITRetriever.from_pipeline(tiny_pipeline, k=3)
    recorder = EventRecorder()

    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    docs = retriever.invoke(question, config={"callbacks": [recorder]})
    assert [d.id for d in docs] == [d.id for d in base.invoke(question)]
    assert all(set(d.metadata["comprexit"]) == RECORD_KEYS for d in docs)
    assert recorder.events == [
        (
            COMPRESS_EVENT,
            {
                "method": "comprexit",
                "documents": 3,
                "hits": 3,
                "misses": 0,
                "slots": sum(d.metadata["comprexit"]["slots"] for d in docs),
                "tokens": sum(d.metadata["comprexit"]["tokens"] for d in docs),
            },
        )
    ]
    assert [d.metadata for d in asyncio.run(retriever.ainvoke(question))] == [d.metadata for d in docs]

    piped = ContextualCompressionRetriever(
        base_compressor=DocumentCompressorPipeline(transformers=[compressor, Reverse()]), base_retriever=base
    )
    assert [d.metadata for d in piped.invoke(question)] == [d.metadata for d in reversed(docs)]
