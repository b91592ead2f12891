"""The on-disk layout of a :class:`~comprexit_rag.pipeline.RAGPipeline` directory: its record, its lock.

See the layout in :mod:`comprexit_rag.pipeline`. ``pipeline.json`` is written atomically (a temporary
file, fsync, rename), so a crash leaves the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks keep two index runs off one directory.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None  # type: ignore[assignment]

from .errors import CheckpointError, IndexBusyError, InvalidInputError, StorageError

PIPELINE_FILE = "pipeline.json"
INDEX_LOCK = ".index.lock"
PIPELINE_FORMAT = "comprexit-rag-pipeline"
PIPELINE_VERSION = 1
RETRIEVER_DIR = "retriever"
SLOTS_DIR = "slots"
HEAD_DIR = "head"
UNTRAINED_HEAD_DIR = "untrained-head"


@contextlib.contextmanager
def index_lock(directory: Path) -> Iterator[None]:
    """Hold the directory's index lock (exclusive, non-blocking; the OS drops it if the process dies).

    Two concurrent ``index`` runs on one directory would each save the retriever with only the
    passages they know, and the last save would drop the other's; the slot store is safe either way.
    """
    if fcntl is None:  # pragma: no cover - non-POSIX: no inter-process exclusion
        yield
        return
    try:
        fd = os.open(directory / INDEX_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StorageError(
            error.errno or 5, f"{error.strerror or error}: cannot create {directory / INDEX_LOCK}; is it writable?"
        ) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise IndexBusyError(
                f"Another index run (another process or thread) is indexing {directory}; wait for it to finish "
                "and rerun: what it has committed is kept and the rerun resumes."
            ) from error
        yield
    finally:
        os.close(fd)  # also releases the lock


def make_pipeline_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents), with typed errors for a file in the way."""
    for part in (directory, *directory.parents):
        if part.exists() and not part.is_dir():
            where = "is" if part == directory else f"lies under {part}, which is"
            raise InvalidInputError(
                f"{directory} {where} a file, not a directory; pass a directory for the pipeline (--out)."
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(
            error.errno or 5, f"{error.strerror or error}: cannot create the pipeline directory {directory}"
        ) from error


def read_record(directory: Path) -> dict[str, Any]:
    path = directory / PIPELINE_FILE
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory} is a file, not a pipeline directory.")
    if not path.is_file():
        raise InvalidInputError(f"{directory} holds no pipeline (no {PIPELINE_FILE}); build one with `index` first.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(record).__name__}, not the pipeline record (an object); "
            "restore it or rebuild the pipeline."
        )
    if record.get("format") != PIPELINE_FORMAT or record.get("version") != PIPELINE_VERSION:
        raise InvalidInputError(
            f"{path} is not a {PIPELINE_FORMAT} v{PIPELINE_VERSION} file "
            f"(format={record.get('format')!r}, version={record.get('version')!r})."
        )
    missing = [key for key in ("backbone", "backbone_fingerprint", "head", "ratio") if key not in record]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; rebuild the pipeline.")
    return record


def atomic_write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
