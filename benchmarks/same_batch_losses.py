"""Two runs on the same batches, compared step by step: an early read of a change before its run ends.

A QA stage draws each step's batch from (seed, step) alone (``trainer.draw_batch``), so two runs of one
stage config and seed that differ in one option train on identical batches, and each logged step's loss
(the trainer logs every 10th) compares like with like. Early in a stage most of a step's examples have
not been drawn before (session 12's stage draws about 21,000 QA examples from 18,468 over its 918 steps), so
its loss is largely read on examples the run has not trained on: a held-out reading while the run trains.

The losses must measure the same thing: a term only the run has is taken out of its loss with
``--leave-out TERM=WEIGHT`` (the run's ``terms`` give each term before its weight). The two logs must
draw the same objective at every shared step, or they are not on the same batches and the script stops::

    python benchmarks/same_batch_losses.py \\
        --run benchmarks/results/reader_adapter/session40/curves/sft-passage-reconstruction.jsonl \\
        --control benchmarks/results/reader_adapter/session12/curves/sft-mixed-918-steps.jsonl \\
        --leave-out passage_reconstruction=0.5 \\
        --out benchmarks/results/reader_adapter/session40/same-batch-losses.json

The report gives, per objective, the mean of (run - control) over the shared steps, its standard error over
steps, and each step's pair; ``--from-step`` leaves out the warm-up and ``--until-step`` compares a finished run
with one still running over the steps both have reached.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


def read_steps(path: Path) -> dict[int, dict]:
    """The logged steps of a run's ``log.jsonl`` (its summary lines have no ``step``), by step."""
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {record["step"]: record for record in records if "step" in record}


def comparable_loss(record: dict, left_out: dict[str, float]) -> float:
    """The step's loss less the weighted terms the control does not have."""
    terms = record.get("terms", {})
    return record["loss"] - sum(weight * terms.get(term, 0.0) for term, weight in left_out.items())


def compare(
    run: dict[int, dict],
    control: dict[int, dict],
    left_out: dict[str, float],
    from_step: int = 0,
    until_step: int | None = None,
) -> dict:
    """Per objective, the run's loss (less ``left_out``) against the control's over the logged steps both have
    in ``[from_step, until_step]``."""
    last = max(run.keys() | control.keys()) if until_step is None else until_step
    steps = sorted(step for step in run.keys() & control.keys() if from_step <= step <= last)
    logged = {term for step in steps for term in run[step].get("terms", {})}
    if missing := sorted(set(left_out) - logged):
        # Left out of no step, a term would leave the run's loss as it is and the comparison would look valid.
        raise SystemExit(f"the run's log has no term {missing} at the compared steps (logged: {sorted(logged)})")
    mismatched = [step for step in steps if run[step]["objective"] != control[step]["objective"]]
    if mismatched:
        raise SystemExit(
            f"the runs drew other objectives at steps {mismatched[:5]}: they are not on the same batches "
            "(same stage config, seed and batch size?)"
        )
    pairs: dict[str, list[dict]] = defaultdict(list)
    for step in steps:
        pairs[run[step]["objective"]].append(
            {"step": step, "run": round(comparable_loss(run[step], left_out), 4), "control": control[step]["loss"]}
        )
    report = {}
    for objective, rows in sorted(pairs.items()):
        differences = [row["run"] - row["control"] for row in rows]
        spread = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else None
        report[objective] = {
            "steps": len(rows),
            "run_mean": round(statistics.fmean(row["run"] for row in rows), 4),
            "control_mean": round(statistics.fmean(row["control"] for row in rows), 4),
            "difference": round(statistics.fmean(differences), 4),
            "standard_error": None if spread is None else round(spread, 4),
            "pairs": rows,
        }
    return report


def weighted_term(text: str) -> tuple[str, float]:
    term, _, weight = text.partition("=")
    if not term or not weight:
        raise argparse.ArgumentTypeError(f"expected TERM=WEIGHT (e.g. passage_reconstruction=0.5), got {text!r}")
    return term, float(weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the changed run's log.jsonl")
    parser.add_argument("--control", type=Path, required=True, help="the control's log.jsonl (same batches)")
    parser.add_argument(
        "--leave-out",
        type=weighted_term,
        nargs="*",
        default=[],
        metavar="TERM=WEIGHT",
        help="terms of the run's loss that the control's loss lacks, with their weights",
    )
    parser.add_argument("--from-step", type=int, default=0, help="compare logged steps from this one on")
    parser.add_argument("--until-step", type=int, help="and up to this one (default: the last both logged)")
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = parser.parse_args()
    report = {
        "run": str(args.run),
        "control": str(args.control),
        "left_out": dict(args.leave_out),
        "from_step": args.from_step,
        "until_step": args.until_step,
        "objectives": compare(
            read_steps(args.run), read_steps(args.control), dict(args.leave_out), args.from_step, args.until_step
        ),
    }
    for objective, result in report["objectives"].items():
        means = f"run {result['run_mean']:.3f}, control {result['control_mean']:.3f}"
        print(
            f"{objective}: {result['steps']} steps, {means}, "
            f"difference {result['difference']:+.3f} (se {result['standard_error']})"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
