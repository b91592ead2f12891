"""benchmarks/learning_curves.py: the long run's report is built from the committed files, and its pieces
(curve reading, block means, the per-doubling fit) compute what they say."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "benchmarks" / "results" / "reader_adapter" / "long_run.json"


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("learning_curves", ROOT / "benchmarks" / "learning_curves.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_read_curve_joins_pieces_and_counts_a_repeated_step_once(curves, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"step": 10, "loss": 2.0}\n{"step": 20, "loss": 1.0}\n')
    second.write_text('{"step": 20, "loss": 9.0}\n\n{"step": 30, "loss": 0.5}\n')
    assert [(r["step"], r["loss"]) for r in curves.read_curve([first, second])] == [(10, 2.0), (20, 1.0), (30, 0.5)]


def test_block_means_keep_one_objective_and_end_at_the_last_step(curves):
    records = [
        {"step": 10, "loss": 1.0, "objective": "QAPrompt"},
        {"step": 20, "loss": 9.0, "objective": "ReconstructionPrompt"},
        {"step": 90, "loss": 3.0, "objective": "QAPrompt"},
        {"step": 110, "loss": 5.0, "objective": "QAPrompt"},
    ]
    blocks = curves.block_means(records, 100, "QAPrompt")
    assert [(b.first, b.last, b.loss, b.logged) for b in blocks] == [(1, 100, 2.0, 2), (101, 110, 5.0, 1)]
    assert curves.block_means(records, 100)[0].loss == pytest.approx(13.0 / 3)


def test_per_doubling_recovers_a_log_linear_series(curves):
    steps = [100, 200, 400, 800]
    intercept, gain = curves.per_doubling(steps, [3.0 + 6.5 * math.log2(s) for s in steps])
    assert (intercept, gain) == (pytest.approx(3.0), pytest.approx(6.5))


def test_the_committed_report_reads_the_quality_files(curves):
    text, series = curves.report(MANIFEST)
    manifest = json.loads(MANIFEST.read_text())
    shipped = next(stage for stage in manifest["qa_stages"] if stage.get("shipped"))
    quality = json.loads((MANIFEST.parent / shipped["quality"]).read_text())
    f1 = round(100 * quality["qa_nq"]["own"]["f1"], 1)
    assert f"| {f1} |" in text.split("## QA stage length")[1]
    assert f1 in [nq for _, nq, _ in series["stage_f1"]]
    assert len(series["stage_f1"]) == len(manifest["qa_stages"])
    assert (
        series["checkpoints"][-1][1]
        == json.loads((MANIFEST.parent / manifest["pretraining"]["checkpoints"][-1]["quality"]).read_text())[
            "reconstruction_nq"
        ]["own_nats"]
    )
