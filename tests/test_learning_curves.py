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

    def nq_f1(quality: str) -> float:
        return round(100 * json.loads((MANIFEST.parent / quality).read_text())["qa_nq"]["own"]["f1"], 1)

    longest = max(
        manifest["qa_stages"], key=lambda stage: curves.read_curve([MANIFEST.parent / stage["curve"]])[-1]["step"]
    )
    f1 = nq_f1(longest["quality"])
    assert f"| {f1} |" in text.split("## QA stage length")[1].split("## Later passes")[0]
    assert f1 in [nq for _, nq, _ in series["stage_f1"]]
    assert len(series["stage_f1"]) == len(manifest["qa_stages"])
    shipped = next(run for run in manifest["later_passes"]["runs"] if run.get("shipped"))
    shipped_row = next(line for line in text.split("## Later passes")[1].splitlines() if "(shipped)" in line)
    assert f"| {nq_f1(shipped['quality'])} |" in shipped_row
    assert [name for *_, name in series["later_pass_f1"]] == [run["name"] for run in manifest["later_passes"]["runs"]]
    # Every run trained on the paired stage's batches: its row in the length table, its column of QA losses.
    length_table = text.split("## QA stage length")[1].split("## Later passes")[0]
    loss_header = text.split("## QA training loss")[1].splitlines()[4]
    for run in manifest["same_batch_runs"]:
        run_row = next(line for line in length_table.splitlines() if line.startswith(f"| `{run['name']}`"))
        assert f"| {nq_f1(run['quality'])} |" in run_row
        assert f"`{run['name']}` ({run['loss']})" in loss_header
    assert [name for name, _ in series["same_batch_qa"]] == [
        f"{run['name']} ({run['loss']})" for run in manifest["same_batch_runs"]
    ]
    assert (
        series["checkpoints"][-1][1]
        == json.loads((MANIFEST.parent / manifest["pretraining"]["checkpoints"][-1]["quality"]).read_text())[
            "reconstruction_nq"
        ]["own_nats"]
    )


def test_the_multi_ratio_rows_score_the_answers_as_the_eval_harness_did(curves):
    """The run at 4, 8 and 16x: F1 recomputed from each checkpoint's answers is the F1 its eval summary reports."""
    text, series = curves.report(MANIFEST)
    multi = json.loads(MANIFEST.read_text())["multi_ratio"]
    section = text.split("## Training at 4, 8, 16x")[1].split("\n## ")[0]
    for point in multi["checkpoints"]:
        for ratio in multi["ratios"]:
            answers = MANIFEST.parent / point["nq"][str(ratio)]
            summary = answers.with_suffix(".json")
            if summary.is_file():  # session 24's 4x answers were kept without their summary
                expected = round(100 * json.loads(summary.read_text())["f1"], 1)
                assert (point["step"], expected) in series["multi_ratio_f1"][ratio]
    final = multi["checkpoints"][-1]
    final_row = next(line for line in section.splitlines() if line.startswith(f"| {final['step']} |"))
    assert f"| {series['multi_ratio_f1'][16][-1][1]} |" in final_row
    assert section.count("\n| 1-250 |") == 1  # the QA loss by ratio, block by block


def test_the_staged_rows_score_each_stage_and_table_each_stage_loss(curves):
    """The multi-ratio head continued by stages: each row's F1 is its answers' eval summary, and each stage has
    a loss table of its own objective and block size."""
    text, _ = curves.report(MANIFEST)
    experiment = json.loads(MANIFEST.read_text())["multi_ratio_pretraining"]
    section = text.split("## Reconstruction pretraining at 4, 8, 16x, then QA")[1]
    for point in experiment["checkpoints"]:
        point_row = next(line for line in section.splitlines() if line.startswith(f"| {point['step']} |"))
        for ratio in experiment["ratios"]:
            summary = (MANIFEST.parent / point["nq"][str(ratio)]).with_suffix(".json")
            assert f"| {100 * json.loads(summary.read_text())['f1']:.1f} |" in point_row
    for stage in experiment["stages"]:
        assert f"{stage['name']} (`{stage['config']}`): mean loss of the logged {stage['objective']} steps" in section
        assert section.count(f"\n| 1-{stage['block']} |") == 1


def test_a_later_pass_is_set_against_the_fit_at_its_number_of_examples(curves, tmp_path):
    quality = {"qa_nq": {"own": {"f1": 0.5}}, "reconstruction_nq": {}}
    (tmp_path / "q.json").write_text(json.dumps(quality))
    (tmp_path / "c.jsonl").write_text('{"step": 100, "loss": 1.0, "objective": "QAPrompt"}\n')
    later = {
        "from_session": 1,
        "batch_size": 96,
        "description": "A test.",
        "runs": [
            {"name": "arm", "curve": "c.jsonl", "quality": "q.json"},
            {"name": "next", "after": "arm", "curve": "c.jsonl", "quality": "q.json"},
        ],
    }
    lines, points = curves.later_pass_section(later, 200, (10.0, 2.0), tmp_path)
    # 200 steps of 32 + 100 of 96 = 16,000 examples = 500 steps of 32: the fit gives 10 + 2 * log2(500);
    # the run after it adds its own 100 of 96: 25,600 = 800 steps of 32
    assert points == [(500.0, 50.0, None, "arm"), (800.0, 50.0, None, "next")]
    assert f"| arm | 2 | 100 | 16,000 | 50.0 | {10 + 2 * math.log2(500):.1f} |" in lines[-2]
    assert f"| next | 3 | 100 | 25,600 | 50.0 | {10 + 2 * math.log2(800):.1f} |" in lines[-1]
