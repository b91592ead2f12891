"""Durable writes: after a crash or a power loss a file holds its old content or its new one, never half.

Every file the library must not lose or tear (checkpoints, slot shards, the retriever's state, the
pipeline record, training state) is written with one rule: write a temporary file in the target's
directory, flush and ``fsync`` it, rename it over the target (atomic on POSIX), then ``fsync`` the
directory so that the rename itself is on disk. Temporary files are hidden (``.<name>.<random>.tmp``)
and removed when a write fails. A file system that cannot ``fsync`` a directory (``EINVAL``,
``ENOTSUP``, ``EBADF``) is tolerated; any other error is raised.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "atomic_write_json",
    "fsync_directory",
    "fsync_file",
    "sha256_file",
    "write_new",
]

TMP_SUFFIX = ".tmp"
_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)  # some file systems cannot fsync a directory


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the creation, rename or removal of files in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file another library wrote (safetensors, faiss, torch) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it; the file is removed on failure."""
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


def temporary_path(path: Path) -> Path:
    """A hidden, unique name beside ``path`` for its next version."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike[str], content: bytes | Callable[[Path], object]) -> Path:
    """Replace ``path`` with ``content`` durably: bytes, or a function that writes the file it is given.

    On failure the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        if isinstance(content, bytes | bytearray | memoryview):
            write_new(tmp, bytes(content))
        else:
            content(tmp)
            fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``payload`` as UTF-8 JSON, newline-terminated when indented."""
    text = json.dumps(payload, indent=indent) + ("\n" if indent is not None else "")
    return atomic_write(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in chunks (what checksums of shards and converted weights compare)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
