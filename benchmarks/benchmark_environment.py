"""Shared by the benchmark scripts beside it: what the machine is, timing, result files, experiment files.

An experiment file (``experiments/*.json``, read by :func:`load_experiment`) describes one reproducible
run of the lab in a few lines, nanoGPT style:

``description``
    what the experiment asked, and where its numbers are written up (BENCHMARKS.md).
``results``
    where its committed result summaries are (for the reader; the runner writes to its own ``--results``).
``prepare``
    ``comprexit-rag`` commands run before any training, each a list of its arguments (e.g. ``teacher-qa``,
    which writes a file a run reads as a QA family); ``{runs}`` and ``{device}`` as in ``commands``.
``train_defaults``
    ``comprexit-rag train`` options shared by every run below.
``train``
    a list of stages, run one after another; the runs of one stage train side by side on one device, as
    the experiment ran them (their time budgets shared the GPU). A run is ``name`` plus any
    ``comprexit-rag train`` option (TrainConfig field), optionally ``config`` (a training-options file
    relative to the experiment file, e.g. ``reader_adapter/pretrain-4x.json``, which the run's own options
    override) and
    ``steps_run`` (the optimiser steps the committed run reached, for ``--steps-as-run``).
    ``init_from: "run:NAME"`` starts from run NAME's ``final/`` checkpoint; ``{runs}`` in a text option (e.g.
    ``"qa_families": [..., "teacher:{runs}/teacher-qa/2wiki.jsonl"]``) is the runner's runs directory.
``grid``
    evaluation rows (``benchmarks/run_grid.py``): ``label``, ``method``, optional ``ratios``,
    ``checkpoint`` (``run:NAME`` or a path) and ``datasets`` (default: every dev set).
``commands``
    further scripts, each a list ``[script, arg, ...]`` run from the repository root; ``{runs}``,
    ``{results}`` and ``{device}`` in an argument are replaced by the runner's directories and device.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The held-out dev splits of comprexit_rag.data.splits, and the `comprexit-rag eval` arguments that read them.
DEV_SETS = {
    "nq": "--data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open",
    "hotpotqa": "--data ../shared/data/hotpotqa/dev_distractor_350.jsonl --format hotpotqa",
}
RUN_PREFIX = "run:"
EXPERIMENT_KEYS = {"description", "results", "prepare", "train_defaults", "train", "grid", "commands"}


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls, after one untimed warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_environment(device: torch.device) -> dict[str, Any]:
    """Versions, cores, threads, the load average now, and the accelerator when ``device`` is one."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        info.update(
            device_name=torch.cuda.get_device_name(index),
            device_memory_bytes=properties.total_memory,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = info["processor"]
    return info


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (results are written as they finish, so a crash keeps the rows before it)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


# --- experiment files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRun:
    """One ``comprexit-rag train`` call of an experiment."""

    name: str
    options: dict[str, Any]  # TrainConfig fields, `run:` references not yet resolved
    steps_run: int | None = None

    def resolved(self, runs: Path, *, steps_as_run: bool = False) -> dict[str, Any]:
        """The options of ``comprexit-rag train --config``: output under ``runs``, ``run:`` references resolved.

        ``steps_as_run`` trains exactly the steps the committed run reached instead of fitting them to its
        time budget, which gives another count on another device.
        """
        options = {key: with_runs(value, runs) for key, value in self.options.items()}
        options["output_dir"] = str(runs / self.name)
        if isinstance(options.get("init_from"), str):
            options["init_from"] = resolve_checkpoint(options["init_from"], runs)
        if steps_as_run and self.steps_run is not None:
            options = options | {"max_steps": self.steps_run, "time_budget_s": None}
        return options


def with_runs(value: Any, runs: Path) -> Any:
    """``value`` with ``{runs}`` in its text (or its list's texts) replaced by ``runs``."""
    if isinstance(value, str):
        return value.replace("{runs}", str(runs))
    if isinstance(value, list):
        return [with_runs(item, runs) for item in value]
    return value


@dataclass(frozen=True)
class GridRow:
    """One evaluation of a method at one ratio (None: the method has no ratio) on some dev sets."""

    label: str
    method: str
    ratio: int | None
    checkpoint: str | None
    datasets: tuple[str, ...] = tuple(DEV_SETS)


@dataclass(frozen=True)
class Experiment:
    path: Path
    description: str
    results: str | None
    prepare: list[list[str]] = field(default_factory=list)
    train: list[list[TrainRun]] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    def runs(self) -> list[TrainRun]:
        return [run for stage in self.train for run in stage]


def resolve_checkpoint(reference: str, runs: Path) -> str:
    """``run:NAME`` -> ``runs/NAME/final``; any other path stays as written (relative to the repository root)."""
    if reference.startswith(RUN_PREFIX):
        return str(runs / reference.removeprefix(RUN_PREFIX) / "final")
    return reference


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; a mistake in it is reported before anything trains."""
    path = Path(path)
    spec = json.loads(path.read_text(encoding="utf-8"))
    unknown = set(spec) - EXPERIMENT_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; an experiment has {sorted(EXPERIMENT_KEYS)}.")
    defaults = spec.get("train_defaults", {})
    stages = []
    for stage in spec.get("train", []):
        runs = []
        for entry in stage:
            entry = dict(entry)
            name = entry.pop("name")
            steps_run = entry.pop("steps_run", None)
            from_file = json.loads((path.parent / entry.pop("config")).read_text()) if "config" in entry else {}
            runs.append(TrainRun(name, defaults | from_file | entry, steps_run))
        stages.append(runs)
    experiment = Experiment(
        path=path,
        description=spec.get("description", ""),
        results=spec.get("results"),
        prepare=spec.get("prepare", []),
        train=stages,
        grid=spec.get("grid", []),
        commands=spec.get("commands", []),
    )
    names = [run.name for run in experiment.runs()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two training runs share a name: {names}.")
    references = [run.options.get("init_from") for run in experiment.runs()]
    references += [row.get("checkpoint") for row in experiment.grid]
    for reference in references:
        if (
            isinstance(reference, str)
            and reference.startswith(RUN_PREFIX)
            and reference[len(RUN_PREFIX) :] not in names
        ):
            raise ValueError(f"{path}: {reference} names no training run of this experiment.")
    return experiment


def grid_rows(experiment: Experiment, runs: Path) -> list[GridRow]:
    """The experiment's grid, one row per (label, ratio), checkpoints resolved under ``runs``."""
    rows = []
    for entry in experiment.grid:
        checkpoint = entry.get("checkpoint")
        for ratio in entry.get("ratios") or [None]:
            rows.append(
                GridRow(
                    label=entry["label"],
                    method=entry["method"],
                    ratio=ratio,
                    checkpoint=resolve_checkpoint(checkpoint, runs) if checkpoint else None,
                    datasets=tuple(entry.get("datasets", DEV_SETS)),
                )
            )
    return rows


def eval_command(dataset: str, row: GridRow) -> str:
    """The ``comprexit-rag eval`` call that computes the same row on its own."""
    command = f"comprexit-rag eval {DEV_SETS[dataset]} --method {row.method}"
    if row.ratio is not None:
        command += f" --ratio {row.ratio}"
    if row.checkpoint is not None:
        command += f" --checkpoint {row.checkpoint}"
    return command
