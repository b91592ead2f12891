"""Tests of gold passages read among retrieved ones (``comprexit_rag.evaluation.retrieved_contexts``), with the
real all-MiniLM-L6-v2 ranking the neighbours."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from comprexit_rag.cli import main
from comprexit_rag.commands.evaluate import load_examples
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


def write_nq_open(path, examples: list[QAExample]) -> None:
    rows = [
        {
            "question": e.question,
            "answers": list(e.answers),
            "ctxs": [{"title": e.passages[0].title, "text": e.passages[0].text, "isgold": True}],
        }
        for e in examples
    ]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def test_eval_reads_the_files_gold_passages_among_the_files_nearest_ones(examples, tmp_path, capsys):
    path = tmp_path / "nq.jsonl.gz"
    write_nq_open(path, examples)
    plain = load_examples(str(path), "nq-open", "all", "distractor", None)
    first_two = load_examples(str(path), "nq-open", "all", "distractor", 2, retrieved=2)
    everything = load_examples(str(path), "nq-open", "all", "distractor", None, retrieved=2)
    assert first_two == everything[:2]  # chosen for the whole file, then cut: the limit changes no neighbour
    file_passages = {p for example in plain for p in example.passages}
    for example, original in zip(everything, plain, strict=True):
        assert len(example.passages) == 3 and example.passages[example.supporting[0]] == original.passages[0]
        assert set(example.passages) <= file_passages  # the pool is the file's own passages

    hotpotqa = tmp_path / "hotpot.json"
    two = {"_id": "h", "question": "q?", "answer": "a", "context": [["A", ["a."]], ["B", ["b."]]]}
    hotpotqa.write_text(json.dumps([{**two, "supporting_facts": [["A", 0]]}]))
    argv = ["eval", "--data", str(hotpotqa), "--format", "hotpotqa", "--method", "full", "--retrieved-distractors", "2"]
    assert main(argv) == 2
    assert "one-passage examples" in capsys.readouterr().err
