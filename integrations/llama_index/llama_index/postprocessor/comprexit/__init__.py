"""LlamaIndex integration of comprexit-rag: stored ComprExIT soft slots for retrieved nodes.

- :class:`ComprExITNodePostprocessor` compresses retrieved nodes once into soft slots, keeps them
  in a slot store and attaches the store key and stats (never tensors) to each node;
- :class:`ComprExITQueryEngine` answers from those slots with the frozen reader LLM, and
  :func:`build_query_engine` builds retriever -> postprocessor -> engine in one line;
- :class:`ComprExITEmbedding` is the embedded all-MiniLM-L6-v2, so indexes build offline.
"""

from llama_index.postprocessor.comprexit.base import (
    FINGERPRINT_KEY,
    METADATA_KEYS,
    METHOD_KEY,
    METHODS,
    RATIO_KEY,
    SLOT_KEY,
    SLOTS_KEY,
    TOKENS_KEY,
    CompressedNodes,
    ComprExITNodePostprocessor,
    MemorySlotCache,
)
from llama_index.postprocessor.comprexit.embedding import ComprExITEmbedding
from llama_index.postprocessor.comprexit.query_engine import EMPTY_RESPONSE, ComprExITQueryEngine, build_query_engine

__all__ = [
    "EMPTY_RESPONSE",
    "FINGERPRINT_KEY",
    "METADATA_KEYS",
    "METHODS",
    "METHOD_KEY",
    "RATIO_KEY",
    "SLOTS_KEY",
    "SLOT_KEY",
    "TOKENS_KEY",
    "ComprExITEmbedding",
    "ComprExITNodePostprocessor",
    "ComprExITQueryEngine",
    "CompressedNodes",
    "MemorySlotCache",
    "build_query_engine",
]
