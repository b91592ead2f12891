"""SQuAD-style QA metrics: normalised exact match, token F1 and answer containment.

Every per-example metric takes the maximum over the gold answers and returns a float in [0, 1];
an example with no gold answers scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from comprexit_rag.data.records import QAExample

__all__ = [
    "QAScores",
    "answer_contained",
    "compute_scores",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "score_predictions",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, and collapse whitespace (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_golds(golds: str | Iterable[str]) -> tuple[str, ...]:
    return (golds,) if isinstance(golds, str) else tuple(golds)


def _best(prediction: str, golds: str | Iterable[str], metric: Callable[[str, str], float]) -> float:
    """Maximum of ``metric(prediction, gold)`` over the gold answers (0.0 when there are none)."""
    return max((metric(prediction, gold) for gold in _as_golds(golds)), default=0.0)


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _contained(prediction: str, gold: str) -> float:
    normalized_gold = normalize_answer(gold)
    if not normalized_gold:
        return 0.0
    return float(f" {normalized_gold} " in f" {normalize_answer(prediction)} ")


def exact_match(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    return _best(prediction, golds, _exact)


def f1_score(prediction: str, golds: str | Iterable[str]) -> float:
    """Best token-level F1 between the normalised prediction and a normalised gold answer."""
    return _best(prediction, golds, _f1)


def answer_contained(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 if some non-empty normalised gold answer occurs in the normalised prediction as whole words."""
    return _best(prediction, golds, _contained)


@dataclass(frozen=True, slots=True)
class QAScores:
    """Mean metrics over ``n`` examples (each in [0, 1]); ``accuracy`` is answer containment."""

    em: float
    f1: float
    accuracy: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """The scores as a plain dict with keys em, f1, accuracy and n."""
        return asdict(self)


def _aligned(predictions: Mapping[str, str] | Sequence[str], examples: Sequence[QAExample]) -> list[str]:
    """Predictions in example order, from a list aligned with ``examples`` or a mapping by id."""
    if isinstance(predictions, Mapping):
        missing = [e.id for e in examples if e.id not in predictions]
        if missing:
            raise ValueError(f"{len(missing)} examples have no prediction (first: {missing[0]!r}).")
        return [predictions[e.id] for e in examples]
    if isinstance(predictions, str):
        raise TypeError("predictions must be a sequence of strings or a mapping from example id, not a str.")
    if len(predictions) != len(examples):
        raise ValueError(f"Got {len(predictions)} predictions for {len(examples)} examples.")
    return list(predictions)


def compute_scores(predictions: Mapping[str, str] | Sequence[str], examples: Sequence[QAExample]) -> QAScores:
    """Mean EM, F1 and containment accuracy of ``predictions`` against ``examples``' answers."""
    preds = _aligned(predictions, examples)
    n = len(examples)
    if n == 0:
        return QAScores(em=0.0, f1=0.0, accuracy=0.0, n=0)
    return QAScores(
        em=sum(exact_match(p, e.answers) for p, e in zip(preds, examples, strict=True)) / n,
        f1=sum(f1_score(p, e.answers) for p, e in zip(preds, examples, strict=True)) / n,
        accuracy=sum(answer_contained(p, e.answers) for p, e in zip(preds, examples, strict=True)) / n,
        n=n,
    )


def score_predictions(
    predictions: Mapping[str, str] | Sequence[str], examples: Sequence[QAExample]
) -> dict[str, float | int]:
    """Like :func:`compute_scores`, as a dict ``{"em", "f1", "accuracy", "n"}``.

    ``predictions`` is either a list aligned with ``examples`` or a mapping from example id.
    """
    return compute_scores(predictions, examples).as_dict()
