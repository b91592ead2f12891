"""Tests of gold passages read among retrieved ones (``comprexit_rag.evaluation.retrieved_contexts``), with the
real all-MiniLM-L6-v2 ranking the neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.evaluation.retrieved_contexts import with_retrieved_distractors
from comprexit_rag.retrieval import nearest

TOPICS = ("volcano", "violin", "glacier", "chess opening", "honey bee", "lighthouse")


def passage(topic: str, detail: int) -> Passage:
    return Passage(f"Fact {detail} about the {topic}: it is described in chapter {detail}.", title=f"{topic} {detail}")


@pytest.fixture
def examples() -> list[QAExample]:
    return [
        QAExample(f"q{i}", f"What does chapter 0 say about the {topic}?", ("x",), (passage(topic, 0),), (0,))
        for i, topic in enumerate(TOPICS)
    ]


@pytest.fixture
def pool() -> list[Passage]:
    return [passage(topic, detail) for topic in TOPICS for detail in range(4)]


@pytest.fixture(autouse=True)
def shared_embedder(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nearest, "load_embedder", lambda name, device: (embedder, name))


def test_each_gold_passage_comes_among_its_questions_nearest_other_passages(examples, pool, embedder):
    read = with_retrieved_distractors(examples, pool, distractors=3)
    texts = list(dict.fromkeys(p.formatted() for p in pool))
    vectors = embedder.encode(texts, normalize_embeddings=True)
    positions = set()
    for example, original in zip(read, examples, strict=True):
        gold = original.passages[0]
        assert len(example.passages) == 4 and example.passages[example.supporting[0]] == gold
        neighbours = [p.formatted() for p in example.passages if p != gold]
        scores = vectors @ embedder.encode([example.question], normalize_embeddings=True)[0]
        assert neighbours == [texts[i] for i in np.argsort(-scores) if texts[i] != gold.formatted()][:3]
        # Same-topic passages rank first: these are hard distractors, not random ones.
        assert all(text.startswith(TOPICS[int(example.id[1:])]) for text in neighbours)
        positions.add(example.supporting[0])
    assert len(positions) > 1  # the gold passage is not always first
    assert read == with_retrieved_distractors(examples, pool, distractors=3)  # the same on every run


def test_multi_passage_examples_and_no_distractors_are_refused(examples, pool):
    two = QAExample("h", "q?", ("a",), (pool[0], pool[1]), (0,))
    with pytest.raises(InvalidInputError, match="one-passage examples"):
        with_retrieved_distractors([*examples, two], pool, distractors=3)
    with pytest.raises(InvalidInputError, match="distractors must be >= 1"):
        with_retrieved_distractors(examples, pool, distractors=0)
