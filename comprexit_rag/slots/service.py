"""The slot service: "the slots of these texts", read from where they are kept or compressed now.

One service wraps one compressor. Its slots at a ratio live in one backend: a
:class:`~comprexit_rag.slots.store.SlotStore` under ``store_root`` for a query-independent compressor
(fp16 on disk, shared across processes and runs), else a bounded :class:`MemorySlotCache` (query-aware
slots, which depend on the question, and callers without a store). The pipeline, the LangChain and
LlamaIndex integrations and the indexer all go through it, so they share keys
(:mod:`comprexit_rag.slots.keys`), store fingerprints and one rule for what a miss returns: the slots
read back from the backend (fp16-rounded in a store), exactly what a later hit returns, so an answer
never depends on whether its slots were already kept.

>>> service = SlotService(compressor, "my-index/slots")
>>> found = service.lookup(["Paris is the capital of France."], ratio=4)
>>> found.context, found.hits, found.misses
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..validation import check_positive_int, resolve_ratio
from .cache import MemorySlotCache
from .keys import content_key, query_key, store_fingerprint
from .store import SlotStore

if TYPE_CHECKING:
    from ..methods.base import Compressor
    from ..soft_context import SoftContext

__all__ = ["SlotBackend", "SlotLookup", "SlotService", "check_store_fingerprint"]

SlotBackend = SlotStore | MemorySlotCache


@dataclass
class SlotLookup:
    """What :meth:`SlotService.lookup` found for some texts, in input order.

    ``hits`` texts had kept slots, ``misses`` were compressed now (a text repeated in the call counts
    each time). ``slots`` holds each text's slots ``[S_i, H]`` and ``context`` all of them for the reader
    (both ``None`` when only sizes were asked for).
    """

    keys: list[str]
    slot_counts: list[int]
    token_counts: list[int]
    hits: int
    misses: int
    slots: list[torch.Tensor] | None = None
    context: SoftContext | None = None


def check_store_fingerprint(store: SlotStore, expected: str) -> None:
    """Refuse a store that keeps the slots of another compressor or ratio than ``expected`` names."""
    if store.fingerprint != expected:
        raise InvalidInputError(
            f"The slot store holds slots of fingerprint {store.fingerprint!r}, not {expected!r} (this compressor's "
            "head, backbone and ratio); open the matching one with pipeline.store_for(ratio) or "
            "SlotStore(directory, fingerprint), or pass its directory instead."
        )


class SlotService:
    """Stored-or-compressed slots of one compressor, at any ratio it accepts.

    Args:
        compressor: any :class:`~comprexit_rag.methods.base.Compressor`.
        store_root: directory of the slot stores (one per ratio); ``None`` keeps slots in memory.
            Query-aware slots are always kept in memory.
        cache_size: passages each in-memory cache keeps.
    """

    def __init__(
        self, compressor: Compressor, store_root: str | os.PathLike[str] | None = None, *, cache_size: int = 4096
    ) -> None:
        self.compressor = compressor
        self.store_root = Path(store_root) if store_root is not None else None
        self.cache_size = check_positive_int(cache_size, "cache_size")
        self._backends: dict[str, SlotBackend] = {}
        self._lock = threading.RLock()  # guards the lazily opened backends

    @property
    def query_aware(self) -> bool:
        return self.compressor.query_aware

    def ratio(self, ratio: int | None = None) -> int:
        """``ratio`` checked against the compressor (its own default when ``None``)."""
        return resolve_ratio(self.compressor, ratio)

    def fingerprint(self, ratio: int | None = None) -> str:
        """Names the slots made at ``ratio``: the compressor's fingerprint and the ratio."""
        return store_fingerprint(self.compressor.fingerprint, self.ratio(ratio))

    def key(self, text: str, query: str | None = None) -> str:
        """The key of ``text``'s slots: its content hash (for a query-aware compressor, of the pair)."""
        return query_key(query or "", text) if self.query_aware else content_key(text)

    def backend(self, ratio: int | None = None) -> SlotBackend:
        """Where the slots made at ``ratio`` are kept (opened on first use)."""
        fingerprint = self.fingerprint(ratio)
        with self._lock:
            backend = self._backends.get(fingerprint)
            if backend is None:
                if self.store_root is not None and not self.query_aware:
                    backend = SlotStore(self.store_root, fingerprint)
                else:
                    backend = MemorySlotCache(fingerprint, self.cache_size)
                self._backends[fingerprint] = backend
            return backend

    def adopt(self, store: SlotStore, ratio: int | None = None) -> None:
        """Keep the slots made at ``ratio`` in an already open ``store`` (e.g. a pipeline's)."""
        expected = self.fingerprint(ratio)
        check_store_fingerprint(store, expected)
        with self._lock:
            self._backends[expected] = store

    def lookup(
        self,
        texts: Sequence[str],
        *,
        query: str | None = None,
        ratio: int | None = None,
        batch_size: int | None = None,
        load: bool = True,
    ) -> SlotLookup:
        """The slots of ``texts``: kept ones read back, missing ones compressed now and kept.

        ``query`` is required by a query-aware compressor (and ignored by the others). With
        ``load=False`` only the slot and token counts are returned, and no kept tensor is read.
        """
        if self.query_aware and not (isinstance(query, str) and query.strip()):
            raise InvalidInputError(
                "This compressor is query-aware: it reads the question with each passage, so it needs a "
                "non-empty query."
            )
        ratio = self.ratio(ratio)
        backend = self.backend(ratio)
        keys = [self.key(text, query) for text in texts]
        found: list = backend.lookup(keys) if load else backend.sizes(keys)
        hits = sum(entry is not None for entry in found)
        missing = {key: text for key, text, entry in zip(keys, texts, found, strict=True) if entry is None}
        if missing:
            fresh = self.compressor.compress(
                list(missing.values()), query=query, ratio=ratio, batch_size=batch_size, show_progress=False
            )
            backend.put_many(list(missing), fresh.passages(), fresh.token_counts.tolist())
            kept = backend.lookup(list(missing)) if load else backend.sizes(list(missing))
            computed = {
                key: again if again is not None else _as_kept(slots, tokens, load)  # evicted from a small cache
                for key, again, slots, tokens in zip(
                    missing, kept, fresh.passages(), fresh.token_counts.tolist(), strict=True
                )
            }
            found = [entry if entry is not None else computed[key] for key, entry in zip(keys, found, strict=True)]
        token_counts = [int(entry[1]) for entry in found]
        if not load:
            slot_counts = [int(entry[0]) for entry in found]
            return SlotLookup(keys, slot_counts, token_counts, hits, len(keys) - hits)
        slots = [entry[0] for entry in found]
        context = self.compressor.soft_context(slots, token_counts)
        return SlotLookup(keys, [s.shape[0] for s in slots], token_counts, hits, len(keys) - hits, slots, context)

    def fill(
        self,
        texts: Mapping[str, str],
        *,
        ratio: int | None = None,
        batch_size: int = 8,
        chunk_size: int | None = None,
        show_progress: bool | None = None,
    ) -> int:
        """Compress and keep the slots of every text (``{key: text}``) whose key has none; returns how many.

        Texts are compressed ``batch_size`` at a time and kept ``chunk_size`` (default
        ``8 * batch_size``) at a time, each chunk committed on its own: an interrupted run loses
        at most one chunk. The progress bar shows by default for 64 texts or more.
        """
        if self.query_aware:
            raise InvalidInputError("Query-aware slots depend on the question: they are made per query, not filled.")
        ratio = self.ratio(ratio)
        backend = self.backend(ratio)
        missing = [key for key in texts if key not in backend]
        chunk_size = chunk_size or 8 * batch_size
        show = len(missing) >= 64 if show_progress is None else show_progress
        written = 0
        with tqdm(total=len(missing), desc="compressing passages", unit="passage", disable=not show) as bar:
            for start in range(0, len(missing), chunk_size):
                keys = missing[start : start + chunk_size]
                slots: list[torch.Tensor] = []
                tokens: list[int] = []
                for first in range(0, len(keys), batch_size):  # one batch at a time, so the bar moves per batch
                    batch = [texts[key] for key in keys[first : first + batch_size]]
                    soft = self.compressor.compress(batch, ratio=ratio, batch_size=batch_size, show_progress=False)
                    slots += soft.passages()
                    tokens += soft.token_counts.tolist()
                    bar.update(len(batch))
                written += len(backend.put_many(keys, slots, tokens))
        return written

    def __repr__(self) -> str:
        where = str(self.store_root) if self.store_root is not None else "memory"
        return f"SlotService({type(self.compressor).__name__}, {where})"


def _as_kept(slots: torch.Tensor, tokens: int, load: bool) -> tuple:
    """What a memory cache keeps of fresh slots (float32 on the CPU), or their size."""
    return (slots.detach().to("cpu", torch.float32), tokens) if load else (int(slots.shape[0]), tokens)
