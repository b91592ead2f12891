"""comprexit-rag: compress retrieved passages once into soft slots that the reader LLM reads directly."""

from .backbone import Backbone, BackboneFingerprint
from .compressor import ComprExITCompressor
from .config import ComprExITConfig
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    ComprExITError,
    DefaultModelUnavailableError,
    IndexBusyError,
    InvalidInputError,
    StorageError,
)
from .head import ComprExITHead
from .prompts import ContinuationPrompt, QAPrompt, ReconstructionPrompt
from .reader import Reader
from .soft_context import PassageDetails, SoftContext

__version__ = "0.1.0"

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
