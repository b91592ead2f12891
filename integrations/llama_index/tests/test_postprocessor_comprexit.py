"""ComprExITNodePostprocessor over a real VectorStoreIndex of HotpotQA paragraphs (tiny random backbone)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.comprexit import (
    FINGERPRINT_KEY,
    METADATA_KEYS,
    METHOD_KEY,
    RATIO_KEY,
    SLOT_KEY,
    SLOTS_KEY,
    TOKENS_KEY,
    ComprExITNodePostprocessor,
    ComprExITSynthesizer,
    MemorySlotCache,
)

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.reading.adapter import ReaderAdapter, ReaderAdapterConfig
from comprexit_rag.reading.reader import Reader
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever
from comprexit_rag.slots import SlotStore, content_key
from comprexit_rag.training.trainer import save_module_and_adapter


@pytest.fixture
def retrieved(hotpot_index, hotpot_examples) -> tuple[str, list[NodeWithScore]]:
    """The question of the first HotpotQA example and its top-2 nodes."""
    question = hotpot_examples[0].question
    return question, hotpot_index.as_retriever(similarity_top_k=2).retrieve(question)


@pytest.fixture
def count_compressed(monkeypatch, tiny_compressor) -> list[int]:
    """Records the number of texts of every ``tiny_compressor.compress`` call."""
    calls: list[int] = []
    original = tiny_compressor.compress

    def counting(texts, **kwargs):
        calls.append(len(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(tiny_compressor, "compress", counting)
    return calls


def expected_slots(tokens: int, ratio: int, window: int = 128) -> int:
    """ceil(tokens / ratio) slots per window of 128 tokens."""
    full, rest = divmod(tokens, window)
    return full * math.ceil(window / ratio) + math.ceil(rest / ratio)


def test_is_a_real_llama_index_postprocessor(tiny_compressor, tmp_path):
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    assert isinstance(postprocessor, BaseNodePostprocessor)
    assert ComprExITNodePostprocessor.class_name() == "ComprExITNodePostprocessor"
    assert postprocessor.ratio == tiny_compressor.config.ratio
    assert postprocessor.fingerprint == f"{tiny_compressor.fingerprint}/ratio={postprocessor.ratio}"
    assert isinstance(postprocessor.store, SlotStore)
    serialised = json.loads(postprocessor.to_json())  # fields only: no compressor, no tensors
    assert serialised["method"] == "comprexit" and serialised["store_dir"] == str(tmp_path / "slots")


def test_attaches_the_slot_key_and_stats_never_tensors(retrieved, tiny_compressor, tiny_backbone, tmp_path):
    question, nodes = retrieved
    before = [(n.node.node_id, dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys)) for n in nodes]
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    annotated = postprocessor.postprocess_nodes(nodes, query_str=question)

    assert [n.node.node_id for n in annotated] == [n.node.node_id for n in nodes]
    assert [n.score for n in annotated] == [n.score for n in nodes]
    for item in annotated:
        node, metadata = item.node, item.node.metadata
        text = node.get_content(metadata_mode=MetadataMode.LLM)
        assert text.startswith(f"title: {metadata['title']}")  # the LLM view: visible metadata + text
        assert metadata[SLOT_KEY] == content_key(text)
        assert metadata[METHOD_KEY] == "comprexit"
        assert metadata[FINGERPRINT_KEY] == postprocessor.fingerprint
        tokens = len(tiny_backbone.tokenize([text])[0])
        assert metadata[TOKENS_KEY] == tokens
        assert metadata[SLOTS_KEY] == expected_slots(tokens, postprocessor.ratio)
        assert metadata[RATIO_KEY] == pytest.approx(tokens / metadata[SLOTS_KEY])
        assert postprocessor.store.shape(metadata[SLOT_KEY]) == (metadata[SLOTS_KEY], tiny_backbone.hidden_size)
        assert all(isinstance(metadata[key], str | int | float) for key in METADATA_KEYS)
        assert not any(isinstance(value, torch.Tensor) for value in metadata.values())
        assert set(METADATA_KEYS) <= set(node.excluded_llm_metadata_keys)
        assert set(METADATA_KEYS) <= set(node.excluded_embed_metadata_keys)
    # The input nodes are left as they were: the postprocessor returns annotated copies.
    assert [(n.node.node_id, n.node.metadata, n.node.excluded_llm_metadata_keys) for n in nodes] == before


def test_llm_and_embed_views_show_no_slot_key(retrieved, tiny_compressor):
    question, nodes = retrieved
    for item in ComprExITNodePostprocessor(tiny_compressor).postprocess_nodes(nodes, query_str=question):
        node, key = item.node, item.node.metadata[SLOT_KEY]
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            content = node.get_content(metadata_mode=mode)
            assert key not in content and "comprexit" not in content
            assert "comprexit" not in node.get_metadata_str(mode)
            assert f"title: {node.metadata['title']}" in content
        assert key in node.get_content(metadata_mode=MetadataMode.ALL)  # the key is there, just hidden


def test_stored_slots_are_reused_within_and_across_sessions(retrieved, tiny_compressor, count_compressed, tmp_path):
    _, nodes = retrieved
    first = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    compressed = first.compress_nodes(nodes)
    assert (compressed.hits, compressed.misses, count_compressed) == (0, 2, [2])
    again = first.compress_nodes(nodes)
    assert (again.hits, again.misses, count_compressed) == (2, 0, [2])

    reopened = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")  # persisted on disk
    from_disk = reopened.compress_nodes(nodes)
    assert (from_disk.hits, from_disk.misses, count_compressed) == (2, 0, [2])
    assert [n.node.metadata for n in from_disk.nodes] == [n.node.metadata for n in compressed.nodes]
    assert torch.equal(from_disk.context.slots, compressed.context.slots)  # misses read back what is stored

    in_memory = ComprExITNodePostprocessor(tiny_compressor)
    assert isinstance(in_memory.store, MemorySlotCache) and in_memory.store.fingerprint == in_memory.fingerprint
    in_memory.postprocess_nodes(nodes)
    in_memory.postprocess_nodes(nodes)
    assert count_compressed == [2, 2] and len(in_memory.store) == 2


def test_slots_are_those_of_the_text_the_llm_sees(retrieved, tiny_compressor, tmp_path):
    question, nodes = retrieved
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    compressed = postprocessor.compress_nodes(nodes, QueryBundle(question))
    texts = [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes]
    direct = tiny_compressor.compress(texts, ratio=postprocessor.ratio)
    assert compressed.context.slot_counts.tolist() == direct.slot_counts.tolist()
    assert compressed.context.token_counts.tolist() == direct.token_counts.tolist()
    for stored, fresh in zip(compressed.context.passages(), direct.passages(), strict=True):
        torch.testing.assert_close(stored, fresh.to(torch.float16).float())


def test_node_hash_and_serialisation_survive_the_metadata(retrieved, tiny_compressor, count_compressed):
    question, nodes = retrieved
    postprocessor = ComprExITNodePostprocessor(tiny_compressor)
    annotated = postprocessor.postprocess_nodes(nodes, query_str=question)
    for original, item in zip(nodes, annotated, strict=True):
        node = item.node
        assert len(node.hash) == 64 and node.hash != original.node.hash  # metadata is part of the hash
        restored = TextNode.from_json(node.to_json())
        assert restored.metadata == node.metadata and restored.hash == node.hash
        assert restored.excluded_llm_metadata_keys == node.excluded_llm_metadata_keys
        assert restored.get_content(MetadataMode.LLM) == node.get_content(MetadataMode.LLM)
        assert json.loads(item.to_json())["node"]["metadata"][SLOT_KEY] == node.metadata[SLOT_KEY]
    # Postprocessing annotated (or deserialised) nodes again finds the same slots: same keys, no work.
    restored = [NodeWithScore(node=TextNode.from_json(n.node.to_json()), score=n.score) for n in annotated]
    twice = postprocessor.postprocess_nodes(restored, query_str=question)
    assert [n.node.metadata for n in twice] == [n.node.metadata for n in annotated]
    assert [n.node.excluded_llm_metadata_keys for n in twice] == [n.node.excluded_llm_metadata_keys for n in annotated]
    assert count_compressed == [2]


def test_comi_needs_the_query_bundle(retrieved, tiny_compressor, tiny_comi, hotpot_examples, tmp_path):
    question, nodes = retrieved
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, method="comi", comi=tiny_comi, store=tmp_path)
    with pytest.raises(InvalidInputError, match=r"method='comi'.*needs the query.*QueryBundle"):
        postprocessor.postprocess_nodes(nodes)
    with pytest.raises(InvalidInputError, match="needs the query"):
        postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle("  "))
    with pytest.raises(InvalidInputError, match="needs the query"):
        asyncio.run(postprocessor.apostprocess_nodes(nodes))

    annotated = postprocessor.postprocess_nodes(nodes, query_str=question)
    other = postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle(hotpot_examples[1].question))
    for item, other_item in zip(annotated, other, strict=True):
        metadata = item.node.metadata
        assert metadata[METHOD_KEY] == "comi" and metadata[FINGERPRINT_KEY].startswith("comi-")
        assert metadata[SLOTS_KEY] == tiny_comi.config.slots_for(metadata[TOKENS_KEY], postprocessor.ratio)
        assert metadata[SLOT_KEY] != other_item.node.metadata[SLOT_KEY]  # slots depend on the question
    assert isinstance(postprocessor.store, MemorySlotCache) and len(postprocessor.store) == 4
    assert not SlotStore.fingerprints(tmp_path)  # query-aware slots never go to disk
    assert postprocessor.compress_nodes(nodes, QueryBundle(question)).hits == 2  # same question: cached


def test_async_path_matches_the_sync_one(hotpot_index, hotpot_examples, tiny_compressor, tmp_path):
    retriever = hotpot_index.as_retriever(similarity_top_k=2)
    postprocessor = ComprExITNodePostprocessor(tiny_compressor, store=tmp_path / "slots")
    questions = [example.question for example in hotpot_examples[:3]]

    async def run() -> list[list[NodeWithScore]]:
        retrieved = await asyncio.gather(*(retriever.aretrieve(q) for q in questions))
        pairs = zip(questions, retrieved, strict=True)
        return await asyncio.gather(*(postprocessor.apostprocess_nodes(nodes, query_str=q) for q, nodes in pairs))

    concurrent = asyncio.run(run())
    for question, annotated in zip(questions, concurrent, strict=True):
        sync = postprocessor.postprocess_nodes(retriever.retrieve(question), query_str=question)
        assert [n.node.metadata for n in annotated] == [n.node.metadata for n in sync]
        assert all(SLOT_KEY in n.node.metadata for n in annotated)


def test_from_pipeline_reuses_the_slots_a_rag_pipeline_stored(
    tmp_path, tiny_backbone, tiny_compressor, embed_model, hotpot_examples, count_compressed
):
    retriever = DenseRetriever(embed_model.model, embedder_name=DEFAULT_EMBEDDER)
    pipeline = RAGPipeline.build(
        tmp_path / "rag", backbone=tiny_backbone, head=tiny_compressor.head, retriever=retriever
    )
    passages = hotpot_examples[0].passages
    assert pipeline.index(list(passages)).compressed == len(passages)

    postprocessor = ComprExITNodePostprocessor.from_pipeline(pipeline)  # default metadata mode: the node text only
    assert postprocessor.metadata_mode == MetadataMode.NONE
    assert postprocessor.store is pipeline.store and postprocessor.fingerprint == pipeline.store.fingerprint
    nodes = [NodeWithScore(node=TextNode(text=p.formatted(), metadata={"title": p.title})) for p in passages]
    compressed = postprocessor.compress_nodes(nodes)
    assert (compressed.hits, compressed.misses) == (len(passages), 0)
    assert [n.node.metadata[SLOT_KEY] for n in compressed.nodes] == [content_key(p.formatted()) for p in passages]
    assert count_compressed == []  # the pipeline's own compressor did the work, once, at indexing time


def test_bad_arguments_are_refused(tiny_compressor, tmp_path):
    with pytest.raises(InvalidInputError, match="Unknown method"):
        ComprExITNodePostprocessor(tiny_compressor, method="full")
    with pytest.raises(InvalidInputError, match="ratio"):
        ComprExITNodePostprocessor(tiny_compressor, ratio=0)
    with pytest.raises(InvalidInputError, match="fingerprint"):
        ComprExITNodePostprocessor(tiny_compressor, store=SlotStore(tmp_path, "another-head/ratio=4"))
    with pytest.raises(InvalidInputError, match="ComprExITCompressor"):
        ComprExITNodePostprocessor("not a compressor")


def test_a_comi_merger_directory_brings_its_reader_adapter(fresh_tiny_backbone, tmp_path):
    # A merger trained with a reader adapter is read through it; from_defaults used to load the merger alone.
    backbone = fresh_tiny_backbone
    merger = COMIMerger.for_backbone(backbone)
    adapter = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=2))
    save_module_and_adapter(tmp_path / "merger", merger, adapter)

    postprocessor = ComprExITNodePostprocessor.from_defaults(
        backbone, ComprExITHead.for_backbone(backbone), comi_merger=tmp_path / "merger", method="comi"
    )

    assert postprocessor.comi.reader_adapter is not None
    assert postprocessor.comi.reader_adapter.digest == adapter.digest
    # The fingerprint names the merger alone (slots do not depend on the adapter); the slots name the adapter.
    assert postprocessor.comi.fingerprint == COMICompressor(backbone, merger).fingerprint
    soft = postprocessor.comi.compress(["Gustave Eiffel's company built the tower."], query="Who built it?")
    assert soft.reader_adapter == adapter.digest


@pytest.mark.parametrize("streaming", [False, True])
def test_each_method_s_slots_are_read_through_their_own_adapter(
    make_tiny_backbone, hotpot_nodes, monkeypatch, streaming
):
    # The head has a reader adapter; the COMI merger was trained for the frozen reader (no adapter of its own).
    backbone = make_tiny_backbone()
    adapter = ReaderAdapter.create(backbone, ReaderAdapterConfig(rank=2))
    core = ComprExITCompressor(backbone, ComprExITHead.for_backbone(backbone), reader_adapter=adapter)
    comi = COMICompressor(backbone, COMIMerger.for_backbone(backbone))
    used: list[ReaderAdapter | None] = []
    for name in ("generate", "stream"):
        original = getattr(Reader, name)

        def recording(self, *args, _original=original, **kwargs):
            used.append(self.adapter)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Reader, name, recording)
    nodes = [NodeWithScore(node=node, score=1.0) for node in hotpot_nodes[:2]]

    for method, expected in (("comprexit", adapter), ("comi", None)):
        postprocessor = ComprExITNodePostprocessor(core, method=method, comi=comi)
        response = ComprExITSynthesizer(postprocessor, max_new_tokens=2, streaming=streaming).synthesize("Who?", nodes)
        if streaming:
            response.get_response()
        assert used.pop() is expected
