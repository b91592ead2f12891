"""Opening data files that may or may not be gzip-compressed."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_GZIP_MAGIC = b"\x1f\x8b"

PathLike = str | os.PathLike[str]


def open_text(path: PathLike) -> IO[str]:
    """Open ``path`` for reading as UTF-8 text, decompressing gzip transparently."""
    path = Path(path)
    with path.open("rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def read_json(path: PathLike) -> Any:
    """Parse a whole (optionally gzipped) JSON file."""
    with open_text(path) as handle:
        return json.load(handle)


def iter_jsonl(path: PathLike) -> Iterator[Any]:
    """Yield one parsed object per non-blank line of a (optionally gzipped) JSON-lines file."""
    with open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
