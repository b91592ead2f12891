"""Fixtures of the langchain-comprexit tests.

Run from the repository root with ``python -m pytest integrations/langchain/tests``: the rootdir
is the repository root and its pytest configuration (the ``slow`` marker) applies. The package
is made importable by putting ``integrations/langchain`` on ``sys.path`` here, so no install is
needed (``./scripts/install.sh`` installs it, with its dependencies). The backbone fixtures
(``default_tokenizer``, ``tiny_backbone``, ``real_backbone``) are the core suite's, from
:mod:`comprexit_rag.testing`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
if str(PACKAGE_ROOT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
from comprexit_rag.backbone import Backbone  # noqa: E402
from comprexit_rag.data import DataNotFoundError, QAExample, load_split  # noqa: E402
from comprexit_rag.errors import DefaultModelUnavailableError  # noqa: E402
from comprexit_rag.methods.comprexit.head import ComprExITHead  # noqa: E402
from comprexit_rag.rag import RAGPipeline  # noqa: E402
from comprexit_rag.retrieval import DEFAULT_EMBEDDER, DenseRetriever, default_embedder_path  # noqa: E402
from comprexit_rag.testing import default_tokenizer, make_tiny_backbone, real_backbone, tiny_backbone  # noqa: E402

__all__ = ["default_tokenizer", "make_tiny_backbone", "real_backbone", "tiny_backbone"]

QUESTIONS = 3  # HotpotQA dev questions whose ten passages each make up the test index


@pytest.fixture(scope="session")
def hotpot() -> list[QAExample]:
    """The first HotpotQA dev questions (skip when the shared data is absent)."""
    try:
        return load_split("hotpotqa", "dev")[:QUESTIONS]
    except DataNotFoundError as error:
        pytest.skip(f"HotpotQA data unavailable: {error}")


@pytest.fixture(scope="session")
def embedder():
    """The embedded all-MiniLM-L6-v2, loaded once."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(default_embedder_path()), device="cpu")
    except DefaultModelUnavailableError as error:
        pytest.skip(f"default embedder unavailable: {error}")


def build_pipeline(directory: Path, backbone: Backbone, embedder, examples: list[QAExample], **kwargs) -> RAGPipeline:
    """A pipeline over ``backbone`` indexing every passage of ``examples``."""
    retriever = DenseRetriever(embedder, embedder_name=DEFAULT_EMBEDDER)
    pipeline = RAGPipeline.build(directory, backbone=backbone, retriever=retriever, **kwargs)
    pipeline.index([passage for example in examples for passage in example.passages], show_progress=False)
    return pipeline


@pytest.fixture(scope="session")
def make_pipeline(embedder):
    """``make_pipeline(directory, backbone, examples, **build_kwargs)``: see :func:`build_pipeline`."""
    return lambda directory, backbone, examples, **kwargs: build_pipeline(
        directory, backbone, embedder, examples, **kwargs
    )


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_backbone, embedder, hotpot) -> RAGPipeline:
    """The tiny random backbone with a fresh head, every passage of :data:`QUESTIONS` questions stored."""
    torch.manual_seed(1)
    head = ComprExITHead.for_backbone(tiny_backbone)
    return build_pipeline(tmp_path_factory.mktemp("lc") / "rag", tiny_backbone, embedder, hotpot, head=head)
