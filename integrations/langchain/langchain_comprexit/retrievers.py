"""ComprExITRetriever: the project's dense retriever (all-MiniLM-L6-v2 over faiss) as a LangChain retriever."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comprexit_rag.retrieval import DenseRetriever, RetrievedPassage
from comprexit_rag.validation import check_positive_int
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, field_validator

from langchain_comprexit._checks import TypedErrors

if TYPE_CHECKING:
    from comprexit_rag.rag import RAGPipeline

__all__ = ["ComprExITRetriever"]


class ComprExITRetriever(TypedErrors, BaseRetriever):
    """Return the ``k`` passages of a :class:`~comprexit_rag.retrieval.DenseRetriever` closest to a query.

    Each :class:`~langchain_core.documents.Document` has the passage id as ``id``, the passage
    text (``"title\\ntext"`` for pipeline-indexed passages, which is what the slot store is keyed
    on) as ``page_content``, and the passage metadata plus ``id``, ``title`` and the cosine
    ``score`` as metadata. ``k`` can be overridden per call: ``retriever.invoke(q, k=2)``; a ``k``
    larger than the index returns every passage, best first. Bad queries and ``k`` raise the
    core retriever's :class:`~comprexit_rag.errors.InvalidInputError`.

    >>> retriever = ComprExITRetriever.from_pipeline(pipeline, k=3)
    >>> retriever.invoke("Who wrote Hamlet?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: DenseRetriever
    k: int = 5

    @field_validator("k", mode="before")
    @classmethod
    def _positive(cls, value: object) -> int:
        return check_positive_int(value, "k")

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
