"""Evaluate an experiment's grid (dataset x method x ratio) on the held-out dev splits in one process.

Every row equals one ``comprexit-rag eval`` call (read through the reader adapter of the row's
checkpoint, if it has one); loading the backbone once makes the grid cheap enough for one GPU
session. The rows come from the ``grid`` list of an experiment file (``experiments/*.json``, see
``benchmarks/run_experiment.py``, which calls this after training); a row's checkpoint ``run:NAME``
is ``CHECKPOINTS/NAME/final``. Rows are appended to a JSON-lines file as they finish.

    python benchmarks/run_grid.py experiments/round4.json --checkpoints RUNS_DIR --out grid.jsonl [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from benchmark_environment import DEV_SETS, append_jsonl, eval_command, grid_rows, load_experiment

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import build_method
from comprexit_rag.reading.reader import Reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="experiment file whose grid rows to run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--predictions", help="JSON lines of every prediction")
    parser.add_argument("--checkpoints", required=True, help="directory holding the experiment's trained runs")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--datasets", nargs="+", default=list(DEV_SETS))
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--limit", type=int, help="first N dev examples per dataset (smoke runs)")
    parser.add_argument("--ratios", type=int, nargs="*", help="ratios to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = grid_rows(load_experiment(args.experiment), Path(args.checkpoints))
    backbone = Backbone.from_pretrained(device=args.device)
    examples = {name: load_split(name, "dev")[: args.limit] for name in args.datasets}
    for row in rows:
        if args.only and row.label not in args.only:
            continue
        if args.ratios and row.ratio is not None and row.ratio not in args.ratios:
            continue
        for dataset in args.datasets:
            if dataset not in row.datasets:
                continue
            started = time.perf_counter()
            try:
                method = build_method(row.method, backbone, row.ratio or 4, row.checkpoint)
                reader = Reader(backbone, adapter=method.reader_adapter)
                result = evaluate(
                    method, reader, examples[dataset], ratio=row.ratio, batch_size=args.batch_size, show_progress=False
                )
            except Exception as error:  # one broken row must not cost the rest of the grid
                logging.exception("row %s/%s failed", dataset, row.label)
                append_jsonl(
                    args.out, {"dataset": dataset, "label": row.label, "ratio": row.ratio, "error": repr(error)}
                )
                continue
            command = eval_command(dataset, row) + " --json"
            append_jsonl(args.out, {"dataset": dataset, "label": row.label, **result.summary(), "command": command})
            if args.predictions:
                for example, prediction in zip(examples[dataset], result.predictions, strict=True):
                    record = {"dataset": dataset, "label": row.label, "ratio": row.ratio, "id": example.id}
                    append_jsonl(args.predictions, record | {"prediction": prediction})  # gold answers stay in the data
            print(
                f"{dataset:9s} {row.label:14s} r={row.ratio!s:4s} F1={result.f1:.3f} EM={result.em:.3f} "
                f"acc={result.accuracy:.3f} ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
