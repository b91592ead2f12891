"""The pipeline: bad inputs, corrupt files, a head for another backbone, eight threads asking at once."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses

import pytest

from comprexit_rag import (
    Backbone,
    BackboneMismatchError,
    CheckpointError,
    ComprExITHead,
    InvalidInputError,
    Reader,
)
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.rag.directory import PIPELINE_FILE
from comprexit_rag.testing import CONTROL, LONE_SURROGATE, PASSAGES, QUESTIONS, manifest_keys, run_concurrently


@pytest.fixture(scope="module")
def reader(tiny_backbone: Backbone) -> Reader:
    return Reader(tiny_backbone, max_new_tokens=4)


def test_head_for_another_backbone_is_refused_by_the_pipeline(tmp_path, tiny_backbone, indexed, embedder):
    head = ComprExITHead.for_backbone(tiny_backbone)
    other = dataclasses.replace(head.fingerprint, num_hidden_layers=head.fingerprint.num_hidden_layers + 1)
    foreign = ComprExITHead(head.config, other).save_pretrained(tmp_path / "foreign-head")
    with pytest.raises(BackboneMismatchError, match="trained for backbone"):
        RAGPipeline.load(indexed.directory, backbone=tiny_backbone, embedder=embedder, head=foreign)
    assert indexed.ask(QUESTIONS[0], k=1, max_new_tokens=1).answer is not None  # the pipeline is untouched


def test_pipeline_bad_inputs(indexed, monkeypatch):
    for passages, message in [
        (None, "list of passages"),
        (42, "list of passages"),
        ("one string", "list of passages"),
        ({"text": "one dict"}, "list of passages"),
        ([None], "Passage 0 is a NoneType"),
        (["fine", "  "], "Passage 1 has empty text"),
        ([{"text": 3}], "Passage 0 needs a string 'text'"),
        ([LONE_SURROGATE], "not valid Unicode"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            indexed.index(passages)
    for name, value in [("batch_size", 0), ("batch_size", 2.5), ("chunk_size", 0), ("chunk_size", -3)]:
        with pytest.raises(InvalidInputError, match=name):
            indexed.index(["fine"], **{name: value})
    assert indexed.index([]).added == 0

    for question in ("", "   ", None, 3, LONE_SURROGATE):
        with pytest.raises(InvalidInputError):
            indexed.ask(question)  # type: ignore[arg-type]
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError, match="k must be"):
            indexed.ask("Who?", k=k)  # type: ignore[arg-type]
    for method in ("comprexit", "full"):
        for ratio in (0, -2, 2.5, True):
            with pytest.raises(InvalidInputError, match="ratio"):
                indexed.ask("Who?", method=method, ratio=ratio)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="max_new_tokens"):
            indexed.ask("Who?", method=method, max_new_tokens=0)

    def no_search(*args, **kwargs):
        raise AssertionError("a question that cannot fit must be refused before retrieval")

    monkeypatch.setattr(indexed.retriever, "search", no_search)
    with pytest.raises(InvalidInputError, match="does not fit the reader"):
        indexed.ask("Why " + "very " * 5000 + "long?")
    monkeypatch.undo()
    answer = indexed.ask(CONTROL, k=100, max_new_tokens=2)  # control characters; k beyond the corpus
    assert len(answer.sources) == len(PASSAGES)


def test_pipeline_corrupt_files_are_checkpoint_errors(tmp_path, indexed, tiny_backbone, embedder):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(indexed.directory, copy)
    (copy / "retriever" / "retriever.json").write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        RAGPipeline.load(copy, backbone=tiny_backbone, embedder=embedder)
    (copy / PIPELINE_FILE).write_text('{"format": "comprexit', encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        RAGPipeline.load(copy, backbone=tiny_backbone, embedder=embedder)


def test_pipeline_ask_from_8_threads_equals_sequential(indexed):
    jobs = [(question, "comprexit" if i % 3 else "full", None) for i, question in enumerate(QUESTIONS[:5])]
    expected = [indexed.ask(q, method=m, ratio=r, k=2, max_new_tokens=4) for q, m, r in jobs]
    # Ratio 16 has no stored slots yet: concurrent misses compress and store (some of) the same passages.
    fresh = [(question, "comprexit", 16) for question in (QUESTIONS[5], QUESTIONS[6], QUESTIONS[6])]
    assert len(indexed.store_for(16)) == 0

    def ask(job):
        question, method, ratio = job
        return indexed.ask(question, method=method, ratio=ratio, k=2, max_new_tokens=4)

    results = run_concurrently(jobs + fresh, ask)
    assert [(a.answer, a.sources) for a in results[: len(jobs)]] == [(a.answer, a.sources) for a in expected]
    store = indexed.store_for(16)
    keys = manifest_keys(store.manifest_path)
    assert len(keys) == len(set(keys)) == len(store)  # concurrent misses stored each passage once
    assert store.verify() == []
    hits = [ask(job) for job in fresh]  # now served from the store: same answers as the misses
    assert all(answer.stats.store_misses == 0 for answer in hits)
    assert [(a.answer, a.sources) for a in hits] == [(a.answer, a.sources) for a in results[len(jobs) :]]
