"""The manifest of a :class:`~comprexit_rag.slots.store.SlotStore`: an append-only journal of committed shards.

:class:`ManifestJournal` is the journal half of ``SlotStore``: it reads lines appended since the last
read (by this process or another), applies ``shard`` and ``drop`` records to the in-memory index,
and appends a record under an exclusive ``flock`` with an fsync, rolling the line back on failure.
Only newline-terminated lines count; an incomplete tail (an interrupted write) is ignored on read and
truncated before the next append.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..durable import fsync_directory
from .journal import Entry, ShardRecord, shard_name

try:  # POSIX advisory locks serialise writers of different processes.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms: in-process locking only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class ManifestJournal:
    """Reading and appending the manifest (mixed into :class:`~comprexit_rag.slots.store.SlotStore`)."""

    def refresh(self) -> None:
        """Read manifest lines appended since the last read (e.g. by another process).

        Only newline-terminated lines count; an incomplete last line (interrupted write) is
        ignored and will be truncated by the next writer.
        """
        with self._write_lock, self._lock:
            try:
                with open(self.manifest_path, "rb") as handle:
                    handle.seek(self._manifest_offset)
                    data = handle.read()
            except FileNotFoundError:
                return
            end = data.rfind(b"\n") + 1
            for raw in data[:end].splitlines():
                self._apply_line(raw)
            self._manifest_offset += end
            if end < len(data):
                logger.warning(
                    "%s ends with an incomplete line (%d bytes, interrupted write); ignored",
                    self.manifest_path,
                    len(data) - end,
                )

    def _apply_line(self, raw: bytes) -> None:
        """Apply one complete manifest line to the in-memory index (lock held)."""
        if not raw.strip():
            return
        try:
            record = json.loads(raw)
            op = record["op"]
            if record["fingerprint"] != self.fingerprint:
                raise ValueError(f"line written for fingerprint {record['fingerprint']!r}")
            if op == "shard":
                self._apply_shard(record)
            elif op == "drop":
                self._apply_drop(shard_name(record["shard"]))
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"manifest line ignored ({exc}): {raw[:120]!r}"
            logger.warning("%s: %s", self.manifest_path, problem)
            self._bad_lines.append(problem)

    def _apply_shard(self, record: dict[str, Any]) -> None:
        name = shard_name(record["shard"])
        entries = [
            (str(item["key"]), int(item["shape"][0]), int(item["shape"][1]), int(item["tokens"]))
            for item in record["entries"]
        ]
        shard = ShardRecord(name, str(record["sha256"]), int(record["bytes"]), tuple(e[0] for e in entries))
        self._shards[name] = shard
        for key, rows, cols, tokens in entries:
            if key in self._entries:  # already committed elsewhere: first committed copy wins
                continue
            self._entries[key] = Entry(name, rows, cols, tokens)
            if self._hidden_size is None:
                self._hidden_size = cols

    def _apply_drop(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is None:
            return
        for key in shard.keys:
            entry = self._entries.get(key)
            if entry is not None and entry.shard == name:
                del self._entries[key]
        self._handles.pop(name, None)

    @contextlib.contextmanager
    def _manifest_locked(self) -> Iterator[int]:
        """Open the manifest for appending under an exclusive ``flock``, caught up and clean.

        Lines appended by other processes are applied first; an incomplete tail left by an
        interrupted writer is truncated so that the next line starts on a fresh line.
        """
        created = not self.manifest_path.exists()
        fd = os.open(self.manifest_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                fsync_directory(self.path)
            self.refresh()
            size = os.fstat(fd).st_size
            if size > self._manifest_offset:
                logger.warning(
                    "truncating %d bytes of an interrupted manifest write in %s",
                    size - self._manifest_offset,
                    self.manifest_path,
                )
                os.ftruncate(fd, self._manifest_offset)
                os.fsync(fd)
            yield fd
        finally:
            os.close(fd)  # also releases the flock

    def _append_manifest(self, fd: int, record: dict[str, Any]) -> None:
        """Append one JSON line at the known end of the manifest and fsync it, then apply it.

        On failure the manifest is truncated back to its previous length, so the line is not
        visible; if even that fails, the line lacks its newline or its shard stays in place.
        """
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        start = self._manifest_offset
        try:
            view = memoryview(line)
            offset = start
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                logger.exception("could not roll back the manifest line of %s", self.manifest_path)
            raise
        with self._lock:
            self._apply_line(line.rstrip(b"\n"))
            self._manifest_offset = start + len(line)
