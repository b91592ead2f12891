"""ComprExITEmbeddings: the retriever's embedded all-MiniLM-L6-v2 as LangChain ``Embeddings``.

Any LangChain vector store can then index the passages with the vectors the project's
:class:`~comprexit_rag.retrieval.DenseRetriever` uses, offline and with no extra package:

>>> from langchain_core.vectorstores import InMemoryVectorStore
>>> store = InMemoryVectorStore.from_documents(docs, ComprExITEmbeddings())
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from comprexit_rag.defaults import default_embedder
from comprexit_rag.retrieval.embedder import warn_if_truncated
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor

if TYPE_CHECKING:
    from comprexit_rag.retrieval import DenseRetriever
    from sentence_transformers import SentenceTransformer

__all__ = ["ComprExITEmbeddings"]

logger = logging.getLogger(__name__)


class ComprExITEmbeddings(Embeddings):
    """A sentence-transformers model (default: the embedded all-MiniLM-L6-v2, shared per process).

    Vectors are L2-normalised (cosine scores, as the DenseRetriever's). Texts longer than the
    model's window (256 tokens for MiniLM) are embedded from their beginning only, with a WARNING.

    Args:
        model: an already loaded ``SentenceTransformer``; default
            :func:`comprexit_rag.defaults.default_embedder`.
        batch_size: texts per encoder batch.
    """

    def __init__(self, model: SentenceTransformer | None = None, *, batch_size: int = 32) -> None:
        self.model = model if model is not None else default_embedder()
        self.batch_size = batch_size

    @classmethod
    def from_retriever(cls, retriever: DenseRetriever, **kwargs: Any) -> ComprExITEmbeddings:
        """Share the already loaded embedder of a :class:`DenseRetriever` (or a RAGPipeline's)."""
        return cls(retriever.embedder, **kwargs)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        warn_if_truncated(self.model, texts, logger)
        return self._encode(texts)

    def embed_query(self, text: str) -> list[float]:
        warn_if_truncated(self.model, [text], logger)
        return self._encode([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await run_in_executor(None, self.embed_query, text)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()
