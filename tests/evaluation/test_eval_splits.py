"""``comprexit-rag eval --split``: the project's dev and train splits of a shared data file, and a user's file."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data import DataNotFoundError, data_root, load_split
from comprexit_rag.errors import InvalidInputError


def test_train_and_dev_of_the_nq_file_are_its_two_disjoint_halves():
    try:
        path = str(data_root() / "nq" / "nq_open_oracle_2155.jsonl.gz")
    except DataNotFoundError:
        pytest.skip("shared data not available")
    dev = load_examples(path, "nq-open", "dev", "distractor", None)
    train = load_examples(path, "nq-open", "train", "distractor", None)
    everything = load_examples(path, "nq-open", "all", "distractor", None)
    assert len(dev) == 400 and len(dev) + len(train) == len(everything) == 2155
    assert not {e.id for e in dev} & {e.id for e in train}
    trained_on = {e.question for e in load_split("nq", "train")}
    assert all(e.question in trained_on for e in train)  # what the QA stage draws from, with the same passage
    assert load_examples(path, "nq-open", "train", "distractor", 5) == train[:5]


def test_a_file_outside_the_splits_is_read_whole_for_dev_and_refused_for_train(tmp_path, caplog):
    path = tmp_path / "mine.jsonl.gz"
    rows = [
        {"question": f"Question {i}?", "answers": ["x"], "ctxs": [{"title": "t", "text": f"Text {i}.", "isgold": True}]}
        for i in range(3)
    ]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    with caplog.at_level(logging.WARNING):
        assert len(load_examples(str(path), "nq-open", "dev", "distractor", None)) == 3
    assert "no example of the project's dev split" in caplog.text
    with pytest.raises(InvalidInputError, match=r"no example of the project.s nq train split.*--split all"):
        load_examples(str(path), "nq-open", "train", "distractor", None)
