"""A bounded in-memory stand-in for a :class:`~comprexit_rag.slots.store.SlotStore` of one fingerprint.

Used where slots are not written to disk: query-aware (COMI) slots, which depend on the question,
and the integrations' slots when they are given no store. It answers the store's reading and
writing calls, so the slot service treats both alike.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..validation import check_positive_int
from .keyed import KeyedSlots

__all__ = ["MemorySlotCache"]


class MemorySlotCache(KeyedSlots):
    """A thread-safe LRU of slot tensors (float32, on the CPU) and token counts, keyed by slot key.

    The least recently used entry is dropped once ``max_entries`` are held.
    """

    def __init__(self, fingerprint: str, max_entries: int = 4096) -> None:
        self.fingerprint = fingerprint
        self.max_entries = check_positive_int(max_entries, "max_entries")
        self._entries: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        """``(slots, token count)`` of each key, or ``None`` where absent (marks hits as recently used)."""
        with self._lock:
            found = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                found.append(entry)
            return found

    def sizes(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """``(slots, token count)`` of each key, ``None`` where absent."""
        return [None if entry is None else (entry[0].shape[0], entry[1]) for entry in self.lookup(keys)]

    def get(self, key: str) -> torch.Tensor | None:
        """The slots of ``key``, or ``None`` (as :meth:`SlotStore.get <comprexit_rag.slots.store.SlotStore.get>`)."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        return [None if entry is None else entry[0] for entry in self.lookup(keys)]

    def put_many(self, keys: Sequence[str], slots: Sequence[torch.Tensor], token_counts: Sequence[int]) -> list[str]:
        """Keep the slots of several passages (keys already held are left as they are); the keys written."""
        written = []
        with self._lock:
            for key, tensor, tokens in zip(keys, slots, token_counts, strict=True):
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                self._entries[key] = (tensor.detach().to("cpu", torch.float32), int(tokens))
                written.append(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return written

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __repr__(self) -> str:
        return f"MemorySlotCache(fingerprint={self.fingerprint!r}, entries={len(self)}/{self.max_entries})"
