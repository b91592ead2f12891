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
import errno
import hashlib
import json
import logging
import operator
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open

from comprexit_rag.errors import CheckpointError, InvalidInputError, StorageError

try:  # POSIX advisory locks serialise writers of different processes.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms: in-process locking only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["DISK_DTYPE", "SlotStore"]

MANIFEST_NAME = "manifest.jsonl"
FINGERPRINT_NAME = "fingerprint.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
MANIFEST_VERSION = 1
DISK_DTYPE = torch.float16
_FP16_MAX = float(torch.finfo(torch.float16).max)

_Chunk = dict[str, tuple[torch.Tensor, int]]  # key -> (fp16 slots, token count), insertion-ordered


def fingerprint_dirname(fingerprint: str) -> str:
    """Return the sub-directory name holding the slots of one head fingerprint."""
    return "head-" + hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one committed slot tensor lives and what it looks like."""

    shard: str
    rows: int
    cols: int
    tokens: int


@dataclass(frozen=True, slots=True)
class _ShardRecord:
    """One committed shard as recorded in the manifest."""

    name: str
    sha256: str
    nbytes: int
    keys: tuple[str, ...]


def _fsync_dir(directory: Path) -> None:
    """Make a rename or file creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it; remove the file on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class SlotStore:
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
    <comprexit_rag.pipeline.RAGPipeline.index>` runs on every resume, retires the broken shards
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
        self._entries: dict[str, _Entry] = {}
        self._shards: dict[str, _ShardRecord] = {}
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._manifest_offset = 0  # end of the last complete manifest line read
        self._bad_lines: list[str] = []
        self._hidden_size: int | None = None

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_fingerprint_file()
        except OSError as exc:
            raise _storage_error(exc, f"cannot create the slot store in {self.path}") from exc
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
        tmp = self.path / f".{FINGERPRINT_NAME}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        _write_durably(tmp, json.dumps({"fingerprint": self.fingerprint}).encode("utf-8"))
        os.replace(tmp, target)
        _fsync_dir(self.path)

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
                self._apply_drop(_shard_name(record["shard"]))
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"manifest line ignored ({exc}): {raw[:120]!r}"
            logger.warning("%s: %s", self.manifest_path, problem)
            self._bad_lines.append(problem)

    def _apply_shard(self, record: dict[str, Any]) -> None:
        name = _shard_name(record["shard"])
        entries = [
            (str(item["key"]), int(item["shape"][0]), int(item["shape"][1]), int(item["tokens"]))
            for item in record["entries"]
        ]
        shard = _ShardRecord(name, str(record["sha256"]), int(record["bytes"]), tuple(e[0] for e in entries))
        self._shards[name] = shard
        for key, rows, cols, tokens in entries:
            if key in self._entries:  # already committed elsewhere: first committed copy wins
                continue
            self._entries[key] = _Entry(name, rows, cols, tokens)
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

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._entries))

    @property
    def hidden_size(self) -> int | None:
        """Width H of the stored slots, or ``None`` while the store is empty."""
        with self._lock:
            return self._hidden_size

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Return the keys not in the store, in input order, without duplicates."""
        with self._lock:
            return list(dict.fromkeys(k for k in keys if k not in self._entries))

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
                    f"cannot read slots of {key} from shard {entry.shard} in {self.path}: {exc}; {_REPAIR_HINT}"
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
            raise CheckpointError(f"cannot open shard {name} in {self.path}: {exc}; {_REPAIR_HINT}") from exc
        self._handles[name] = handle
        while len(self._handles) > self.max_open_shards:
            self._handles.popitem(last=False)
        return handle

    def _check_once(self, shard: _ShardRecord) -> None:
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
                digest = _sha256_file(path)
                if digest != shard.sha256:
                    problem = f"its sha256 {digest[:12]}… is not the recorded {shard.sha256[:12]}… (corrupted in place)"
        except OSError as exc:
            problem = f"{exc.strerror or exc}"
        if problem:
            raise CheckpointError(f"cannot open shard {shard.name} in {self.path}: {problem}; {_REPAIR_HINT}")
        with _VERIFIED_LOCK:
            _VERIFIED_SHARDS.add(token)

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
                fresh: _Chunk = {}
                for key, tensor, tokens in zip(keys, slots, token_counts, strict=True):
                    if not isinstance(key, str) or not key:
                        raise InvalidInputError(f"slot keys must be non-empty strings, got {key!r}")
                    if key in self._entries or key in fresh:
                        continue
                    half = self._validate(key, tensor, tokens, hidden)
                    hidden = half.shape[1]
                    fresh[key] = (half, operator.index(tokens))
            written: list[str] = []
            for chunk in self._chunks(fresh):
                try:
                    self._commit_shard(chunk)
                except OSError as exc:
                    raise _storage_error(
                        exc,
                        f"writing slots of {len(chunk)} passages to {self.path} failed; nothing of this shard "
                        f"was committed ({len(written)} passages of this call were); free space and rerun "
                        "the same command to resume",
                    ) from exc
                written.extend(chunk)
            if written:
                logger.debug("stored slots of %d passages in %s", len(written), self.path)
            return written

    @staticmethod
    def _validate(key: str, tensor: torch.Tensor, tokens: int, hidden: int | None) -> torch.Tensor:
        """Check one slot tensor and return its contiguous fp16 CPU copy."""
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(f"slots of {key} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise InvalidInputError(f"slots of {key} must be 2-D [S, H], got shape {tuple(tensor.shape)}")
        if tensor.shape[0] < 1 or tensor.shape[1] < 1:
            raise InvalidInputError(f"slots of {key} are empty: shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise InvalidInputError(f"slots of {key} must be a float tensor, got {tensor.dtype}")
        if hidden is not None and tensor.shape[1] != hidden:
            raise InvalidInputError(
                f"slots of {key} have hidden size {tensor.shape[1]}, the store holds hidden size {hidden} "
                "for this fingerprint; a different head needs a different fingerprint"
            )
        try:
            count = operator.index(tokens)
        except TypeError:
            count = -1
        if isinstance(tokens, bool) or count < 0:
            raise InvalidInputError(f"token count of {key} must be a non-negative int, got {tokens!r}")
        detached = tensor.detach().to("cpu")
        if not bool(torch.isfinite(detached).all()):
            raise InvalidInputError(f"slots of {key} contain NaN or inf; refusing to store them")
        half = detached.to(DISK_DTYPE).contiguous()
        if not bool(torch.isfinite(half).all()):
            raise InvalidInputError(
                f"slots of {key} exceed the fp16 range (|x| > {_FP16_MAX:g}); refusing to store them"
            )
        return half

    def _chunks(self, fresh: _Chunk) -> Iterator[_Chunk]:
        chunk: _Chunk = {}
        size = 0
        for key, (half, tokens) in fresh.items():
            nbytes = half.numel() * half.element_size()
            if chunk and size + nbytes > self.max_shard_bytes:
                yield chunk
                chunk, size = {}, 0
            chunk[key] = (half, tokens)
            size += nbytes
        if chunk:
            yield chunk

    def _commit_shard(self, chunk: _Chunk) -> None:
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
        tmp = self.path / f".{name}{TMP_SUFFIX}"
        with self._manifest_locked() as fd:
            _write_durably(tmp, payload)  # removes tmp itself on failure
            try:
                os.replace(tmp, final)
                _fsync_dir(self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final)
                raise
            try:
                self._append_manifest(fd, record)
            except BaseException:
                if os.fstat(fd).st_size <= self._manifest_offset:  # line rolled back: drop shard
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(final)
                raise

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
                _fsync_dir(self.path)
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

    # ------------------------------------------------------------------ checking

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
                    raise _storage_error(exc, f"repairing {self.path} failed; free space and retry") from exc
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

    def _check_sizes(self, shards: dict[str, _ShardRecord], problems: list[str]) -> list[str]:
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
        self, shards: dict[str, _ShardRecord], entries: dict[str, _Entry], problems: list[str]
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
            digest = _sha256_file(path)
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


_REPAIR_HINT = (
    "run SlotStore.verify(repair=True) to retire it and recompute the missing keys (for a pipeline: "
    "`comprexit-rag index CORPUS --out DIR --verify`, which repairs the store and recompresses them)"
)

# Shards whose size and sha256 matched their manifest line in this process: (resolved path, sha256).
_VERIFIED_SHARDS: set[tuple[str, str]] = set()
_VERIFIED_LOCK = threading.Lock()
_SHARD_NAME = re.compile(r"shard-[0-9a-f]+-[0-9a-f]{12}\.safetensors")


def _shard_name(name: object) -> str:
    """A manifest's shard name, refused unless it is a bare shard file name of the store's directory."""
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
        raise ValueError(f"shard name {name!r} is not a shard file of this directory")
    return name


def _storage_error(exc: OSError, what: str) -> StorageError:
    """A :class:`StorageError` carrying ``exc``'s errno and both messages."""
    if isinstance(exc, StorageError):
        return exc
    reason = exc.strerror or str(exc)
    return StorageError(exc.errno or errno.EIO, f"{reason}: {what}")
