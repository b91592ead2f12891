"""The pipeline the rag tests share: seven passages indexed once over the tiny backbone (an untrained head)."""

from __future__ import annotations

import pytest

from comprexit_rag.rag import RAGPipeline
from comprexit_rag.testing import PASSAGES, untrained_pipeline


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_backbone, embedder) -> RAGPipeline:
    """Built once per test module."""
    pipeline = untrained_pipeline(tmp_path_factory.mktemp("hardening") / "rag", tiny_backbone, embedder)
    pipeline.index(PASSAGES, batch_size=4)
    return pipeline
