"""SQuAD-style QA metrics: normalisation, EM, F1, containment and aggregation."""

from __future__ import annotations

import pytest

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.evaluation.metrics import (
    QAScores,
    answer_contained,
    exact_match,
    f1_score,
    normalize_answer,
    score_predictions,
)


def test_normalize_answer() -> None:
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"
    assert normalize_answer("") == ""


def test_exact_match_max_over_golds() -> None:
    assert exact_match("the Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1_score() -> None:
    assert f1_score("Denver Broncos", ["Denver Broncos"]) == 1.0
    assert f1_score("Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert f1_score("Carolina Panthers", ["Denver Broncos"]) == 0.0
    assert f1_score("Broncos", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(2 / 3)
    assert f1_score("", [""]) == 1.0
    assert f1_score("the", ["Broncos"]) == 0.0
    assert f1_score("x", []) == 0.0


def test_f1_counts_repeated_tokens_once_per_match() -> None:
    assert f1_score("new new york", ["new york"]) == pytest.approx(0.8)


def test_answer_contained_respects_word_boundaries() -> None:
    assert answer_contained("It was the Denver Broncos, clearly.", ["Denver Broncos"]) == 1.0
    assert answer_contained("in 1990s", ["1990"]) == 0.0
    assert answer_contained("Broncos", ["Denver Broncos"]) == 0.0
    assert answer_contained("anything", ["the"]) == 0.0
    assert answer_contained("anything", []) == 0.0


def _examples() -> list[QAExample]:
    passage = (Passage("ctx"),)
    return [
        QAExample("a", "q1", ("Denver Broncos",), passage, (0,)),
        QAExample("b", "q2", ("Paris",), passage, (0,)),
    ]


def test_score_predictions_list_and_mapping() -> None:
    examples = _examples()
    scores = score_predictions(["Denver Broncos", "It is Lyon"], examples)
    assert scores == {"em": 0.5, "f1": 0.5, "accuracy": 0.5, "n": 2}
    assert score_predictions({"b": "Paris, France", "a": "Broncos"}, examples) == pytest.approx(
        {"em": 0.0, "f1": (2 / 3 + 2 / 3) / 2, "accuracy": 0.5, "n": 2}
    )
    assert QAScores(em=1.0, f1=1.0, accuracy=1.0, n=1).as_dict()["n"] == 1


def test_score_predictions_errors_and_empty() -> None:
    examples = _examples()
    with pytest.raises(ValueError, match="predictions for"):
        score_predictions(["only one"], examples)
    with pytest.raises(ValueError, match="no prediction"):
        score_predictions({"a": "x"}, examples)
    assert score_predictions([], []) == {"em": 0.0, "f1": 0.0, "accuracy": 0.0, "n": 0}
