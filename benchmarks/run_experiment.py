"""Run an experiment file end to end: its preparing commands, its training runs, its evaluation grid, then its
further scripts.

Every committed result of the lab names the experiment file that produced it (BENCHMARKS.md); this is
how to run one again. The file's format is described in ``benchmarks/benchmark_environment.py``.

    python benchmarks/run_experiment.py experiments/round4.json --dry-run      # what would run
    python benchmarks/run_experiment.py experiments/round4.json --runs /tmp/runs --results /tmp/results
    python benchmarks/run_experiment.py experiments/round6.json --parts grid commands --runs /tmp/runs

Training runs go to ``RUNS/NAME`` (checkpoints, ``log.jsonl``, ``summary.json``; console output in
``RUNS/NAME.log``), each through ``comprexit-rag train --config RUNS/NAME.json``. The grid's rows are
appended to ``RESULTS/grid.jsonl`` (predictions in ``RESULTS/predictions.jsonl``); the further scripts
write where their arguments say, usually under ``RESULTS``. A failed run is reported and the rest goes
on (as one GPU session should); the exit status says whether everything succeeded.

The committed runs fitted their schedules to time budgets on a shared GPU; ``--steps-as-run`` instead
trains exactly the steps each committed run reached, which is what to use on another device.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from benchmark_environment import Experiment, TrainRun, grid_rows, load_experiment

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("prepare", "train", "grid", "commands")
logger = logging.getLogger("run_experiment")


def check_training_options(experiment: Experiment, runs: Path) -> None:
    """Build every run's TrainConfig before anything trains: a wrong option fails here, not hours in."""
    from comprexit_rag.training.config import TrainConfig

    for run in experiment.runs():
        try:
            TrainConfig(**run.resolved(runs))
        except (TypeError, ValueError) as error:  # an unknown field, or one the config refuses
            raise SystemExit(f"{experiment.path}: training run {run.name}: {error}") from error


def train_stage(stage: list[TrainRun], runs: Path, *, steps_as_run: bool, dry_run: bool) -> list[str]:
    """Train the runs of one stage side by side; the names of those that failed."""
    started = []
    for run in stage:
        config = runs / f"{run.name}.json"
        command = [sys.executable, "-m", "comprexit_rag.cli", "-v", "train", "--config", str(config)]
        options = run.resolved(runs, steps_as_run=steps_as_run)
        if dry_run:
            print(f"# {run.name}: {json.dumps(options)}")
            print(shlex.join(["comprexit-rag", *command[3:]]) + " &")
            continue
        config.write_text(json.dumps(options, indent=1) + "\n")
        logger.info("training %s (log: %s)", run.name, runs / f"{run.name}.log")
        log = (runs / f"{run.name}.log").open("w")
        started.append((run.name, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    if dry_run:
        print("wait")
    failed = []
    for name, process, log in started:
        if process.wait() != 0:
            logger.error("training run %s failed (exit %d); see %s", name, process.returncode, log.name)
            failed.append(name)
        log.close()
    return failed


def run_command(command: list[str], *, dry_run: bool) -> bool:
    print(shlex.join(["python", *command[1:]]), flush=True)
    return dry_run or subprocess.run(command, cwd=ROOT).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="experiments/*.json")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where the training runs go")
    parser.add_argument("--results", type=Path, default=Path("runs/results"), help="where the results go")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)")
    parser.add_argument("--only", nargs="+", help="training runs and grid labels to run (default: all)")
    parser.add_argument("--device", default="cuda", help="device of the grid and of the scripts' {device}")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size of the grid")
    parser.add_argument("--limit", type=int, help="first N dev examples per dataset in the grid (smoke runs)")
    parser.add_argument("--steps-as-run", action="store_true", help="train the steps the committed runs reached")
    parser.add_argument("--dry-run", action="store_true", help="check the file and print what would run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    experiment: Experiment = load_experiment(args.experiment)
    runs, results = args.runs.resolve(), args.results.resolve()
    logger.info("%s: %s", args.experiment, experiment.description)
    check_training_options(experiment, runs)
    if not args.dry_run:
        runs.mkdir(parents=True, exist_ok=True)
        results.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []

    values = {"runs": str(runs), "results": str(results), "device": args.device}
    if "prepare" in args.parts:
        for arguments in experiment.prepare:  # comprexit-rag commands whose files the training runs read
            command = [sys.executable, "-m", "comprexit_rag.cli", *(a.format(**values) for a in arguments)]
            if not run_command(command, dry_run=args.dry_run):
                failed.append(arguments[0])

    if "train" in args.parts:
        for stage in experiment.train:
            stage = [run for run in stage if not args.only or run.name in args.only]
            if stage:
                failed += train_stage(stage, runs, steps_as_run=args.steps_as_run, dry_run=args.dry_run)

    labels = {row.label for row in grid_rows(experiment, runs)}
    selected = sorted(labels & set(args.only)) if args.only else []
    if "grid" in args.parts and experiment.grid and (not args.only or selected):
        command = [sys.executable, str(ROOT / "benchmarks" / "run_grid.py"), str(args.experiment.resolve())]
        command += ["--checkpoints", str(runs), "--device", args.device, "--batch-size", str(args.batch_size)]
        command += ["--out", str(results / "grid.jsonl"), "--predictions", str(results / "predictions.jsonl")]
        command += ["--only", *selected] if selected else []
        command += ["--limit", str(args.limit)] if args.limit else []
        if not run_command(command, dry_run=args.dry_run):
            failed.append("grid")

    if "commands" in args.parts:
        for script, *arguments in experiment.commands:
            arguments = [argument.format(**values) for argument in arguments]
            for argument in arguments:  # the scripts write their --out files but do not create folders
                if argument.startswith(str(results)) and not args.dry_run:
                    Path(argument).parent.mkdir(parents=True, exist_ok=True)
            if not run_command([sys.executable, script, *arguments], dry_run=args.dry_run):
                failed.append(script)

    if failed:
        logger.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
