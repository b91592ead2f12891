"""benchmarks/slot_quality.py's reconstruction by passage length, on the real default model and head."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from comprexit_rag.data import Passage, QAExample, load_split
from comprexit_rag.evaluation.reading_tasks import task_kind
from comprexit_rag.methods import get_method
from comprexit_rag.reading.reader import Reader

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slot_quality():
    spec = importlib.util.spec_from_file_location("slot_quality", ROOT / "benchmarks" / "slot_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reconstruction_by_length_reads_the_same_passages_cut_short(slot_quality, real_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path))  # the held-out stream is tokenised afresh
    method = slot_quality.build(get_method("comprexit"), real_backbone, None, ratio=4, batch_size=4)
    reader = Reader(real_backbone, adapter=method.reader_adapter)
    rows = slot_quality.reconstruction_by_length(method, reader, 3, 4, [24, 160], stream_tokens=20_000)
    assert list(rows) == ["24", "160"]
    for row in rows.values():
        assert row["windows"] == 3
        # The shipped head's own slots carry the passage at both lengths (one and two transport windows).
        assert row["own_nats"] < row["none_nats"] / 2
        assert 0.0 <= row["own_token_accuracy"] <= 1.0
        assert 0.0 < row["own_nats_se"] < row["own_nats"]


def test_scores_by_kind_score_each_kind_on_its_own_examples(slot_quality):
    examples = [
        QAExample(f"{kind}-{i}", "q", (answer,), (Passage("p"),))
        for i, (kind, answer) in enumerate([("cloze", "red fox"), ("follows", "jumped over"), ("cloze", "lazy dog")])
    ]
    predictions = ["red fox", "jumped", "cat"]
    rows = slot_quality.scores_by_kind(predictions, examples, lambda example: example.id.split("-")[0])
    assert rows["cloze"] == {"n": 2, "em": 0.5, "f1": 0.5, "accuracy": 0.5}
    assert rows["follows"]["n"] == 1 and rows["follows"]["em"] == 0.0
    assert rows["follows"]["f1"] == pytest.approx(2 / 3, abs=1e-4)  # precision 1, recall 1/2


def test_each_table_reads_its_own_held_out_examples(slot_quality, default_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPREXIT_CACHE", str(tmp_path))
    backbone = SimpleNamespace(tokenizer=default_tokenizer)
    nq = slot_quality.table_examples("qa_nq", 3, backbone, retrieved=4)
    assert [e.id for e in nq] == [e.id for e in load_split("nq", "dev")[:3]]
    squad = slot_quality.table_examples("qa_squad", 2, backbone, retrieved=4)
    assert [e.id for e in squad] == [e.id for e in load_split("squad", "dev")[:2]]
    tasks = slot_quality.table_examples("reading_tasks", 4, backbone, retrieved=4)
    assert len(tasks) == 4 and {task_kind(task) for task in tasks} <= {"cloze", "follows"}
