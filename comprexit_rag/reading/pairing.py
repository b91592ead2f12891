"""Which reader may read which slots: only through the adapter their head was trained with.

Slots carry the digest of the reader adapter their head was trained with (or :data:`FROZEN_READER`), and a
reader checks it before it reads them: slots read through another adapter, or without the one they were
trained for, give answers as if from no context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AdapterMismatchError

if TYPE_CHECKING:
    from .adapter import ReaderAdapter

__all__ = ["FROZEN_READER", "require_adapter"]

# Recorded with slots whose head was trained for the frozen reader (no adapter).
FROZEN_READER = "frozen"


def require_adapter(expected: str, adapter: ReaderAdapter | None, what: str) -> None:
    """Refuse to read slots through another adapter than the one their head was trained with.

    ``expected``: the adapter digest recorded with the slots, or :data:`FROZEN_READER` for slots of
    a head trained for the frozen reader.
    """
    actual = adapter.digest if adapter is not None else FROZEN_READER
    if expected == actual:
        return
    if adapter is None:
        raise AdapterMismatchError(
            f"{what} come from a head trained with reader adapter {expected}, but this reader has none. Build the "
            "reader with the compressor's adapter: Reader(compressor.backbone, adapter=compressor.reader_adapter)."
        )
    if expected == FROZEN_READER:
        raise AdapterMismatchError(
            f"{what} come from a head trained for the frozen reader, but this reader reads through adapter "
            f"{adapter.name}. Read them with Reader(backbone, adapter=None)."
        )
    raise AdapterMismatchError(
        f"{what} come from a head trained with reader adapter {expected}, but this reader uses adapter "
        f"{actual}. Read them with the adapter shipped with their head."
    )
