"""Locating the shared data directory (``shared/data``) without hard-coding machine paths."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from comprexit_rag.errors import ComprExITError

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "COMPREXIT_DATA"
_RELATIVE_DATA_DIR = Path("shared") / "data"


class DataNotFoundError(ComprExITError, FileNotFoundError):
    """The data directory or one of its files could not be found."""


def _candidates(start: Path) -> Iterator[Path]:
    """``shared/data`` inside ``start`` and inside each of its ancestors."""
    start = start.resolve()
    for directory in (start, *start.parents):
        yield directory / _RELATIVE_DATA_DIR


def data_root(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory.

    Resolution order: the explicit ``path``; else the ``COMPREXIT_DATA`` environment variable;
    else the first ``shared/data`` found in or above the current working directory, then in or
    above the repository that holds this package (``/work/main`` -> ``/work/shared/data``).
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_dir():
            raise DataNotFoundError(f"Data directory {explicit} does not exist.")
        return explicit
    from_env = os.environ.get(DATA_ENV_VAR)
    if from_env:
        env_path = Path(from_env).expanduser()
        if not env_path.is_dir():
            raise DataNotFoundError(f"{DATA_ENV_VAR}={from_env} is not a directory.")
        return env_path
    searched: list[Path] = []
    for start in (Path.cwd(), Path(__file__).parent):
        for candidate in _candidates(start):
            if candidate in searched:
                continue
            searched.append(candidate)
            if candidate.is_dir():
                logger.debug("Using data directory %s", candidate)
                return candidate
    raise DataNotFoundError(
        "Could not find the data directory (looked for shared/data in and above the working "
        f"directory and the package's repository). Set {DATA_ENV_VAR}=/path/to/shared/data."
    )


def data_file(relative: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """Return ``data_root(root) / relative``, raising :class:`DataNotFoundError` if it is missing."""
    base = data_root(root)
    target = base / relative
    if not target.exists():
        raise DataNotFoundError(
            f"Expected data file {target} is missing; check the data directory or set {DATA_ENV_VAR}."
        )
    return target
