"""The retriever: bad inputs, passages beyond the embedder window, corrupt saved state."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import errno
import json
import logging

import pytest

from comprexit_rag import (
    CheckpointError,
    InvalidInputError,
)
from comprexit_rag.errors import StorageError
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever
from comprexit_rag.testing import CONTROL, LONE_SURROGATE, PASSAGES, long_document, passage_text


@pytest.fixture(scope="module")
def retriever(embedder) -> DenseRetriever:
    built = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    built.add([passage_text(record) for record in PASSAGES])
    return built


def test_retriever_bad_inputs(retriever):
    for queries in (None, b"bytes", 3, "", "   ", ["fine", ""], ["fine", None], LONE_SURROGATE):
        with pytest.raises(InvalidInputError):
            retriever.search(queries, k=2)  # type: ignore[arg-type]
    for k in (0, -1, 2.5, True, "3", None):
        with pytest.raises(InvalidInputError, match="k must be"):
            retriever.search("Who discovered penicillin?", k=k)  # type: ignore[arg-type]
    for texts in (None, "one string", b"bytes", [None], [""], [LONE_SURROGATE]):
        with pytest.raises(InvalidInputError):
            retriever.add(texts)  # type: ignore[arg-type]
    assert retriever.add([]) == [] and len(retriever) == len(PASSAGES)
    hits = retriever.search(CONTROL, k=len(PASSAGES) + 10)  # control characters; k beyond the corpus
    assert len(hits) == len(PASSAGES)


def test_retriever_warns_about_passages_beyond_the_embedder_window(embedder, caplog):
    built = DenseRetriever(embedder)
    with caplog.at_level(logging.WARNING, logger="comprexit_rag.retrieval"):
        built.add([long_document(20_000), "A short passage."])
    assert "1 passage(s) are longer than the embedder's" in caplog.text


def test_retriever_corrupt_state_is_a_checkpoint_error(tmp_path, retriever, embedder, monkeypatch):
    saved = retriever.save(tmp_path / "retriever")
    state = saved.read_bytes()
    saved.write_bytes(state[: len(state) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        DenseRetriever.load(tmp_path / "retriever", embedder)
    saved.write_bytes(state)
    index_file = tmp_path / "retriever" / json.loads(state)["index_file"]
    index_bytes = index_file.read_bytes()
    index_file.write_bytes(index_bytes[:40])
    with pytest.raises(CheckpointError, match="faiss index"):
        DenseRetriever.load(tmp_path / "retriever", embedder)
    index_file.write_bytes(index_bytes)

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    grown = DenseRetriever.load(tmp_path / "retriever", embedder)
    grown.add(["One more passage about disks."])
    monkeypatch.setattr("comprexit_rag.durable.write_new", full_disk)
    with pytest.raises(StorageError, match="previously saved state is unchanged"):
        grown.save(tmp_path / "retriever")
    monkeypatch.undo()
    assert len(DenseRetriever.load(tmp_path / "retriever", embedder)) == len(PASSAGES)
