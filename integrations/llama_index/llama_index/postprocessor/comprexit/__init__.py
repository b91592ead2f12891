"""LlamaIndex integration of comprexit-rag: stored ComprExIT soft slots for retrieved nodes.

- :class:`ComprExITNodePostprocessor` compresses retrieved nodes once into soft slots, keeps them
  in a slot store and attaches the store key and stats (never tensors) to each node;
- :class:`ComprExITQueryEngine` answers from those slots with the frozen reader LLM, and
  :func:`build_query_engine` builds retriever -> postprocessor -> engine in one line;
- :class:`ComprExITSynthesizer` reads those slots inside a standard
  ``index.as_query_engine(response_synthesizer=..., node_postprocessors=[...])``;
- :class:`ComprExITLLM` is the frozen reader as a LlamaIndex LLM (text prompts, or slots);
- :class:`ComprExITEmbedding` is the embedded all-MiniLM-L6-v2, so indexes build offline.

Built with no arguments, they load the embedded defaults once per process (:mod:`comprexit_rag.defaults`).
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
)
from llama_index.postprocessor.comprexit.embedding import ComprExITEmbedding
from llama_index.postprocessor.comprexit.llm import ComprExITLLM
from llama_index.postprocessor.comprexit.query_engine import EMPTY_RESPONSE, ComprExITQueryEngine, build_query_engine
from llama_index.postprocessor.comprexit.synthesizer import ComprExITSynthesizer

from comprexit_rag.slots import MemorySlotCache

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
    "ComprExITLLM",
    "ComprExITNodePostprocessor",
    "ComprExITQueryEngine",
    "ComprExITSynthesizer",
    "CompressedNodes",
    "MemorySlotCache",
    "build_query_engine",
]
