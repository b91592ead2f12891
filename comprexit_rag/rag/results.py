"""What a :class:`~comprexit_rag.rag.pipeline.RAGPipeline` returns: answers with their sources and statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Source:
    """One retrieved passage behind an answer: its id, title and cosine score."""

    id: str
    title: str
    score: float


@dataclass(frozen=True)
class AnswerStats:
    """What the reader saw.

    ``context_tokens`` counts the source tokens of the retrieved passages; ``slots`` the soft
    slots read instead (0 for ``full``, which reads the tokens); ``ratio`` is tokens per slot
    (1.0 for ``full``). ``store_hits`` / ``store_misses`` count retrieved passages whose slots
    were / were not already stored (always 0 for ``comi`` and ``full``, which use no store).
    """

    context_tokens: int
    slots: int
    ratio: float
    store_hits: int
    store_misses: int


@dataclass(frozen=True)
class Answer:
    """The answer to one question, its sources, timings (seconds) and context statistics.

    ``timings`` has the keys ``retrieve``, ``compress``, ``read`` and ``total``.
    """

    question: str
    answer: str
    method: str
    sources: tuple[Source, ...]
    timings: Mapping[str, float]
    stats: AnswerStats

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return {
            "question": self.question,
            "answer": self.answer,
            "method": self.method,
            "sources": [asdict(source) for source in self.sources],
            "timings": dict(self.timings),
            "stats": asdict(self.stats),
        }


@dataclass(frozen=True)
class IndexReport:
    """What one :meth:`RAGPipeline.index` call did."""

    passages: int  # passages given (after dropping repeats within the call)
    added: int  # passages new to the retriever
    compressed: int  # passages whose slots were computed and stored by this call
    stored: int  # passages of the whole index that now have stored slots
    seconds: float
