"""The on-disk layout of a :class:`~comprexit_rag.rag.pipeline.RAGPipeline` directory: its record, its lock.

A pipeline lives in one directory::

    <directory>/
        pipeline.json      # PipelineRecord: format version, backbone, head ("default" or a path), ratio
        retriever/         # DenseRetriever.save
        slots/             # SlotStore, one sub-directory per head fingerprint and ratio
        head/              # only when built from a head instance: that head
        untrained-head/    # only while no trained default head is shipped (see load_head_or_untrained)
        .index.lock        # held (flock) by the one index run allowed at a time

``pipeline.json`` is written durably (:mod:`comprexit_rag.durable`): a crash leaves the old record or
the new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks keep two index runs off one directory.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None  # type: ignore[assignment]

from ..checkpoint import read_json_object
from ..durable import atomic_write_json
from ..errors import CheckpointError, IndexBusyError, InvalidInputError, StorageError

PIPELINE_FILE = "pipeline.json"
INDEX_LOCK = ".index.lock"
PIPELINE_FORMAT = "comprexit-rag-pipeline"
PIPELINE_VERSION = 1
RETRIEVER_DIR = "retriever"
SLOTS_DIR = "slots"
HEAD_DIR = "head"
UNTRAINED_HEAD_DIR = "untrained-head"


class PipelineExistsError(InvalidInputError):
    """:meth:`RAGPipeline.build <comprexit_rag.rag.pipeline.RAGPipeline.build>` on a directory that holds a
    pipeline (``open`` then loads it)."""

    def __init__(self, message: str, backbone: Any = None) -> None:
        super().__init__(message)
        self.backbone = backbone  # already loaded: open() reuses it instead of loading it twice


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


@dataclass(frozen=True, kw_only=True)
class PipelineRecord:
    """What ``pipeline.json`` holds: how to load a pipeline's parts again, and what its slots were made with.

    Attributes:
        backbone: ``"default"`` (the embedded SmolLM2), a Hugging Face name or local path, or ``None``
            for an in-memory backbone (pass the same ``backbone=`` to load the pipeline).
        backbone_name: the backbone's name, for messages.
        backbone_fingerprint: :attr:`BackboneFingerprint.digest <comprexit_rag.backbone.BackboneFingerprint.digest>`
            (the layout digest in pipelines saved before the fingerprint covered the weights).
        head: ``"default"`` (the shipped head), ``"head"`` (a copy inside the directory) or a path.
        head_fingerprint: the compressor fingerprint its stored slots are keyed by.
        ratio: the compression ratio of the stored slots.
        embedder: the retriever's embedder name.
        comi_merger: the COMI merger's path given at build time, if any.
    """

    backbone: str | None
    backbone_name: str = ""
    backbone_fingerprint: str
    head: str
    head_fingerprint: str | None = None
    ratio: int
    embedder: str | None = None
    comi_merger: str | None = None

    @classmethod
    def read(cls, directory: Path) -> PipelineRecord:
        """The record in ``directory``; a typed error for a missing, corrupt or foreign file.

        Files written by earlier versions load: the optional keys may be absent, unknown ones are ignored.
        """
        path = directory / PIPELINE_FILE
        if directory.exists() and not directory.is_dir():
            raise InvalidInputError(f"{directory} is a file, not a pipeline directory.")
        if not path.is_file():
            raise InvalidInputError(
                f"{directory} holds no pipeline (no {PIPELINE_FILE}); build one with `index` first."
            )
        values = read_json_object(path, "the pipeline record", "restore it or rebuild the pipeline")
        if values.get("format") != PIPELINE_FORMAT or values.get("version") != PIPELINE_VERSION:
            raise InvalidInputError(
                f"{path} is not a {PIPELINE_FORMAT} v{PIPELINE_VERSION} file "
                f"(format={values.get('format')!r}, version={values.get('version')!r})."
            )
        missing = [key for key in ("backbone", "backbone_fingerprint", "head", "ratio") if key not in values]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}; rebuild the pipeline.")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def write(self, directory: Path) -> None:
        """Replace ``directory/pipeline.json`` durably (a crash leaves the old record or this one)."""
        atomic_write_json(directory / PIPELINE_FILE, self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, **asdict(self)}
