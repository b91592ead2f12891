"""Held-out reading tasks: questions about a window of the held-out shard that only the window answers."""

from __future__ import annotations

import re

import pytest

from comprexit_rag.data import Passage, QAExample
from comprexit_rag.evaluation.reading_tasks import held_out_reading_tasks, task_kind


def letters(text: str) -> str:
    """The text's word characters only: a span cut at token boundaries may split a word."""
    return "".join(re.findall(r"\w+", text))


def test_each_task_asks_about_its_own_window_and_the_window_holds_the_answer(default_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path))  # the held-out stream is tokenised afresh
    tasks = held_out_reading_tasks(default_tokenizer, 24, stream_tokens=20_000)
    assert len(tasks) == 24 and len({task.id for task in tasks}) == 24
    kinds = {"cloze": 0, "follows": 0}
    for task in tasks:
        (passage,), (answer,) = task.passages, task.answers
        assert task.supporting == (0,) and answer
        assert len(default_tokenizer(passage.text, add_special_tokens=False).input_ids) <= 130  # one 128-token window
        assert letters(answer) in letters(passage.text)
        if task.question.startswith("Fill in the blank:"):
            assert task_kind(task) == "cloze"
            kinds["cloze"] += 1
            assert "____" in task.question and letters(answer) not in letters(task.question)
        else:
            assert task_kind(task) == "follows"
            kinds["follows"] += 1
            phrase = re.search(r'right after "(.*)"\?$', task.question).group(1)
            # What follows the phrase in the window begins the answer.
            assert letters(phrase + answer) in letters(passage.text)
    assert kinds["cloze"] and kinds["follows"]  # both kinds, drawn half and half
    again = held_out_reading_tasks(default_tokenizer, 24, stream_tokens=20_000)
    assert again == tasks  # the same held-out questions every time


def test_an_example_not_made_as_a_reading_task_has_no_kind():
    with pytest.raises(ValueError, match="not a held-out reading task"):
        task_kind(QAExample("nq-dev-3", "who?", ("x",), (Passage("x"),)))
