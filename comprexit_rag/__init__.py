"""comprexit-rag: compress retrieved passages once into soft slots that the reader LLM reads directly.

The public names are imported on first use, so ``comprexit-rag --help`` and the light modules
(errors, corpus reading, data paths) do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import threads
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    ComprExITError,
    DefaultModelUnavailableError,
    IndexBusyError,
    InvalidInputError,
    StorageError,
)

if TYPE_CHECKING:
    from .backbone import Backbone, BackboneFingerprint
    from .compressor import ComprExITCompressor
    from .config import ComprExITConfig
    from .head import ComprExITHead
    from .prompts import ContinuationPrompt, QAPrompt, ReconstructionPrompt
    from .reader import Reader
    from .soft_context import PassageDetails, SoftContext

__version__ = "0.1.0"

# Before torch loads: OpenMP threads spin briefly, then sleep (see comprexit_rag.threads for why).
threads.prefer_short_spin_wait()

_LAZY = {
    "Backbone": ".backbone",
    "BackboneFingerprint": ".backbone",
    "ComprExITCompressor": ".compressor",
    "ComprExITConfig": ".config",
    "ComprExITHead": ".head",
    "ContinuationPrompt": ".prompts",
    "QAPrompt": ".prompts",
    "ReconstructionPrompt": ".prompts",
    "Reader": ".reader",
    "PassageDetails": ".soft_context",
    "SoftContext": ".soft_context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Backbone",
    "BackboneFingerprint",
    "BackboneMismatchError",
    "CheckpointError",
    "ComprExITCompressor",
    "ComprExITConfig",
    "ComprExITError",
    "ComprExITHead",
    "ContinuationPrompt",
    "DefaultModelUnavailableError",
    "IndexBusyError",
    "InvalidInputError",
    "PassageDetails",
    "QAPrompt",
    "Reader",
    "ReconstructionPrompt",
    "SoftContext",
    "StorageError",
]
