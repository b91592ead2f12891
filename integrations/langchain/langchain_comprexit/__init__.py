"""LangChain integration for comprexit-rag: soft-slot document compression, reading and retrieval.

- :class:`ComprExITDocumentCompressor`: a ``BaseDocumentCompressor`` that compresses documents
  into ComprExIT (or COMI) soft slots, kept in a slot store, and tags them with a slot key;
- :class:`ComprExITReader`: an LCEL Runnable answering ``{"question", "documents"}`` from slots;
- :class:`ComprExITRetriever`: a ``BaseRetriever`` over the project's dense retriever;
- :class:`ComprExITEmbeddings`: the embedded all-MiniLM-L6-v2 as ``Embeddings`` for any vector store.

Built with no arguments, the compressor, the reader and the embeddings load the embedded defaults,
once per process (:mod:`comprexit_rag.defaults`).
"""

from importlib import metadata

from langchain_comprexit.document_compressors import (
    COMPRESS_EVENT,
    SLOT_METADATA_KEY,
    ComprExITDocumentCompressor,
    SlotLookup,
)
from langchain_comprexit.embeddings import ComprExITEmbeddings
from langchain_comprexit.readers import EMPTY_RESPONSE, STATS_EVENT, ComprExITReader
from langchain_comprexit.retrievers import ComprExITRetriever

try:
    __version__ = metadata.version("langchain-comprexit")
except metadata.PackageNotFoundError:  # run from a source checkout
    __version__ = "0.1.0"

__all__ = [
    "COMPRESS_EVENT",
    "EMPTY_RESPONSE",
    "SLOT_METADATA_KEY",
    "STATS_EVENT",
    "ComprExITDocumentCompressor",
    "ComprExITEmbeddings",
    "ComprExITReader",
    "ComprExITRetriever",
    "SlotLookup",
    "__version__",
]
