"""Checks shared by the sentence-transformers embedders of the integrations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["truncated_count", "warn_if_truncated"]


def truncated_count(model: Any, texts: Sequence[str]) -> int:
    """How many of ``texts`` are longer than ``model``'s window (exact token counts, special tokens included)."""
    window = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not isinstance(window, int) or window < 1 or tokenizer is None or not texts:
        return 0
    lengths = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return sum(len(ids) > window for ids in lengths)


def warn_if_truncated(model: Any, texts: Sequence[str], logger: logging.Logger) -> int:
    """Log a WARNING when some ``texts`` exceed the window (the embedder silently keeps only their beginning)."""
    longer = truncated_count(model, texts)
    if longer:
        logger.warning(
            "%d text(s) are longer than the embedder's %d-token window: only their beginning is embedded. "
            "Split long documents into passages of about 200 words (comprexit_rag.corpus.split_paragraphs).",
            longer,
            model.max_seq_length,
        )
    return longer
