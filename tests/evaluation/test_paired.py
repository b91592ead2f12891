import json

import pytest

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.errors import InvalidInputError
from comprexit_rag.evaluation.paired import load_predictions, paired_difference, write_predictions


def _write(path, rows):
    path.write_text(
        "".join(json.dumps(dict(zip(("id", "answers", "prediction"), row, strict=True))) + "\n" for row in rows)
    )
    return load_predictions(path)


def test_paired_difference_counts_wins_and_means(tmp_path):
    a = _write(tmp_path / "a.jsonl", [("1", ["Paris"], "Paris"), ("2", ["1990"], "1989"), ("3", ["red"], "blue")])
    b = _write(tmp_path / "b.jsonl", [("1", ["Paris"], "Paris"), ("2", ["1990"], "1990"), ("3", ["red"], "red")])
    result = paired_difference(a, b, "em", resamples=500)
    assert (result.mean_a, result.mean_b) == (pytest.approx(1 / 3), pytest.approx(1.0))
    assert result.difference == pytest.approx(2 / 3)
    assert (result.b_better, result.a_better, result.ties) == (2, 0, 1)
    # differences 0, 1, 1: sample sd 0.577, over sqrt(3)
    assert result.standard_error == pytest.approx(0.3333, abs=1e-3)
    assert 0.0 <= result.ci_low <= result.difference <= result.ci_high == pytest.approx(1.0)


def test_identical_answers_give_a_zero_difference(tmp_path):
    rows = [(str(i), ["yes"], "yes" if i % 2 else "no") for i in range(20)]
    a = _write(tmp_path / "a.jsonl", rows)
    result = paired_difference(a, dict(a), "f1", resamples=200)
    assert (result.difference, result.standard_error, result.ci_low, result.ci_high) == (0.0, 0.0, 0.0, 0.0)
    assert result.ties == 20


def test_different_questions_are_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [("1", ["x"], "x"), ("2", ["y"], "y")])
    b = _write(tmp_path / "b.jsonl", [("1", ["x"], "x"), ("3", ["y"], "y")])
    with pytest.raises(InvalidInputError, match="different questions"):
        paired_difference(a, b)


def test_a_file_that_is_not_predictions_says_how_to_make_one(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "prediction": "x"}\n')
    with pytest.raises(InvalidInputError, match="comprexit-rag eval --predictions"):
        load_predictions(path)


def test_written_predictions_read_back_by_id(tmp_path):
    examples = [QAExample(f"q{i}", f"question {i}?", (f"gold {i}", "other"), (Passage("text"),)) for i in range(3)]
    write_predictions(tmp_path / "p.jsonl", examples, ["a", "b", "c"])
    assert load_predictions(tmp_path / "p.jsonl") == {
        f"q{i}": ((f"gold {i}", "other"), prediction) for i, prediction in enumerate("abc")
    }
    with pytest.raises(ValueError):  # one prediction per example
        write_predictions(tmp_path / "short.jsonl", examples, ["a"])
