"""Evaluation: SQuAD-style QA metrics."""

from comprexit_rag.evaluation.metrics import (
    QAScores,
    answer_contained,
    compute_scores,
    exact_match,
    f1_score,
    normalize_answer,
    score_predictions,
)

__all__ = [
    "QAScores",
    "answer_contained",
    "compute_scores",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "score_predictions",
]
