"""The interface every compressor offers: texts (and, for a query-aware one, the question) -> SoftContext."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..validation import validate_ratio

if TYPE_CHECKING:
    import torch

    from ..backbone import Backbone
    from ..reading.adapter import ReaderAdapter
    from ..soft_context import SoftContext

__all__ = ["Compressor", "resolve_ratio"]


@runtime_checkable
class Compressor(Protocol):
    """What the pipeline, the slot service and the integrations call, whatever the method.

    ``fingerprint`` names the slots it makes (backbone, weights, config, reader adapter): stores key
    on it. ``max_ratio`` bounds the ratio it accepts (the transport window of a slot head, COMI's
    ``max_ratio``), ``default_ratio`` is the one it was configured with. A ``query_aware`` compressor
    reads the question with each passage (``query`` is required), so its slots are made per query and
    never stored; the others ignore ``query``. ``reader_adapter`` is the adapter its slots must be
    read through (``None``: the frozen reader).
    """

    backbone: Backbone
    query_aware: bool

    @property
    def fingerprint(self) -> str: ...

    @property
    def max_ratio(self) -> int: ...

    @property
    def default_ratio(self) -> int: ...

    @property
    def reader_adapter(self) -> ReaderAdapter | None: ...

    def soft_context(self, passages: Sequence[torch.Tensor], token_counts: Sequence[int]) -> SoftContext:
        """Slots it made (e.g. read back from a store) as a SoftContext, marked for the reader they need."""
        ...

    def compress(
        self,
        texts: str | Sequence[str],
        *,
        query: str | Sequence[str] | None = None,
        ratio: int | None = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> SoftContext: ...


def resolve_ratio(compressor: Compressor, ratio: int | None) -> int:
    """``ratio`` checked against what ``compressor`` accepts; its own default ratio when ``None``."""
    return validate_ratio(compressor.default_ratio if ratio is None else ratio, compressor.max_ratio)
