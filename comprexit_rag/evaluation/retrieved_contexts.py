"""Gold passages read among retrieved ones: each question's own passage with the passages a retriever ranks
closest to the question.

A gold-passage table says whether the reader can read a passage; in a RAG pipeline the passage comes with
the retriever's other top hits, which are about the same thing (the open-corpus benchmark and
``research/distractor_sensitivity.py`` measured what that costs). This builds that setting from a QA split
without a pipeline: the neighbours come from :func:`~comprexit_rag.retrieval.nearest.nearest_passages`
(the retriever's default embedder, cached), so a GPU machine without the embedder reads them from the cache.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from ..data import Passage, QAExample
from ..errors import InvalidInputError
from ..retrieval.nearest import nearest_passages

__all__ = ["with_retrieved_distractors"]


def with_retrieved_distractors(
    examples: Sequence[QAExample], pool: Sequence[Passage], distractors: int, device: str | None = None
) -> list[QAExample]:
    """Each one-passage example with the ``distractors`` passages of ``pool`` closest to its question.

    The gold passage is put at a position drawn from the example's id (the same on every run), since a
    retriever does not always rank it first; the neighbours keep their rank order around it. Passages are
    compared by their formatted text: the gold passage's own text is never its distractor.
    """
    if any(len(example.passages) != 1 for example in examples):
        raise InvalidInputError("Retrieved distractors are added to one-passage examples (e.g. NQ, SQuAD).")
    if distractors < 1:
        raise InvalidInputError(f"distractors must be >= 1, got {distractors}.")
    passages = {p.formatted(): p for p in [*pool, *(example.passages[0] for example in examples)]}
    texts = list(passages)
    position = {text: index for index, text in enumerate(texts)}
    found = nearest_passages(
        [example.question for example in examples],
        texts,
        [[position[example.passages[0].formatted()]] for example in examples],
        distractors,
        device=device,
    )
    read = []
    for example, row in zip(examples, found, strict=True):
        neighbours = [passages[texts[index]] for index in row if index >= 0]
        gold = random.Random(f"gold position:{example.id}").randrange(len(neighbours) + 1)
        ordered = (*neighbours[:gold], example.passages[0], *neighbours[gold:])
        read.append(replace(example, passages=ordered, supporting=(gold,)))
    return read
