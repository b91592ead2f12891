"""The teacher-QA file: kept pairs as JSON lines, committed batch by batch by a manifest beside it.

The manifest (:func:`manifest_path`) holds the teacher's identity, the source, the generation settings, the
counts kept and dropped (by reason) and how many bytes of the JSONL are committed. Each batch is appended and
fsynced, then the manifest is replaced atomically (:func:`commit_batch`): a kill loses at most the batch in
flight, and a rerun cuts the file back to its committed bytes (:func:`open_for_append`). Readers read only
what the manifest committed (:func:`read_teacher_qa`). The pairs are made in :mod:`.teacher_qa`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import Passage, QAExample
from ..durable import atomic_write_json, fsync_directory
from ..errors import InvalidInputError

__all__ = ["FORMAT", "commit_batch", "manifest_path", "open_for_append", "read_manifest", "read_teacher_qa"]

logger = logging.getLogger(__name__)

FORMAT = "comprexit-rag teacher-qa"


def manifest_path(out: str | os.PathLike) -> Path:
    """The manifest beside a teacher-QA file: ``pairs.jsonl`` -> ``pairs.manifest.json``."""
    return Path(out).with_suffix(".manifest.json")


def open_for_append(out: Path, identity: dict[str, Any], drop_reasons: Iterable[str]) -> dict[str, Any]:
    """The manifest to go on from, with ``out`` cut back to its committed bytes; a new one for a new file."""
    manifest = read_manifest(out)
    if manifest is None:
        if out.exists() and out.stat().st_size:
            raise InvalidInputError(
                f"{out} exists but has no manifest {manifest_path(out).name}: it was not written by "
                "`comprexit-rag teacher-qa`. Pass another --out, or delete the file."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest = {**identity, "passages_read": 0, "kept": 0, "dropped": dict.fromkeys(drop_reasons, 0)}
        manifest |= {"records_bytes": 0, "seconds": 0.0}
        atomic_write_json(manifest_path(out), manifest)  # before the first append: a file is never without one
        out.write_bytes(b"")
        fsync_directory(out.parent)
        return manifest
    differ = {key: (manifest.get(key), value) for key, value in identity.items() if manifest.get(key) != value}
    if differ:
        found = "; ".join(f"{key} {was!r} (this run: {now!r})" for key, (was, now) in differ.items())
        raise InvalidInputError(
            f"{out} holds pairs made with {found}. Refusing to append: pass another --out for a new file, or the "
            "teacher, source and settings it was made with to extend it."
        )
    committed = manifest["records_bytes"]
    size = out.stat().st_size if out.exists() else 0
    if size < committed:
        raise InvalidInputError(
            f"{out} holds {size} bytes but its manifest committed {committed}: it was cut or replaced. "
            f"Delete {out} and {manifest_path(out).name} and rerun."
        )
    if not out.exists():  # nothing was committed yet
        out.write_bytes(b"")
    elif size > committed:  # a batch appended by a run killed before its commit
        logger.info("%s: dropping %d uncommitted bytes (a batch in flight when it stopped)", out, size - committed)
        os.truncate(out, committed)
    logger.info("%s: resuming after %d passages (%d pairs kept)", out, manifest["passages_read"], manifest["kept"])
    return manifest


def commit_batch(
    out: Path, manifest: dict[str, Any], records: list[dict], passages: int, dropped: Counter[str], seconds: float
) -> None:
    """Append one batch's kept records to ``out``, fsync them, then commit them (and its counts) in the manifest."""
    with out.open("ab") as handle:  # appended past the committed bytes: uncommitted until the manifest says so
        handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode())
        handle.flush()
        os.fsync(handle.fileno())
        manifest["records_bytes"] = handle.tell()
    manifest["passages_read"] += passages
    manifest["kept"] += len(records)
    for reason, count in dropped.items():
        manifest["dropped"][reason] += count
    manifest["seconds"] = round(manifest["seconds"] + seconds, 2)
    atomic_write_json(manifest_path(out), manifest)  # the commit


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path} is not valid JSON ({error}); delete it and {out} and rerun.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidInputError(f"{path} is not a teacher-QA manifest; pass another --out.")
    return manifest


def read_teacher_qa(path: str | os.PathLike) -> list[QAExample]:
    """The committed pairs of a teacher-QA file as single-passage QA examples (the teacher's answer as gold).

    Reads only what the manifest committed, so a file still being extended can be read.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None or not path.is_file():
        raise InvalidInputError(
            f"{path} is not a teacher-QA file (it needs {manifest_path(path).name} beside it); write one with "
            "`comprexit-rag teacher-qa --out FILE`."
        )
    with path.open("rb") as handle:
        lines = handle.read(manifest["records_bytes"]).decode("utf-8").splitlines()
    examples = []
    for line in lines:
        record = json.loads(line)
        passage = Passage(text=record["text"], title=record["title"], id=record["id"])
        examples.append(
            QAExample(
                id=f"teacher/{record['id']}",
                question=record["question"],
                answers=(record["answer"],),
                passages=(passage,),
                supporting=(0,),
            )
        )
    if not examples:
        raise InvalidInputError(
            f"{path} holds no pair yet; extend it with `comprexit-rag teacher-qa` (a larger --limit)."
        )
    return examples
