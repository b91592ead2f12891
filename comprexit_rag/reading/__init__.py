"""Reading: the frozen LLM answering from slots, text or nothing, optionally through a reader adapter."""

from .adapter import ADAPTER_DIR, ReaderAdapter, ReaderAdapterConfig
from .pairing import FROZEN_READER, require_adapter
from .reader import Context, Reader, ReaderBatch
from .widening import widen

__all__ = [
    "ADAPTER_DIR",
    "FROZEN_READER",
    "Context",
    "Reader",
    "ReaderAdapter",
    "ReaderAdapterConfig",
    "ReaderBatch",
    "require_adapter",
    "widen",
]
