"""The embedded defaults, loaded once per process and shared by every component that asks for them.

The LangChain and LlamaIndex classes built with no arguments (``ComprExITDocumentCompressor()``,
``ComprExITReader()``, ``ComprExITNodePostprocessor()``, ``ComprExITEmbedding()``) take their parts
from here, so one process holds one copy of SmolLM2 (and of MiniLM) however many of them it builds:
the backbone weights are read-only, and every forward pass is serialised by the backbone's lock.

>>> from comprexit_rag import defaults
>>> compressor = defaults.default_compressor()  # the embedded SmolLM2 + the shipped head
>>> reader = defaults.default_reader()  # the same backbone object
>>> reader.backbone is compressor.backbone
True
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from .backbone import Backbone
    from .methods.comprexit.compressor import ComprExITCompressor
    from .reading.reader import Reader

__all__ = [
    "clear",
    "default_backbone",
    "default_compressor",
    "default_embedder",
    "default_reader",
    "reader_for",
]

_lock = threading.RLock()  # loads happen once even when several threads ask at the same time
_cache: dict[tuple[str, str], Any] = {}


def _key(device: str | torch.device | None) -> str:
    """The cache key of ``device``: ``None`` resolves to the default device, so both share one copy."""
    import torch

    from .backbone import default_device

    return str(default_device() if device is None else torch.device(device))


def _cached(kind: str, device: str | torch.device | None, build: Any) -> Any:
    key = (kind, _key(device))
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def default_backbone(device: str | torch.device | None = None) -> Backbone:
    """The embedded SmolLM2-135M-Instruct, frozen, loaded on ``device`` (default: cuda when available)."""
    from .backbone import Backbone

    return _cached("backbone", device, lambda: Backbone.from_pretrained(None, device=device))


def default_compressor(device: str | torch.device | None = None) -> ComprExITCompressor:
    """The shipped ComprExIT head over :func:`default_backbone`; its config holds the default ratio."""
    from .methods.comprexit.compressor import ComprExITCompressor

    return _cached(
        "compressor",
        device,
        lambda: ComprExITCompressor.from_pretrained(backbone=default_backbone(device)),
    )


def default_reader(device: str | torch.device | None = None) -> Reader:
    """The reader over :func:`default_backbone`, reading through the shipped head's reader adapter."""
    from .reading.reader import Reader

    return _cached(
        "reader",
        device,
        lambda: Reader(default_backbone(device), adapter=default_compressor(device).reader_adapter),
    )


def default_embedder(device: str | None = None) -> SentenceTransformer:
    """The embedded all-MiniLM-L6-v2 sentence-transformers model (what ``DenseRetriever`` loads)."""
    from sentence_transformers import SentenceTransformer

    from .retrieval.embedder import default_embedder_path

    return _cached("embedder", device, lambda: SentenceTransformer(str(default_embedder_path()), device=device))


def reader_for(backbone: Backbone) -> Reader:
    """A reader over ``backbone``: the shared :func:`default_reader` when it is a default backbone
    of this process, else a new :class:`Reader` (readers over the same backbone share its weights)."""
    from .reading.reader import Reader

    with _lock:
        for (kind, device), value in _cache.items():
            if kind == "backbone" and value is backbone:
                return default_reader(device)
    return Reader(backbone)


def clear() -> None:
    """Forget the loaded defaults (the next request loads them again); for tests and memory pressure."""
    with _lock:
        _cache.clear()
