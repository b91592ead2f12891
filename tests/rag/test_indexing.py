"""Indexing survives crashes, full disks and a second writer: committed slots stay, reruns resume.

Rows of docs/RELIABILITY.md, on the tiny random Llama of ``comprexit_rag.testing``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import errno
import json
import logging

import pytest
import torch

from comprexit_rag import (
    Backbone,
    CheckpointError,
    ComprExITCompressor,
    ComprExITError,
    ComprExITHead,
)
from comprexit_rag.errors import StorageError
from comprexit_rag.rag import RAGPipeline
from comprexit_rag.slots import content_key
from comprexit_rag.testing import PASSAGES, manifest_keys, passage_text, untrained_pipeline


@pytest.fixture(scope="module")
def compressor(tiny_backbone: Backbone) -> ComprExITCompressor:
    torch.manual_seed(1)
    return ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))


def test_store_checks_itself_on_open_and_index_repairs_after_a_crash(tmp_path, tiny_backbone, embedder, caplog):
    directory = tmp_path / "rag"
    pipeline = untrained_pipeline(directory, tiny_backbone, embedder)
    pipeline.index(PASSAGES, batch_size=2, chunk_size=2)  # four shards
    store = pipeline.store
    first = json.loads(store.manifest_path.read_bytes().split(b"\n")[0])
    victim = store.path / first["shard"]
    lost = [entry["key"] for entry in first["entries"]]
    # What a crash (and a torn disk write) can leave behind.
    victim.write_bytes(victim.read_bytes()[:100])
    (store.path / "shard-ffff-deadbeefdead.safetensors").write_bytes(b"orphan shard without a manifest line")
    (store.path / ".shard-ffff-0123.safetensors.tmp").write_bytes(b"temporary file")
    with open(store.manifest_path, "ab") as handle:
        handle.write(b'{"op": "shard", "fingerpr')

    with caplog.at_level(logging.WARNING, logger="comprexit_rag.slots.store"):
        reopened = RAGPipeline.load(directory, backbone=tiny_backbone, embedder=embedder)
        problems = reopened.store.open_problems
    assert len(problems) == 1 and victim.name in problems[0] and "truncated" in problems[0]
    assert "found on open" in caplog.text and "comprexit-rag index" in caplog.text
    by_key = {content_key(passage_text(r)): r for r in PASSAGES}
    with pytest.raises(CheckpointError, match="comprexit-rag index"):
        reopened.store.get_many(lost)

    report = reopened.index(PASSAGES, batch_size=2, chunk_size=2)  # the resume repairs, then recomputes
    assert report.compressed == len(lost) and report.stored == len(PASSAGES)
    assert reopened.store.verify() == []  # full check: sha256 of every shard
    assert not victim.exists() and not list(reopened.store.path.glob("*deadbeef*"))
    assert not list(reopened.store.path.glob(".*.tmp"))
    assert reopened.store.manifest_path.read_bytes().endswith(b"\n")
    keys = [key for key in manifest_keys(reopened.store.manifest_path)]
    assert sorted(set(keys)) == sorted(by_key) and len(keys) == len(by_key) + len(lost)  # lost keys re-put once
    clean = reopened.compressor.compress(list(map(passage_text, PASSAGES)), ratio=reopened.ratio)
    for record, slots in zip(PASSAGES, clean.passages(), strict=True):
        stored = reopened.store.get(content_key(passage_text(record)))
        torch.testing.assert_close(stored, slots, atol=2e-3, rtol=2e-3)  # fp16 on disk; batching moves last bits
    again = RAGPipeline.load(directory, backbone=tiny_backbone, embedder=embedder)
    assert again.store.open_problems == [] and again.index(PASSAGES).compressed == 0


def test_disk_full_while_indexing_keeps_committed_slots_and_resumes(tmp_path, tiny_backbone, embedder, monkeypatch):
    directory = tmp_path / "rag"
    pipeline = untrained_pipeline(directory, tiny_backbone, embedder)
    real_pwrite = os.pwrite
    calls = [0]

    def full_on_second_shard(fd: int, data, offset: int) -> int:  # the store's manifest append
        calls[0] += 1
        if calls[0] == 2:
            real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_on_second_shard)
    with pytest.raises(StorageError, match=r"No space left on device.*free space and rerun") as caught:
        pipeline.index(PASSAGES, batch_size=2, chunk_size=3)
    monkeypatch.undo()
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, ComprExITError)
    assert len(pipeline.store) == 3  # the first chunk stays committed
    assert len(RAGPipeline.load(directory, backbone=tiny_backbone, embedder=embedder).store) == 3

    resumed = RAGPipeline.load(directory, backbone=tiny_backbone, embedder=embedder)
    report = resumed.index(PASSAGES, batch_size=2, chunk_size=3)
    assert (report.added, report.compressed, report.stored) == (0, len(PASSAGES) - 3, len(PASSAGES))
    keys = manifest_keys(resumed.store.manifest_path)
    assert sorted(keys) == sorted(content_key(passage_text(r)) for r in PASSAGES)  # nothing lost, nothing twice
    assert resumed.store.verify() == []


def test_a_second_concurrent_index_run_is_refused(indexed):
    import fcntl

    from comprexit_rag import IndexBusyError

    fd = os.open(indexed.directory / ".index.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another `comprexit-rag index` process would
        with pytest.raises(IndexBusyError, match="wait for it to finish and rerun"):
            indexed.index(["A passage added while another run indexes."])
    finally:
        os.close(fd)
    assert len(indexed) == len(PASSAGES)  # nothing was added
    assert indexed.index([]).stored == len(PASSAGES)  # the lock is free again
