"""Fixtures of the LlamaIndex integration tests.

Reuses the backbone fixtures of the core suite (:mod:`comprexit_rag.testing`: ``default_tokenizer``,
``tiny_backbone``, ``real_backbone``) and adds real llama-index-core
objects over HotpotQA dev paragraphs from ``shared/data`` (tests needing them skip when absent).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch

INTEGRATION_ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "./scripts/install.sh   (from the repository root; see the README)"

try:
    import llama_index.postprocessor.comprexit as _integration
except ImportError as _error:
    pytest.exit(
        f"llama-index-postprocessor-comprexit is not installed ({_error}). Install it with:\n    {INSTALL_HINT}",
        returncode=4,
    )
if not Path(_integration.__file__).resolve().is_relative_to(INTEGRATION_ROOT):
    pytest.exit(
        f"llama_index.postprocessor.comprexit is imported from {_integration.__file__}, not from this checkout "
        f"({INTEGRATION_ROOT}). Reinstall it with:\n    {INSTALL_HINT}",
        returncode=4,
    )


from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.postprocessor.comprexit import ComprExITEmbedding  # noqa: E402

from comprexit_rag.data import DataNotFoundError, QAExample, load_split  # noqa: E402
from comprexit_rag.errors import DefaultModelUnavailableError  # noqa: E402
from comprexit_rag.methods.comi import COMICompressor, COMIMerger  # noqa: E402
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor  # noqa: E402
from comprexit_rag.methods.comprexit.head import ComprExITHead  # noqa: E402
from comprexit_rag.testing import (  # noqa: E402
    default_tokenizer,
    fresh_tiny_backbone,
    make_tiny_backbone,
    real_backbone,
    tiny_backbone,
)

__all__ = ["default_tokenizer", "fresh_tiny_backbone", "make_tiny_backbone", "real_backbone", "tiny_backbone"]

HOTPOT_QUESTIONS = 5  # their 10 paragraphs each (gold + distractors) make the index: 50 nodes


@pytest.fixture(scope="session")
def hotpot_examples() -> list[QAExample]:
    """The first HotpotQA dev questions of the fixed split (skip when shared/data is absent)."""
    try:
        return load_split("hotpotqa", "dev")[:HOTPOT_QUESTIONS]
    except DataNotFoundError as error:
        pytest.skip(f"HotpotQA data unavailable: {error}")


@pytest.fixture(scope="session")
def hotpot_nodes(hotpot_examples) -> list[TextNode]:
    """One node per paragraph: id = passage id (``<question id>/<i>``), title in LLM-visible metadata."""
    return [
        TextNode(
            id_=passage.id,
            text=passage.text,
            metadata={"title": passage.title, "hotpotqa_id": passage.id},
            excluded_llm_metadata_keys=["hotpotqa_id"],
            excluded_embed_metadata_keys=["hotpotqa_id"],
        )
        for example in hotpot_examples
        for passage in example.passages
    ]


@pytest.fixture(scope="session")
def embed_model() -> ComprExITEmbedding:
    """The embedded all-MiniLM-L6-v2 (skip when its wheel is not installed)."""
    try:
        return ComprExITEmbedding()
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default embedder unavailable: {error}")


@pytest.fixture(scope="session")
def hotpot_index(hotpot_nodes, embed_model) -> VectorStoreIndex:
    """A real in-memory VectorStoreIndex over the HotpotQA paragraphs."""
    return VectorStoreIndex(hotpot_nodes, embed_model=embed_model)


@pytest.fixture(scope="session")
def tiny_compressor(tiny_backbone) -> ComprExITCompressor:
    """A random ComprExIT head over the tiny backbone."""
    torch.manual_seed(1)
    return ComprExITCompressor(tiny_backbone, ComprExITHead.for_backbone(tiny_backbone))


@pytest.fixture(scope="session")
def tiny_comi(tiny_backbone) -> COMICompressor:
    """A random COMI merger over the tiny backbone."""
    torch.manual_seed(2)
    return COMICompressor(tiny_backbone, COMIMerger.for_backbone(tiny_backbone))
