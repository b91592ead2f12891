"""comprexit-rag: compress retrieved passages once into soft slots that the reader LLM reads directly.

The package follows the data: ``backbone`` (the frozen LLM) -> ``methods`` (ComprExIT and the
baselines, each registered once) -> ``slots`` (keys, the store, the slot service) -> ``reading``
(the reader and its adapter); ``retrieval`` and ``rag`` (the pipeline) put them together, and
``training`` and ``evaluation`` train and score the methods.

The public names are imported on first use, so ``import comprexit_rag``, ``comprexit-rag --help`` and
the light modules (errors, corpus reading, data paths) do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import threads
from .errors import (
    AdapterMismatchError,
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
    from .methods.comi import COMICompressor
    from .methods.comprexit import ComprExITCompressor, ComprExITConfig, ComprExITHead
    from .prompts import ContinuationPrompt, QAPrompt, ReconstructionPrompt
    from .rag import Answer, RAGPipeline
    from .reading import Reader, ReaderAdapter
    from .retrieval import DenseRetriever
    from .slots import SlotService, SlotStore
    from .soft_context import PassageDetails, SoftContext

__version__ = "0.1.0"

# Before torch loads: OpenMP threads spin briefly, then sleep (see comprexit_rag.threads for why).
threads.prefer_short_spin_wait()

_LAZY = {
    "Answer": ".rag",
    "Backbone": ".backbone",
    "BackboneFingerprint": ".backbone",
    "COMICompressor": ".methods.comi",
    "ComprExITCompressor": ".methods.comprexit",
    "ComprExITConfig": ".methods.comprexit",
    "ComprExITHead": ".methods.comprexit",
    "ContinuationPrompt": ".prompts",
    "DenseRetriever": ".retrieval",
    "PassageDetails": ".soft_context",
    "QAPrompt": ".prompts",
    "RAGPipeline": ".rag",
    "Reader": ".reading",
    "ReaderAdapter": ".reading",
    "ReconstructionPrompt": ".prompts",
    "SlotService": ".slots",
    "SlotStore": ".slots",
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
    "AdapterMismatchError",
    "Answer",
    "Backbone",
    "BackboneFingerprint",
    "BackboneMismatchError",
    "COMICompressor",
    "CheckpointError",
    "ComprExITCompressor",
    "ComprExITConfig",
    "ComprExITError",
    "ComprExITHead",
    "ContinuationPrompt",
    "DefaultModelUnavailableError",
    "DenseRetriever",
    "IndexBusyError",
    "InvalidInputError",
    "PassageDetails",
    "QAPrompt",
    "RAGPipeline",
    "Reader",
    "ReaderAdapter",
    "ReconstructionPrompt",
    "SlotService",
    "SlotStore",
    "SoftContext",
    "StorageError",
]
