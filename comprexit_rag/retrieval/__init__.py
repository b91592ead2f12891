"""Retrieval: dense passage search (a sentence-transformers embedder over faiss), persisted atomically."""

from .dense import DEFAULT_EMBEDDER, DenseRetriever, RetrievedPassage
from .embedder import default_embedder_path, warn_if_truncated

__all__ = ["DEFAULT_EMBEDDER", "DenseRetriever", "RetrievedPassage", "default_embedder_path", "warn_if_truncated"]
