"""End to end: retriever -> ComprExIT compressor -> reader as LCEL chains over HotpotQA passages.

Each chain answers exactly as :meth:`RAGPipeline.ask` does over the same index: the integration
adds no behaviour of its own to retrieval, slot lookup or reading.
"""

from __future__ import annotations

import json
import time

import pytest
from comprexit_rag.retrieval import default_embedder_path
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.load import dumps
from langchain_core.runnables import Runnable, RunnablePassthrough

from langchain_comprexit import ComprExITDocumentCompressor, ComprExITReader, ComprExITRetriever


def rag_chain(pipeline, base_retriever, **reader_kwargs) -> Runnable:
    """``retriever | compressor | reader`` in LCEL."""
    compressor = ComprExITDocumentCompressor.from_pipeline(pipeline)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    reader = ComprExITReader.from_pipeline(pipeline, compressor=compressor, **reader_kwargs)
    return {"documents": retriever, "question": RunnablePassthrough()} | reader


def test_retriever_returns_documents_with_id_title_and_score(tiny_pipeline, hotpot):
    question = hotpot[0].question
    retriever = ComprExITRetriever.from_pipeline(tiny_pipeline, k=4)
    docs = retriever.invoke(question)
    hits = tiny_pipeline.retriever.search(question, k=4)

    assert [d.id for d in docs] == [hit.id for hit in hits] and len(docs) == 4
    for doc, hit in zip(docs, hits, strict=True):
        assert doc.page_content == hit.text
        assert doc.metadata == {"id": hit.id, "title": hit.metadata["title"], "score": pytest.approx(hit.score)}
        assert doc.page_content.startswith(doc.metadata["title"] + "\n")
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)
    assert len(retriever.invoke(question, k=2)) == 2


def test_chain_answers_hotpotqa_like_the_pipeline(tiny_pipeline, hotpot):
    chain = rag_chain(tiny_pipeline, ComprExITRetriever.from_pipeline(tiny_pipeline, k=3), return_stats=True)
    for example in hotpot:
        started = time.perf_counter()
        output = chain.invoke(example.question)
        seconds = time.perf_counter() - started
        expected = tiny_pipeline.ask(example.question, k=3)
        assert output.content == expected.answer
        stats = output.response_metadata["comprexit_stats"]
        assert (stats["context_tokens"], stats["slots"]) == (expected.stats.context_tokens, expected.stats.slots)
        assert (stats["store_hits"], stats["store_misses"]) == (3, 0)
        assert stats["tokens_saved"] > 0
        print(f"{example.question!r}: {output.content!r} in {seconds:.2f}s, {stats['tokens_saved']} tokens saved")

    answers = chain.batch([example.question for example in hotpot])
    assert len(answers) == len(hotpot) and all(isinstance(a.content, str) for a in answers)
    text = dumps(chain)  # the chain serialises (unsupported parts as "not_implemented"), with no tensors
    assert "tensor(" not in text.lower()


@pytest.mark.filterwarnings("ignore:The class `HuggingFaceEmbeddings` was deprecated:DeprecationWarning")
def test_compressor_behind_a_faiss_vector_store(tiny_pipeline, hotpot):
    """langchain-community's FAISS + HuggingFaceEmbeddings (the embedded all-MiniLM-L6-v2) as retriever."""
    faiss_store = pytest.importorskip("langchain_community.vectorstores").FAISS
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError:
        from langchain_community.embeddings import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(default_embedder_path()), model_kwargs={"device": "cpu"})
    documents = [
        Document(page_content=p.formatted(), metadata={"title": p.title}, id=p.id)
        for example in hotpot
        for p in example.passages
    ]
    vector_store = faiss_store.from_documents(documents, embeddings)
    chain = rag_chain(tiny_pipeline, vector_store.as_retriever(search_kwargs={"k": 3}), return_stats=True)

    for example in hotpot[:2]:
        output = chain.invoke(example.question)
        # Same passage texts as the pipeline indexed, so every passage's slots come from its store.
        stats = output.response_metadata["comprexit_stats"]
        assert (stats["store_hits"], stats["store_misses"]) == (3, 0)
        assert output.content == tiny_pipeline.ask(example.question, k=3).answer
        json.dumps(stats)


@pytest.mark.slow
def test_real_backbone_end_to_end(tmp_path, real_backbone, make_pipeline, hotpot):
    """SmolLM2-135M on CPU (the shipped head, or the untrained fallback), two questions, k=2."""
    examples = hotpot[:2]
    started = time.perf_counter()
    pipeline = make_pipeline(tmp_path / "rag", real_backbone, examples)
    indexed = time.perf_counter() - started
    chain = rag_chain(pipeline, ComprExITRetriever.from_pipeline(pipeline, k=2), return_stats=True)
    for example in examples:
        started = time.perf_counter()
        output = chain.invoke(example.question)
        seconds = time.perf_counter() - started
        expected = pipeline.ask(example.question, k=2)
        stats = output.response_metadata["comprexit_stats"]
        assert output.content == expected.answer
        assert stats["slots"] == expected.stats.slots
        assert stats["tokens_saved"] == expected.stats.context_tokens - expected.stats.slots > 0
        print(
            f"indexed {len(pipeline)} passages in {indexed:.1f}s; {example.question!r} -> {output.content!r} "
            f"(gold {example.answers[0]!r}) in {seconds:.2f}s, {stats['tokens_saved']} tokens saved"
        )
