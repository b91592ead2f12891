"""ComprExITRetriever: the project's dense retriever (all-MiniLM-L6-v2 over faiss) as a LangChain retriever."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comprexit_rag.retrieval import DenseRetriever, RetrievedPassage
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from comprexit_rag.pipeline import RAGPipeline

__all__ = ["ComprExITRetriever"]


class ComprExITRetriever(BaseRetriever):
    """Return the ``k`` passages of a :class:`~comprexit_rag.retrieval.DenseRetriever` closest to a query.

    Each :class:`~langchain_core.documents.Document` has the passage id as ``id``, the passage
    text (``"title\\ntext"`` for pipeline-indexed passages, which is what the slot store is keyed
    on) as ``page_content``, and the passage metadata plus ``id``, ``title`` and the cosine
    ``score`` as metadata. ``k`` can be overridden per call: ``retriever.invoke(q, k=2)``.

    >>> retriever = ComprExITRetriever.from_pipeline(pipeline, k=3)
    >>> retriever.invoke("Who wrote Hamlet?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: DenseRetriever
    k: int = Field(default=5, ge=1)

    @classmethod
    def from_pipeline(cls, pipeline: RAGPipeline, *, k: int = 5, **kwargs: object) -> ComprExITRetriever:
        """A retriever over ``pipeline``'s index."""
        return cls(retriever=pipeline.retriever, k=k, **kwargs)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return [_document(hit) for hit in self.retriever.search(query, k=self.k if k is None else k)]


def _document(hit: RetrievedPassage) -> Document:
    metadata = {**hit.metadata, "id": hit.id, "title": str(hit.metadata.get("title", "")), "score": hit.score}
    return Document(id=hit.id, page_content=hit.text, metadata=metadata)
