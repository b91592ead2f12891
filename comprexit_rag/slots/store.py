"""Persistent, crash-safe store of per-passage soft slots.

Slots are computed once per passage at indexing time by a compressor head and reused for
every query, so they are stored on disk keyed by ``(passage content hash, head fingerprint)``
(:mod:`comprexit_rag.slots.keys`).

Layout of a store directory (one sub-directory per head fingerprint)::

    <directory>/
        head-<sha256(fingerprint)[:24]>/
            fingerprint.json          # the full fingerprint, for humans and tools
            manifest.jsonl            # append-only journal: one JSON line per committed shard
            shard-<time>-<uuid>.safetensors

Commit protocol of one shard (see :meth:`SlotStore.put_many`):

1. serialise the fp16 tensors, write them to a hidden temporary file, ``fsync`` it;
2. ``os.replace`` the temporary file to its final, unique shard name, ``fsync`` the directory;
3. append one newline-terminated JSON line (keys, shapes, token counts, shard sha256) to the
   manifest and ``fsync`` it.

An entry is visible only once its manifest line is complete, so a crash at any point leaves
the store consistent: a shard without a manifest line is an *orphan* that is ignored (and that
``verify(repair=True)`` deletes), and an incomplete last manifest line is ignored on open and
truncated before the next append. The journal also holds ``drop`` lines, appended by
``verify(repair=True)`` to retire a corrupt shard so that its keys become missing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open

from ..durable import atomic_write
from ..errors import CheckpointError, InvalidInputError
from .checks import StoreChecks
from .journal import (
    DISK_DTYPE,
    FINGERPRINT_NAME,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    REPAIR_HINT,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    Chunk,
    Entry,
    ShardRecord,
    fingerprint_dirname,
    fp16_slots,
    split_chunks,
    storage_error,
)
from .keyed import KeyedSlots
from .manifest import ManifestJournal

logger = logging.getLogger(__name__)

__all__ = ["DISK_DTYPE", "SlotStore"]


class SlotStore(KeyedSlots, ManifestJournal, StoreChecks):
    """Persistent store of per-passage slot tensors for one compressor head.

    Args:
        directory: root directory; it may hold the slots of several heads.
        fingerprint: opaque string identifying the compressor head (weights, backbone,
            config). A store never returns slots written under another fingerprint.
        max_open_shards: size of the LRU cache of open (memory-mapped) shard handles.
        max_shard_bytes: a ``put_many`` call whose fp16 payload exceeds this is split into
            several shards, each committed on its own.

    Opening reads the manifest and checks that every committed shard file exists with its
    recorded size (a cheap ``stat`` per shard); problems are logged as warnings and kept in
    :attr:`open_problems` (``verify(repair=True)``, which :meth:`RAGPipeline.index
    <comprexit_rag.rag.pipeline.RAGPipeline.index>` runs on every resume, retires the broken shards
    so that their passages are recomputed). Shard files are opened lazily on ``get_many``. The
    store is safe for concurrent readers and writers within a process (writers are
    serialised) and for writers of several processes on POSIX (``flock`` on the manifest).
    Writes of other processes become visible after :meth:`refresh` or the next write.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fingerprint: str,
        *,
        max_open_shards: int = 16,
        max_shard_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InvalidInputError("fingerprint must be a non-empty string identifying the head")
        if max_open_shards < 1:
            raise InvalidInputError(f"max_open_shards must be >= 1, got {max_open_shards}")
        if max_shard_bytes < 1:
            raise InvalidInputError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.root = Path(directory)
        self.fingerprint = fingerprint
        self.path = self.root / fingerprint_dirname(fingerprint)
        self.manifest_path = self.path / MANIFEST_NAME
        self.max_open_shards = max_open_shards
        self.max_shard_bytes = max_shard_bytes

        self._lock = threading.RLock()  # guards the in-memory index and the handle cache
        self._write_lock = threading.RLock()  # serialises writers (and manifest reads) of this process
        self._entries: dict[str, Entry] = {}
        self._shards: dict[str, ShardRecord] = {}
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._manifest_offset = 0  # end of the last complete manifest line read
        self._bad_lines: list[str] = []
        self._hidden_size: int | None = None

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_fingerprint_file()
        except OSError as exc:
            raise storage_error(exc, f"cannot create the slot store in {self.path}") from exc
        self.refresh()
        self.open_problems: list[str] = self._quick_check()
        if self.open_problems:
            logger.warning(
                "%s: %d problem(s) found on open (%s); run SlotStore.verify(repair=True) or rerun "
                "`comprexit-rag index` to retire the broken shards and recompute their passages",
                self.path,
                len(self.open_problems),
                "; ".join(self.open_problems[:3]),
            )

    # ------------------------------------------------------------------ opening

    def _write_fingerprint_file(self) -> None:
        target = self.path / FINGERPRINT_NAME
        if target.exists():
            try:
                recorded = json.loads(target.read_text(encoding="utf-8"))["fingerprint"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"{target} is corrupt ({exc!r}); it only names the head fingerprint: delete it and reopen"
                ) from exc
            if recorded != self.fingerprint:
                raise CheckpointError(
                    f"{self.path} holds slots of fingerprint {recorded!r}, not {self.fingerprint!r} "
                    "(sha256 prefix collision?); use another directory"
                )
            return
        atomic_write(target, json.dumps({"fingerprint": self.fingerprint}).encode("utf-8"))

    # ------------------------------------------------------------------ reading

    @property
    def hidden_size(self) -> int | None:
        """Width H of the stored slots, or ``None`` while the store is empty."""
        with self._lock:
            return self._hidden_size

    def token_count(self, key: str) -> int:
        """Return the passage token count recorded with ``key``; ``KeyError`` if absent."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise KeyError(key)
        return entry.tokens

    def shape(self, key: str) -> tuple[int, int]:
        """Return the recorded ``(S, H)`` shape of the slots of ``key``; ``KeyError`` if absent."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise KeyError(key)
        return entry.rows, entry.cols

    def get(self, key: str) -> torch.Tensor | None:
        """Return the float32 slots of one key, or ``None`` if absent."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        """Return float32 slot tensors ``[S, H]`` for ``keys`` (``None`` for absent keys).

        Raises:
            CheckpointError: a committed shard is missing or unreadable; run
                ``verify(repair=True)`` and recompute the keys it reports.
        """
        return [None if found is None else found[0] for found in self.lookup(keys)]

    def lookup(self, keys: Sequence[str]) -> list[tuple[torch.Tensor, int] | None]:
        """``(float32 slots [S, H], token count)`` of each key, ``None`` where absent (see :meth:`get_many`)."""
        with self._lock:
            located = [self._entries.get(key) for key in keys]
            handles = {e.shard: self._handle(e.shard) for e in located if e is not None}
        out: list[tuple[torch.Tensor, int] | None] = []
        for key, entry in zip(keys, located, strict=True):
            if entry is None:
                out.append(None)
                continue
            try:
                tensor = handles[entry.shard].get_tensor(key)
            except Exception as exc:  # safetensors raises several error types
                raise CheckpointError(
                    f"cannot read slots of {key} from shard {entry.shard} in {self.path}: {exc}; {REPAIR_HINT}"
                ) from exc
            if tuple(tensor.shape) != (entry.rows, entry.cols):
                raise CheckpointError(
                    f"slots of {key} in shard {entry.shard} have shape {tuple(tensor.shape)}, manifest "
                    f"says {(entry.rows, entry.cols)}; run SlotStore.verify(repair=True)"
                )
            out.append((tensor.to(torch.float32), entry.tokens))
        return out

    def sizes(self, keys: Sequence[str]) -> list[tuple[int, int] | None]:
        """``(slots, token count)`` of each key, ``None`` where absent; reads no tensor."""
        with self._lock:
            located = [self._entries.get(key) for key in keys]
        return [None if entry is None else (entry.rows, entry.tokens) for entry in located]

    def _handle(self, name: str) -> Any:
        """Return a cached ``safe_open`` handle of a shard (lock held), checked on its first use."""
        handle = self._handles.get(name)
        if handle is not None:
            self._handles.move_to_end(name)
            return handle
        self._check_once(self._shards[name])
        try:
            handle = safe_open(str(self.path / name), framework="pt", device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot open shard {name} in {self.path}: {exc}; {REPAIR_HINT}") from exc
        self._handles[name] = handle
        while len(self._handles) > self.max_open_shards:
            self._handles.popitem(last=False)
        return handle

    def size_on_disk(self) -> int:
        """Bytes used by the committed, live shards plus the manifest."""
        with self._lock:
            total = sum(shard.nbytes for shard in self._shards.values())
        with contextlib.suppress(FileNotFoundError):
            total += self.manifest_path.stat().st_size
        return total

    # ------------------------------------------------------------------ writing

    def put_many(self, keys: Sequence[str], slots: Sequence[torch.Tensor], token_counts: Sequence[int]) -> list[str]:
        """Store the slots of several passages; return the keys actually written.

        Keys already in the store (or repeated within the call) are skipped, so re-putting
        is a no-op. Tensors must be 2-D ``[S, H]`` with ``S >= 1``, finite and within the
        fp16 range; they are stored as fp16. The payload is committed as one shard (several
        when it exceeds ``max_shard_bytes``); each shard becomes visible atomically.

        Raises:
            InvalidInputError: (a ``ValueError``) on mismatched lengths, a non-2-D, empty,
                NaN/inf or out-of-fp16-range tensor, a hidden size different from the stored
                one, or a bad token count. Nothing is written then.
            StorageError: (an ``OSError``) the write failed (e.g. disk full); shards committed
                by earlier chunks of this call stay, the failing one leaves no trace.
        """
        if not len(keys) == len(slots) == len(token_counts):
            raise InvalidInputError(
                f"put_many needs as many keys, slots and token counts; got {len(keys)}, "
                f"{len(slots)}, {len(token_counts)}"
            )
        with self._write_lock:
            self.refresh()
            with self._lock:
                hidden = self._hidden_size
                fresh: Chunk = {}
                for key, tensor, tokens in zip(keys, slots, token_counts, strict=True):
                    if not isinstance(key, str) or not key:
                        raise InvalidInputError(f"slot keys must be non-empty strings, got {key!r}")
                    if key in self._entries or key in fresh:
                        continue
                    half = fp16_slots(key, tensor, tokens, hidden)
                    hidden = half.shape[1]
                    fresh[key] = (half, operator.index(tokens))
            written: list[str] = []
            for chunk in split_chunks(fresh, self.max_shard_bytes):
                try:
                    self._commit_shard(chunk)
                except OSError as exc:
                    raise storage_error(
                        exc,
                        f"writing slots of {len(chunk)} passages to {self.path} failed; nothing of this shard "
                        f"was committed ({len(written)} passages of this call were); free space and rerun "
                        "the same command to resume",
                    ) from exc
                written.extend(chunk)
            if written:
                logger.debug("stored slots of %d passages in %s", len(written), self.path)
            return written

    def _commit_shard(self, chunk: Chunk) -> None:
        """Write one shard and its manifest line (write lock held); all or nothing."""
        name = f"{SHARD_PREFIX}{time.time_ns():x}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
        payload = safetensors.torch.save(
            {key: half for key, (half, _) in chunk.items()},
            metadata={"fingerprint": self.fingerprint, "format": "comprexit-slots-v1"},
        )
        record = {
            "op": "shard",
            "v": MANIFEST_VERSION,
            "fingerprint": self.fingerprint,
            "shard": name,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "entries": [
                {"key": key, "shape": list(half.shape), "tokens": tokens} for key, (half, tokens) in chunk.items()
            ],
        }
        final = self.path / name
        with self._manifest_locked() as fd:
            try:
                atomic_write(final, payload)  # removes its temporary file itself on failure
            except BaseException:
                final.unlink(missing_ok=True)  # renamed, but the rename may not be durable
                raise
            try:
                self._append_manifest(fd, record)
            except BaseException:
                if os.fstat(fd).st_size <= self._manifest_offset:  # line rolled back: drop shard
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(final)
                raise

    def close(self) -> None:
        """Drop the cached shard handles (the store stays usable; they reopen lazily)."""
        with self._lock:
            self._handles.clear()

    def __enter__(self) -> SlotStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SlotStore({str(self.root)!r}, fingerprint={self.fingerprint!r}, entries={len(self)})"

    @staticmethod
    def fingerprints(directory: str | os.PathLike[str]) -> list[str]:
        """Return the head fingerprints that have a sub-directory under ``directory``."""
        root = Path(directory)
        found: list[str] = []
        if not root.is_dir():
            return found
        for child in sorted(root.iterdir()):
            marker = child / FINGERPRINT_NAME
            if marker.is_file():
                try:
                    found.append(json.loads(marker.read_text(encoding="utf-8"))["fingerprint"])
                except (ValueError, KeyError, TypeError):
                    logger.warning("%s is corrupt; skipped", marker)
        return found
