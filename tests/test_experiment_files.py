"""Every committed experiment file loads, and each of its training runs is a valid TrainConfig."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from comprexit_rag.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmark_environment.py is a script's neighbour, not a package

from benchmark_environment import load_experiment  # noqa: E402


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.json")), ids=lambda path: path.name)
def test_experiment_file_loads_and_its_runs_are_valid(path, tmp_path):
    experiment = load_experiment(path)
    for run in experiment.runs():
        options = run.resolved(tmp_path, steps_as_run=True)
        TrainConfig(**options)
        assert "{runs}" not in str(options)


def test_runs_directory_is_substituted_in_text_options(tmp_path):
    experiment = load_experiment(ROOT / "experiments" / "reader-adapter-teacher-qa.json")
    (run,) = experiment.runs()
    families = run.resolved(tmp_path)["qa_families"]
    assert families[-1] == f"teacher:{tmp_path}/teacher-qa/2wiki.jsonl" and families[0] == "squad"
    assert any("{runs}/teacher-qa/2wiki.jsonl" in argument for argument in experiment.prepare[0])


def test_the_neighbours_a_gpu_session_needs_are_found_among_every_stage_file():
    # prepare_neighbours.py reads every stage file; one that needs an init_from (a frozen-head stage) stopped it.
    spec = importlib.util.spec_from_file_location("prepare_neighbours", ROOT / "benchmarks/gpu/prepare_neighbours.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    stages = ROOT / "experiments" / "reader_adapter"
    assert (stages / "sft-4x-mixed-frozen-head.json").is_file()
    assert prepare.retrieved_distractor_sets(stages) == {(("squad", "nq", "hotpotqa", "musique"), 9)}
