"""The slot service: stored-or-compressed slots, one key scheme, one read-back rule, for every caller."""

from __future__ import annotations

import pytest
import torch

from comprexit_rag.errors import InvalidInputError
from comprexit_rag.methods.comi import COMICompressor, COMIMerger
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.slots import (
    DISK_DTYPE,
    MemorySlotCache,
    SlotService,
    SlotStore,
    content_key,
    query_key,
    store_fingerprint,
)

TEXTS = ["Town 1 lies on the river Rell.", "Town 2 was founded by Ada in 1502.", "Town 1 lies on the river Rell."]


@pytest.fixture(scope="module")
def compressor(tiny_backbone) -> ComprExITCompressor:
    torch.manual_seed(3)
    return ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))


@pytest.fixture(scope="module")
def comi(tiny_backbone) -> COMICompressor:
    torch.manual_seed(4)
    return COMICompressor(tiny_backbone, COMIMerger.for_backbone(tiny_backbone))


def counting(monkeypatch, compressor) -> list[int]:
    calls: list[int] = []
    real = compressor.compress

    def compress(texts, **kwargs):
        calls.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(compressor, "compress", compress)
    return calls


def test_a_miss_returns_what_a_later_hit_reads_back(compressor, tmp_path, monkeypatch):
    service = SlotService(compressor, tmp_path)
    calls = counting(monkeypatch, compressor)
    first = service.lookup(TEXTS, ratio=4)
    assert (first.hits, first.misses) == (0, 3) and calls == [2]  # a repeated text is compressed once
    assert first.keys == [content_key(text) for text in TEXTS]
    second = service.lookup(TEXTS, ratio=4)
    assert (second.hits, second.misses) == (3, 0) and calls == [2]
    for fresh, again in zip(first.slots, second.slots, strict=True):
        assert torch.equal(fresh, again)
    # What a miss returns is the fp16 copy the store keeps, not the float32 the head computed.
    direct = compressor.compress(TEXTS[:2], ratio=4).passage(0)  # the batch the miss was compressed in
    assert torch.equal(first.slots[0], direct.to(DISK_DTYPE).float())
    assert first.context.reader_adapter == "frozen" and torch.equal(first.context.passage(1), first.slots[1])
    assert first.slot_counts == [s.shape[0] for s in first.slots] and first.token_counts == second.token_counts


def test_each_ratio_has_its_own_store_and_fingerprint(compressor, tmp_path):
    service = SlotService(compressor, tmp_path)
    four, eight = service.backend(4), service.backend(8)
    assert isinstance(four, SlotStore) and four is service.backend(4) and four is not eight
    assert four.fingerprint == store_fingerprint(compressor.fingerprint, 4) == f"{compressor.fingerprint}/ratio=4"
    assert service.fingerprint() == service.fingerprint(compressor.config.ratio)
    sizes = service.lookup(TEXTS[:2], ratio=8, load=False)
    assert sizes.slots is None and sizes.context is None and sizes.misses == 2
    assert sizes.slot_counts == [eight.shape(key)[0] for key in sizes.keys]
    with pytest.raises(InvalidInputError, match="ratio"):
        service.backend(compressor.config.window + 1)


def test_without_a_root_slots_live_in_a_bounded_cache(compressor):
    service = SlotService(compressor, cache_size=1)
    found = service.lookup(TEXTS[:2], ratio=4)
    cache = service.backend(4)
    assert isinstance(cache, MemorySlotCache) and len(cache) == 1  # the first text was evicted at once
    assert found.misses == 2 and found.slots[0].dtype == torch.float32  # fresh slots stand in for evicted ones
    with pytest.raises(InvalidInputError, match="cache_size must be a positive integer"):
        SlotService(compressor, cache_size=0)


def test_query_aware_slots_are_keyed_by_the_pair_and_never_stored(comi, tmp_path):
    service = SlotService(comi, tmp_path)
    assert isinstance(service.backend(4), MemorySlotCache)
    with pytest.raises(InvalidInputError, match="needs a non-empty query"):
        service.lookup(TEXTS[:1], ratio=4)
    found = service.lookup(TEXTS[:1], query="Which river?", ratio=4)
    assert found.keys == [query_key("Which river?", TEXTS[0])] and found.context.reader_adapter is None
    assert service.lookup(TEXTS[:1], query="Which river?", ratio=4).hits == 1
    assert service.lookup(TEXTS[:1], query="Who founded it?", ratio=4).misses == 1
    assert query_key("a\x00b", "c") != query_key("a", "b\x00c")  # no separator can make two pairs collide
    with pytest.raises(InvalidInputError, match="made per query"):
        service.fill({"k": TEXTS[0]})
    assert not list(tmp_path.iterdir())


def test_fill_commits_chunk_by_chunk_and_adopt_checks_the_fingerprint(compressor, tmp_path):
    service = SlotService(compressor, tmp_path)
    texts = {content_key(text): text for text in TEXTS}
    assert service.fill(texts, ratio=4, batch_size=1, chunk_size=1) == 2
    store = service.backend(4)
    assert len({line for line in store.manifest_path.read_text().splitlines()}) == 2  # one shard per chunk
    assert service.fill(texts, ratio=4) == 0
    other = SlotService(compressor)
    other.adopt(store, 4)
    assert other.backend(4) is store and other.lookup(TEXTS[:1], ratio=4).hits == 1
    with pytest.raises(InvalidInputError, match=r"fingerprint.*pipeline\.store_for"):
        other.adopt(store, 8)
