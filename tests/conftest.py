"""Shared fixtures: a tiny random Llama for fast shape tests, and the real default backbone (slow).

They live in :mod:`comprexit_rag.testing`, which the integrations' suites import too.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from comprexit_rag.testing import (
    default_tokenizer,
    embedder,
    fresh_tiny_backbone,
    make_tiny_backbone,
    real_backbone,
    tiny_backbone,
)

__all__ = [
    "default_tokenizer",
    "embedder",
    "fresh_tiny_backbone",
    "make_tiny_backbone",
    "real_backbone",
    "tiny_backbone",
]
