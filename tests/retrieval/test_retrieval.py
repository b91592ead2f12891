"""Tests of DenseRetriever with real faiss and the embedded all-MiniLM-L6-v2, offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever, RetrievedPassage, default_embedder_path
from comprexit_rag.slots import content_key

PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Python is a programming language created by Guido van Rossum in 1991.",
    "The Great Barrier Reef off Australia is the largest coral reef system on Earth.",
    "Mount Everest, in the Himalayas, is the highest mountain above sea level.",
    "Insulin is a hormone produced by the pancreas that regulates blood sugar.",
]
QUERIES = {
    "Which tower stands in Paris?": 0,
    "How do plants make food from light?": 1,
    "Who invented the Python programming language?": 2,
    "What is the world's biggest coral reef?": 3,
    "What is the tallest mountain in the world?": 4,
    "Which hormone controls glucose levels in the blood?": 5,
}


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformer:
    return SentenceTransformer(str(default_embedder_path()), device="cpu")


@pytest.fixture(scope="module")
def retriever(embedder: SentenceTransformer) -> DenseRetriever:
    """Shared read-mostly index of PASSAGES; tests that add build their own."""
    built = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    built.add(PASSAGES, metadatas=[{"row": i, "tags": ["demo"]} for i in range(len(PASSAGES))])
    return built


def test_query_retrieves_its_matching_passage(retriever: DenseRetriever) -> None:
    assert len(retriever) == len(PASSAGES)
    results = retriever.search(list(QUERIES), k=3)
    assert len(results) == len(QUERIES)
    for (query, expected), hits in zip(QUERIES.items(), results, strict=True):
        assert len(hits) == 3
        assert hits[0].text == PASSAGES[expected], query
        assert hits[0].id == content_key(PASSAGES[expected])
        assert hits[0].metadata == {"row": expected, "tags": ["demo"]}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert -1.0 - 1e-5 <= hits[-1].score <= hits[0].score <= 1.0 + 1e-5


def test_single_query_returns_flat_list(retriever: DenseRetriever) -> None:
    hits = retriever.search("tallest mountain", k=1)
    assert isinstance(hits, list) and len(hits) == 1
    assert isinstance(hits[0], RetrievedPassage)
    assert hits[0].text == PASSAGES[4]
    with pytest.raises(AttributeError):
        hits[0].score = 0.0  # type: ignore[misc]


def test_k_larger_than_corpus_and_empty_index(embedder: SentenceTransformer, retriever: DenseRetriever) -> None:
    hits = retriever.search("anything", k=50)
    assert sorted(h.id for h in hits) == sorted(content_key(p) for p in PASSAGES)
    empty = DenseRetriever(embedder)
    assert empty.search("anything", k=3) == []
    assert empty.search(["a", "b"], k=3) == [[], []]
    assert retriever.search([], k=3) == []
    with pytest.raises(InvalidInputError):
        retriever.search("x", k=0)


def test_incremental_and_duplicate_add(embedder: SentenceTransformer) -> None:
    built = DenseRetriever(embedder)
    first = built.add(PASSAGES[:3])
    assert len(built) == 3
    ids = built.add(PASSAGES)  # overlaps the first batch: only 3 new passages
    assert len(built) == len(PASSAGES)
    assert ids[:3] == first
    assert built.ids == [content_key(p) for p in PASSAGES]
    built.add(PASSAGES)  # idempotent re-add
    built.add([PASSAGES[0], PASSAGES[0]])  # duplicates within one call
    assert len(built) == len(PASSAGES)
    assert built.search("Which hormone controls glucose levels in the blood?", k=1)[0].text == PASSAGES[5]

    built.add(["A passage with an explicit id."], ids=["doc-1"], metadatas=[{"source": "manual"}])
    assert "doc-1" in built
    assert built.get("doc-1").metadata == {"source": "manual"}
    built.add(["A passage with an explicit id."], ids=["doc-1"])  # same id, same text: a no-op
    # Ids are keys: the same id with other text is refused, naming both texts; nothing is added.
    with pytest.raises(InvalidInputError, match=r"'doc-1'.*already indexed with other text.*explicit id.*other text"):
        built.add(["A new passage.", "Same id, other text."], ids=["doc-2", "doc-1"])
    with pytest.raises(InvalidInputError, match=r"Passages 0 and 2 share the id 'doc-3' with different texts"):
        built.add(["Text one.", "Text two.", "Text three."], ids=["doc-3", "doc-4", "doc-3"])
    assert built.get("doc-1").text == "A passage with an explicit id."
    assert "doc-2" not in built and "doc-3" not in built and len(built) == len(PASSAGES) + 1


def test_add_rejects_bad_input(retriever: DenseRetriever) -> None:
    with pytest.raises(InvalidInputError):
        retriever.add("a single string")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        retriever.add(["  "])
    with pytest.raises(InvalidInputError):
        retriever.add(["ok text"], metadatas=[{"bad": object()}])
    with pytest.raises(InvalidInputError):
        retriever.add(["ok text"], ids=["a", "b"])
    assert len(retriever) == len(PASSAGES)


def test_save_load_round_trip(tmp_path: Path, retriever: DenseRetriever) -> None:
    queries = list(QUERIES)
    before = retriever.search(queries, k=4)
    retriever.save(tmp_path / "idx")
    state = json.loads((tmp_path / "idx" / "retriever.json").read_text())
    assert state["embedder"] == DEFAULT_EMBEDDER and state["dimension"] == 384
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]

    loaded = DenseRetriever.load(tmp_path / "idx", device="cpu")  # rebuilds the default embedder offline
    assert loaded.embedder_name == DEFAULT_EMBEDDER and loaded.dimension == 384
    assert len(loaded) == len(retriever)
    after = loaded.search(queries, k=4)
    for hits_before, hits_after in zip(before, after, strict=True):
        assert [h.id for h in hits_before] == [h.id for h in hits_after]
        assert [h.metadata for h in hits_before] == [h.metadata for h in hits_after]
        assert [h.score for h in hits_before] == pytest.approx([h.score for h in hits_after], abs=1e-5)

    # the loaded retriever keeps growing and saves over the old state atomically
    loaded.add(["Honey bees communicate the location of flowers with a waggle dance."])
    loaded.save(tmp_path / "idx")
    assert len(list((tmp_path / "idx").glob("index-*.faiss"))) == 1
    again = DenseRetriever.load(tmp_path / "idx", embedder=retriever.embedder)
    assert len(again) == len(PASSAGES) + 1
    assert again.search("how do bees tell where flowers are", k=1)[0].text.startswith("Honey bees")


def test_load_refuses_dimension_mismatch(tmp_path: Path, retriever: DenseRetriever) -> None:
    retriever.save(tmp_path / "idx")
    state_path = tmp_path / "idx" / "retriever.json"
    state = json.loads(state_path.read_text())
    state["dimension"] = 768
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="dimension"):
        DenseRetriever.load(tmp_path / "idx", embedder=retriever.embedder)


def test_hnsw_index(tmp_path: Path, embedder: SentenceTransformer) -> None:
    built = DenseRetriever(embedder, index_type="hnsw", hnsw_m=8, embedder_name=DEFAULT_EMBEDDER)
    built.add(PASSAGES[:2])
    built.add(PASSAGES[2:])
    for hits, expected in zip(built.search(list(QUERIES), k=1), QUERIES.values(), strict=True):
        assert hits[0].text == PASSAGES[expected]
    assert len(built.search("anything", k=100)) == len(PASSAGES)
    built.save(tmp_path / "hnsw")
    loaded = DenseRetriever.load(tmp_path / "hnsw", embedder=embedder)
    assert loaded.index_type == "hnsw" and loaded.hnsw_m == 8
    assert [h.id for h in loaded.search("coral reef", k=3)] == [h.id for h in built.search("coral reef", k=3)]
