"""ComprExITQueryEngine and build_query_engine over a real VectorStoreIndex of HotpotQA paragraphs."""

from __future__ import annotations

import asyncio
import json

import pytest
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import MetadataMode
from llama_index.postprocessor.comprexit import (
    EMPTY_RESPONSE,
    SLOT_KEY,
    SLOTS_KEY,
    TOKENS_KEY,
    ComprExITEmbedding,
    ComprExITNodePostprocessor,
    ComprExITQueryEngine,
    build_query_engine,
)

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.retrieval import DenseRetriever
from comprexit_rag.soft_context import SoftContext

STATS = {"method", "fingerprint", "context_tokens", "slots", "achieved_ratio", "store_hits", "store_misses", "timings"}


def own_question(node, example) -> bool:
    """Whether a retrieved node is one of the example's own ten paragraphs."""
    return node.node.node_id.startswith(f"{example.id}/")


def read_stored(engine: ComprExITQueryEngine, question: str, response: Response, max_new_tokens: int) -> str:
    """The reader's answer from the slots the source nodes point to, fetched from the store by key."""
    store = engine.postprocessor.store
    slots = [store.get(n.node.metadata[SLOT_KEY]) for n in response.source_nodes]
    tokens = [n.node.metadata[TOKENS_KEY] for n in response.source_nodes]
    return engine.reader.generate(question, SoftContext.from_passages(slots, tokens), max_new_tokens=max_new_tokens)


def test_engine_answers_hotpotqa_questions_from_the_attached_slots(
    hotpot_index, hotpot_examples, tiny_compressor, tmp_path
):
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=4)
    assert isinstance(engine, ComprExITQueryEngine) and isinstance(engine, CustomQueryEngine)
    assert engine.reader.backbone is tiny_compressor.backbone
    for example in hotpot_examples[:3]:
        response = engine.query(example.question)
        assert isinstance(response, Response) and isinstance(response.response, str)
        assert str(response) == response.response
        assert len(response.source_nodes) == 2
        assert any(own_question(node, example) for node in response.source_nodes)
        metadata = response.metadata
        assert set(metadata) == STATS and metadata["method"] == "comprexit"
        assert metadata["slots"] == sum(n.node.metadata[SLOTS_KEY] for n in response.source_nodes)
        assert metadata["context_tokens"] == sum(n.node.metadata[TOKENS_KEY] for n in response.source_nodes)
        assert metadata["achieved_ratio"] == pytest.approx(metadata["context_tokens"] / metadata["slots"])
        assert (metadata["store_hits"], metadata["store_misses"]) == (0, 2)
        assert set(metadata["timings"]) == {"retrieve", "compress", "read", "total"}
        json.dumps(metadata)
        assert [json.loads(n.to_json())["node"]["id_"] for n in response.source_nodes]
        assert SLOT_KEY not in response.get_formatted_sources(length=10_000)
        assert response.response == read_stored(engine, example.question, response, max_new_tokens=4)

        again = engine.query(example.question)  # slots reused: no compression, same answer
        assert (again.metadata["store_hits"], again.metadata["store_misses"]) == (2, 0)
        assert again.response == response.response


def test_engine_reads_slots_attached_upstream_and_compresses_on_a_miss(hotpot_index, hotpot_examples, tiny_compressor):
    question = hotpot_examples[1].question
    postprocessor = ComprExITNodePostprocessor(tiny_compressor)
    # Slots attached by the same postprocessor earlier in the chain are read, not recomputed.
    chained = build_query_engine(
        hotpot_index, postprocessor, similarity_top_k=2, node_postprocessors=[postprocessor], max_new_tokens=2
    )
    attached = chained.query(question)
    assert (attached.metadata["store_hits"], attached.metadata["store_misses"]) == (2, 0)
    # A miss (here: a different ratio, so other slots) is compressed on the spot.
    other_ratio = ComprExITNodePostprocessor(tiny_compressor, ratio=8)
    engine = build_query_engine(hotpot_index, other_ratio, similarity_top_k=2, max_new_tokens=2)
    missed = engine.query(question)
    assert (missed.metadata["store_hits"], missed.metadata["store_misses"]) == (0, 2)
    assert missed.metadata["slots"] < attached.metadata["slots"]


def test_async_query_matches_the_sync_one(hotpot_index, hotpot_examples, tiny_compressor):
    engine = build_query_engine(
        hotpot_index, ComprExITNodePostprocessor(tiny_compressor), similarity_top_k=2, max_new_tokens=3
    )
    questions = [example.question for example in hotpot_examples[:2]]

    async def run() -> list[Response]:
        return await asyncio.gather(*(engine.aquery(q) for q in questions))

    for question, response in zip(questions, asyncio.run(run()), strict=True):
        sync = engine.query(question)
        assert response.response == sync.response
        assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in sync.source_nodes]
        assert response.metadata["slots"] == sync.metadata["slots"]


def test_comi_engine_passes_the_query(hotpot_index, hotpot_examples, tiny_compressor, tiny_comi):
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, method="comi", comi=tiny_comi)
    engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=2)
    response = engine.query(hotpot_examples[0].question)
    assert response.metadata["method"] == "comi" and response.metadata["fingerprint"].startswith("comi-")
    assert response.metadata["store_misses"] == 2
    assert engine.query(hotpot_examples[0].question).metadata["store_hits"] == 2


def test_streaming_response(hotpot_index, hotpot_examples, tiny_compressor):
    engine = build_query_engine(
        hotpot_index, ComprExITNodePostprocessor(tiny_compressor), similarity_top_k=2, max_new_tokens=4, streaming=True
    )
    response = engine.query(hotpot_examples[0].question)
    assert isinstance(response, StreamingResponse)
    assert len(response.source_nodes) == 2 and response.metadata["slots"] > 0
    assert isinstance(str(response), str)  # drains the generator


def test_no_nodes_gives_an_empty_response(hotpot_index, hotpot_examples, tiny_compressor):
    engine = build_query_engine(
        hotpot_index,
        ComprExITNodePostprocessor(tiny_compressor),
        node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=1.01)],  # drops every node
    )
    response = engine.query(hotpot_examples[0].question)
    assert response.response == EMPTY_RESPONSE and response.source_nodes == []
    assert response.metadata["slots"] == 0


def test_build_query_engine_arguments(hotpot_index, tiny_compressor):
    postprocessor = ComprExITNodePostprocessor(tiny_compressor)
    retriever = hotpot_index.as_retriever(similarity_top_k=3)
    assert build_query_engine(retriever, postprocessor).retriever is retriever
    with pytest.raises(InvalidInputError, match="similarity_top_k"):
        build_query_engine(retriever, postprocessor, similarity_top_k=2)
    with pytest.raises(InvalidInputError, match="index or retriever"):
        build_query_engine("not an index", postprocessor)
    with pytest.raises(InvalidInputError, match="ratio"):
        build_query_engine(hotpot_index, postprocessor, ratio=8)
    with pytest.raises(InvalidInputError, match="non-empty"):
        build_query_engine(hotpot_index, postprocessor).query(" ")


def test_embedding_model(embed_model, hotpot_nodes):
    assert ComprExITEmbedding.class_name() == "ComprExITEmbedding"
    query = embed_model.get_query_embedding("Who directed Big Stone Gap?")
    assert len(query) == 384 and sum(v * v for v in query) == pytest.approx(1.0, abs=1e-4)
    text = hotpot_nodes[0].get_content(metadata_mode=MetadataMode.EMBED)
    batch = embed_model.get_text_embedding_batch([text, "another text"])
    assert batch[0] == pytest.approx(embed_model.get_text_embedding(text), abs=1e-5)
    assert asyncio.run(embed_model.aget_query_embedding("Who directed Big Stone Gap?")) == pytest.approx(
        query, abs=1e-5
    )
    shared = ComprExITEmbedding.from_retriever(DenseRetriever(embed_model.model))
    assert shared.model is embed_model.model


@pytest.mark.slow
def test_real_default_backbone_on_two_hotpotqa_questions(hotpot_index, hotpot_examples, real_backbone, tmp_path):
    """The embedded SmolLM2 backbone with the shipped head (or the untrained fallback), top-2 nodes."""
    postprocessor = ComprExITNodePostprocessor.from_defaults(real_backbone, store_dir=tmp_path / "slots")
    engine = build_query_engine(hotpot_index, postprocessor, similarity_top_k=2, max_new_tokens=8)
    for example in hotpot_examples[:2]:
        response = engine.query(example.question)
        timings = {name: round(seconds, 2) for name, seconds in response.metadata["timings"].items()}
        print(f"\n{example.question!r} -> {response.response!r} (gold {example.answers}) {timings}")
        assert isinstance(response.response, str) and len(response.source_nodes) == 2
        assert any(own_question(node, example) for node in response.source_nodes)
        assert response.metadata["store_misses"] == 2 and response.metadata["slots"] > 0
        for node in response.source_nodes:
            shape = postprocessor.store.shape(node.node.metadata[SLOT_KEY])
            assert shape == (node.node.metadata[SLOTS_KEY], real_backbone.hidden_size)
        again = engine.query(example.question)  # read back from the store: same answer, no compression
        assert again.metadata["store_hits"] == 2 and again.response == response.response
