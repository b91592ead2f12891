"""Where the slots of compressed documents live: a SlotStore on disk or a bounded in-memory cache.

LangChain documents carry only a slot *key* in their metadata (JSON-safe); the tensors stay in
one of the two sources below, looked up by key under a fingerprint that names the compressor
(head or merger weights, backbone) and the ratio the slots were computed with.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch
from comprexit_rag.store import SlotStore

__all__ = ["CacheSource", "InMemorySlotCache", "SlotSource", "StoreSource"]


class SlotSource(Protocol):
    """Per-passage slots ``[S, H]`` and source-token counts, keyed by slot key, for one fingerprint."""

    fingerprint: str

    def info(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """``(slots, tokens)`` of each key, ``None`` where absent (no tensor is read)."""
        ...

    def get(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        """``(slots tensor, tokens)`` of each key, ``None`` where absent."""
        ...

    def put(self, keys: Sequence[str], slots: Sequence[torch.Tensor], tokens: Sequence[int]) -> None:
        """Keep the slots of ``keys`` (keys already present are left as they are)."""
        ...


class InMemorySlotCache:
    """A thread-safe LRU of slot tensors keyed by ``(fingerprint, slot key)``.

    Used when no :class:`~comprexit_rag.store.SlotStore` is given, and always for query-aware
    COMI slots (which depend on the question and are therefore never written to a store).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[torch.Tensor, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._entries

    def get(self, fingerprint: str, key: str) -> tuple[torch.Tensor, int] | None:
        with self._lock:
            found = self._entries.get((fingerprint, key))
            if found is not None:
                self._entries.move_to_end((fingerprint, key))
            return found

    def put(self, fingerprint: str, key: str, slots: torch.Tensor, tokens: int) -> None:
        with self._lock:
            if (fingerprint, key) in self._entries:
                self._entries.move_to_end((fingerprint, key))
                return
            self._entries[fingerprint, key] = (slots.detach().to("cpu", torch.float32), int(tokens))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class StoreSource:
    """A :class:`~comprexit_rag.store.SlotStore` seen as a :class:`SlotSource`."""

    def __init__(self, store: SlotStore) -> None:
        self.store = store
        self.fingerprint = store.fingerprint

    def info(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for key in keys:
            try:
                out.append((self.store.shape(key)[0], self.store.token_count(key)))
            except KeyError:
                out.append(None)
        return out

    def get(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        tensors = self.store.get_many(list(keys))
        return [
            None if tensor is None else (tensor, self.store.token_count(key))
            for key, tensor in zip(keys, tensors, strict=True)
        ]

    def put(self, keys: Sequence[str], slots: Sequence[torch.Tensor], tokens: Sequence[int]) -> None:
        self.store.put_many(list(keys), list(slots), [int(t) for t in tokens])


class CacheSource:
    """One fingerprint's view of an :class:`InMemorySlotCache`."""

    def __init__(self, cache: InMemorySlotCache, fingerprint: str) -> None:
        self.cache = cache
        self.fingerprint = fingerprint

    def info(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for key in keys:
            found = self.cache.get(self.fingerprint, key)
            out.append(None if found is None else (found[0].shape[0], found[1]))
        return out

    def get(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        return [self.cache.get(self.fingerprint, key) for key in keys]

    def put(self, keys: Sequence[str], slots: Sequence[torch.Tensor], tokens: Sequence[int]) -> None:
        for key, tensor, count in zip(keys, slots, tokens, strict=True):
            self.cache.put(self.fingerprint, key, tensor, count)
