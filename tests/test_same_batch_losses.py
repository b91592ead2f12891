"""benchmarks/same_batch_losses.py: two runs on the same batches compare step by step, a term only the run
has is taken out of its loss, and logs that drew other objectives are refused."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "same_batch_losses.py"


@pytest.fixture(scope="module")
def same_batch():
    spec = importlib.util.spec_from_file_location("same_batch_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_log(path: Path, rows: list[dict]) -> Path:
    lines = [json.dumps(row) for row in rows] + [json.dumps({"method": "comprexit", "steps": 30})]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_script(tmp_path: Path, control: list[dict], *options: str) -> subprocess.CompletedProcess:
    """The script, as a command, on RUN against ``control`` with ``options``."""
    run, control_log = write_log(tmp_path / "run.jsonl", RUN), write_log(tmp_path / "control.jsonl", control)
    command = [sys.executable, str(SCRIPT), "--run", str(run), "--control", str(control_log), *options]
    return subprocess.run(command, capture_output=True, text=True)


RUN = [
    {"step": 10, "loss": 3.0, "objective": "QAPrompt", "terms": {"passage_reconstruction": 2.0}},
    {"step": 20, "loss": 1.0, "objective": "ReconstructionPrompt", "terms": {}},
    {"step": 30, "loss": 3.0, "objective": "QAPrompt", "terms": {"passage_reconstruction": 1.0}},
]
CONTROL = [
    {"step": 10, "loss": 2.5, "objective": "QAPrompt"},
    {"step": 20, "loss": 2.0, "objective": "ReconstructionPrompt"},
    {"step": 30, "loss": 2.5, "objective": "QAPrompt"},
    {"step": 40, "loss": 9.0, "objective": "QAPrompt"},
]


def test_the_left_out_term_is_removed_with_its_weight_and_objectives_are_kept_apart(same_batch):
    report = same_batch.compare(
        {row["step"]: row for row in RUN}, {row["step"]: row for row in CONTROL}, {"passage_reconstruction": 0.5}, 0
    )
    qa = report["QAPrompt"]
    assert [pair["run"] for pair in qa["pairs"]] == [2.0, 2.5]
    assert qa["steps"] == 2 and qa["difference"] == pytest.approx(-0.25)
    assert qa["standard_error"] == pytest.approx(0.25)
    assert report["ReconstructionPrompt"]["difference"] == pytest.approx(-1.0)
    assert report["ReconstructionPrompt"]["standard_error"] is None


def test_from_step_leaves_the_warm_up_out(same_batch):
    report = same_batch.compare({row["step"]: row for row in RUN}, {row["step"]: row for row in CONTROL}, {}, 20)
    assert [pair["step"] for pair in report["QAPrompt"]["pairs"]] == [30]


def test_until_step_compares_only_the_steps_both_runs_reached(same_batch):
    report = same_batch.compare({row["step"]: row for row in RUN}, {row["step"]: row for row in CONTROL}, {}, 0, 20)
    assert [pair["step"] for pair in report["QAPrompt"]["pairs"]] == [10]
    assert [pair["step"] for pair in report["ReconstructionPrompt"]["pairs"]] == [20]


def test_logs_that_drew_other_objectives_are_refused(tmp_path):
    other = [dict(row, objective="ContinuationPrompt") if row["step"] == 20 else row for row in CONTROL]
    result = run_script(tmp_path, other)
    assert result.returncode != 0 and "not on the same batches" in result.stderr


def test_the_command_writes_its_report(tmp_path):
    out = tmp_path / "report.json"
    run_script(tmp_path, CONTROL, "--leave-out", "passage_reconstruction=0.5", "--out", str(out)).check_returncode()
    report = json.loads(out.read_text())
    assert report["left_out"] == {"passage_reconstruction": 0.5}
    assert report["objectives"]["QAPrompt"]["difference"] == pytest.approx(-0.25)


def test_a_term_the_run_never_logged_is_refused(same_batch):
    with pytest.raises(SystemExit, match="no term"):
        same_batch.compare({row["step"]: row for row in RUN}, {row["step"]: row for row in CONTROL}, {"kl": 0.5})


def test_a_malformed_term_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", "a", "--control", "b", "--leave-out", "passage_reconstruction"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "TERM=WEIGHT" in result.stderr
