"""Tokenised training examples shared by every trainable context encoder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainExample:
    """One training example.

    QA: the passages are compressed, the question is asked, the answer is the target.
    Pretraining: one passage (the context), an empty question, the continuation as target.
    """

    passage_ids: list[list[int]]  # token ids of each passage ("title\\ntext"), no special tokens
    question: str
    target_ids: list[int]  # answer (or continuation) tokens, ending with the stop token for QA

    @classmethod
    def reconstruction(cls, passage: list[int], stop_id: int) -> TrainExample:
        """``passage`` compressed alone and written back whole from its slots, then ``stop_id``."""
        return cls([passage], "", [*passage, stop_id])
