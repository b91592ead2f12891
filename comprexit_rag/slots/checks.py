"""Checking a :class:`~comprexit_rag.slots.store.SlotStore` and repairing what a crash can leave.

:class:`StoreChecks` is the checking half of ``SlotStore``: quick checks by file size on open, full
checks by sha256 and tensor reads in :meth:`~StoreChecks.verify`, a once-per-process hash of each
shard on first read, and the repair that retires broken shards (their keys become missing) and
removes orphan and temporary files.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from ..durable import TMP_SUFFIX, sha256_file
from ..errors import CheckpointError
from .journal import (
    DISK_DTYPE,
    MANIFEST_VERSION,
    REPAIR_HINT,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    Entry,
    ShardRecord,
    storage_error,
)

logger = logging.getLogger(__name__)

# Shards whose size and sha256 matched their manifest line in this process: (resolved path, sha256).
_VERIFIED_SHARDS: set[tuple[str, str]] = set()
_VERIFIED_LOCK = threading.Lock()


class StoreChecks:
    """Verification and repair of a slot store (mixed into :class:`~comprexit_rag.slots.store.SlotStore`)."""

    def _check_once(self, shard: ShardRecord) -> None:
        """Check a shard's size and sha256 against its manifest line, once per shard and process.

        Bit rot that keeps the file's size (a flipped header byte, overwritten slots) would
        otherwise be served as slots and change answers silently. Hashing costs about a second
        per GB, paid once when a process first reads the shard.
        """
        path = self.path / shard.name
        token = (str(path.resolve()), shard.sha256)
        with _VERIFIED_LOCK:
            if token in _VERIFIED_SHARDS:
                return
        try:
            size = path.stat().st_size
            problem = f"it is {size} bytes, the manifest recorded {shard.nbytes}" if size != shard.nbytes else ""
            if not problem:
                digest = sha256_file(path)
                if digest != shard.sha256:
                    problem = f"its sha256 {digest[:12]}… is not the recorded {shard.sha256[:12]}… (corrupted in place)"
        except OSError as exc:
            problem = f"{exc.strerror or exc}"
        if problem:
            raise CheckpointError(f"cannot open shard {shard.name} in {self.path}: {problem}; {REPAIR_HINT}")
        with _VERIFIED_LOCK:
            _VERIFIED_SHARDS.add(token)

    def verify(self, *, repair: bool = False, quick: bool = False) -> list[str]:
        """Check the store and return a list of problems (empty when healthy).

        Checks that every committed shard exists, matches its recorded sha256 and holds every
        indexed entry in fp16 with the recorded shape; also reports manifest lines that were
        ignored, an incomplete manifest tail and orphan/temporary shard files left by an
        interrupted write (those are never served).

        Args:
            repair: also append ``drop`` lines retiring the broken shards (their keys become
                missing, so a resume recomputes them) and delete orphan and temporary files.
            quick: check shard files by existence and size only (a ``stat`` each) instead of
                hashing and reading them: catches what a crash or a full disk can leave (missing
                or truncated shards), not bit rot inside a file of the right size.
        """
        problems: list[str] = []
        with self._write_lock:
            self.refresh()
            with self._lock:
                shards = dict(self._shards)
                entries = dict(self._entries)
                problems.extend(self._bad_lines)
            broken = self._check_sizes(shards, problems) if quick else self._check_shards(shards, entries, problems)
            with contextlib.suppress(FileNotFoundError):
                tail = self.manifest_path.stat().st_size - self._manifest_offset
                if tail > 0:
                    problems.append(f"manifest ends with an incomplete line of {tail} bytes (ignored)")
            orphans = self._orphans(shards)
            problems.extend(
                f"orphan file {path.name} has no manifest line (interrupted write; ignored)" for path in orphans
            )
            if repair:
                try:
                    self._repair(broken)
                except OSError as exc:
                    raise storage_error(exc, f"repairing {self.path} failed; free space and retry") from exc
        for problem in problems:
            logger.warning("%s: %s", self.path, problem)
        return problems

    def _quick_check(self) -> list[str]:
        """Problems of the committed shard files found by ``stat`` alone (used on open)."""
        problems: list[str] = []
        with self._lock:
            shards = dict(self._shards)
        self._check_sizes(shards, problems)
        return problems

    def _check_sizes(self, shards: dict[str, ShardRecord], problems: list[str]) -> list[str]:
        broken: list[str] = []
        for name, shard in shards.items():
            try:
                size = (self.path / name).stat().st_size
            except FileNotFoundError:
                problems.append(f"shard {name} is missing")
                broken.append(name)
                continue
            if size != shard.nbytes:
                problems.append(f"shard {name} is truncated or corrupt: {size} bytes, recorded {shard.nbytes}")
                broken.append(name)
        return broken

    def _check_shards(
        self, shards: dict[str, ShardRecord], entries: dict[str, Entry], problems: list[str]
    ) -> list[str]:
        broken: list[str] = []
        live_keys: dict[str, list[str]] = {}
        for key, entry in entries.items():
            live_keys.setdefault(entry.shard, []).append(key)
        for name, shard in shards.items():
            path = self.path / name
            if not path.is_file():
                problems.append(f"shard {name} is missing")
                broken.append(name)
                continue
            digest = sha256_file(path)
            if digest != shard.sha256:
                problems.append(f"shard {name} is corrupt: sha256 {digest[:12]}… != recorded {shard.sha256[:12]}…")
                broken.append(name)
                continue
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    for key in live_keys.get(name, []):
                        entry = entries[key]
                        tensor = handle.get_tensor(key)
                        if tuple(tensor.shape) != (entry.rows, entry.cols) or tensor.dtype != DISK_DTYPE:
                            raise ValueError(
                                f"entry {key} is {tensor.dtype} {tuple(tensor.shape)}, "
                                f"expected {DISK_DTYPE} {(entry.rows, entry.cols)}"
                            )
                        if not bool(torch.isfinite(tensor).all()):
                            raise ValueError(f"entry {key} holds NaN or inf")
            except Exception as exc:  # safetensors raises several error types
                problems.append(f"shard {name} is unreadable: {exc}")
                broken.append(name)
        return broken

    def _orphans(self, committed: Iterable[str]) -> list[Path]:
        """Return temporary files and shard files not in ``committed``."""
        names = set(committed)
        out: list[Path] = []
        for path in sorted(self.path.iterdir()):
            temporary = path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
            uncommitted = (
                path.name.startswith(SHARD_PREFIX) and path.name.endswith(SHARD_SUFFIX) and path.name not in names
            )
            if temporary or uncommitted:
                out.append(path)
        return out

    def _repair(self, broken: list[str]) -> None:
        """Retire broken shards with ``drop`` lines and delete orphan files (write lock held).

        Runs under the manifest ``flock``, so a shard another process is committing is never
        mistaken for an orphan.
        """
        with self._manifest_locked() as fd:  # also truncates an incomplete tail
            for name in broken:
                drop = {"op": "drop", "v": MANIFEST_VERSION, "fingerprint": self.fingerprint, "shard": name}
                self._append_manifest(fd, drop)
                logger.info("retired broken shard %s of %s", name, self.path)
            with self._lock:
                live = set(self._shards)
            for path in self._orphans(live):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    logger.info("removed %s", path)
