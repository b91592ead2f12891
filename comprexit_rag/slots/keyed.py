"""What the slot store and the slot cache share: slots by key, looked up under a lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["KeyedSlots"]


class KeyedSlots:
    """Key bookkeeping of a slot backend: ``_entries`` (key -> what is kept) read under ``_lock``."""

    _entries: Mapping[str, Any]
    _lock: threading.Lock | threading.RLock

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has slots here (a cache does not mark it used)."""
        with self._lock:
            return key in self._entries

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._entries))

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys without slots here, in input order, without duplicates."""
        with self._lock:
            return list(dict.fromkeys(k for k in keys if k not in self._entries))
