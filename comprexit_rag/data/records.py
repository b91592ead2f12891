"""Immutable records shared by every data loader: a passage and a QA example."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit of text, with its (possibly empty) title and id."""

    text: str
    title: str = ""
    id: str = ""

    def formatted(self) -> str:
        """Return ``"title\\ntext"``, or just the text when there is no title."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class QAExample:
    """A question with its gold answers and candidate passages.

    ``supporting`` holds indices into ``passages`` of the gold/supporting paragraphs;
    single-passage data sets use ``(0,)``.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...]
    supporting: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bad = [i for i in self.supporting if not 0 <= i < len(self.passages)]
        if bad:
            raise ValueError(
                f"QAExample {self.id!r}: supporting indices {bad} are out of range for {len(self.passages)} passages"
            )

    def gold_passages(self) -> tuple[Passage, ...]:
        """The supporting passages, in the order of ``supporting``."""
        return tuple(self.passages[i] for i in self.supporting)
