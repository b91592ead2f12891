"""Run the benchmark grid (dataset x method x ratio) on the held-out dev splits in one process.

Every row equals one ``comprexit-rag eval`` call; loading the backbone once makes the grid
cheap enough for one GPU session. Rows are appended to a JSON-lines file as they finish.

    python benchmarks/run_grid.py --out results.jsonl --checkpoints RUNS_DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import build_method
from comprexit_rag.reading.reader import Reader

DATASETS = {
    "nq": ("nq", "--data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open"),
    "hotpotqa": ("hotpotqa", "--data ../shared/data/hotpotqa/dev_distractor_350.jsonl --format hotpotqa"),
}
ROUND6_ARMS = ("local", "bounded", "bounded-recon")
# (row label, method, ratio, checkpoint sub-directory of --checkpoints or None for no trained part)
GRID = [
    *[("comprexit", "comprexit", r, "comprexit-mixed/final") for r in (4, 8, 16)],
    ("full-tuned", "full-tuned", None, "full-tuned/final"),
    ("full", "full", None, None),
    ("closed-book", "closed-book", None, None),
    *[("mean-pool", "mean-pool", r, "mean-pool/final") for r in (4, 8, 16)],
    *[("truncate", "truncate", r, None) for r in (4, 8, 16)],
    *[(f"comprexit-r{r}", "comprexit", r, f"comprexit-r{r}/final") for r in (4, 8, 16)],
    *[("comi", "comi", r, "comi/final") for r in (4, 8, 16, 32)],
    # Transport window size: the shipped head continued for the same steps with W = 64, 128, 256.
    *[(f"comprexit-w{w}", "comprexit", r, f"comprexit-w{w}/final") for w in (64, 128, 256) for r in (4, 8, 16)],
    # Round 5: fresh heads of three designs (benchmarks/gpu/round5.sh at commit 45fe0c6), mixed-ratio and 4x-only.
    *[(f"round5-{d}", "comprexit", r, f"comprexit-{d}/final") for d in ("raw", "local", "gated") for r in (4, 8, 16)],
    *[(f"round5-{d}-r4", "comprexit", 4, f"comprexit-{d}-r4/final") for d in ("raw", "local", "gated")],
    # Round 6: the standardised + local design trained longer, with and without a slot-norm bound.
    *[(f"round6-{d}", "comprexit", r, f"round6-{d}/final") for d in ROUND6_ARMS for r in (4, 8, 16)],
    # ... and the `local` head's QA fine-tuning continued (benchmarks/gpu/round6_more_qa.sh).
    *[("round6-local-more-qa", "comprexit", r, "round6-local-more-qa/final") for r in (4, 8, 16)],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--predictions", help="JSON lines of every prediction")
    parser.add_argument("--checkpoints", required=True, help="directory holding the trained runs")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--limit", type=int, help="first N dev examples per dataset (smoke runs)")
    parser.add_argument("--ratios", type=int, nargs="*", help="ratios to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    backbone = Backbone.from_pretrained(device=args.device)
    reader = Reader(backbone)
    examples = {name: load_split(DATASETS[name][0], "dev")[: args.limit] for name in args.datasets}
    for label, method_name, ratio, checkpoint in GRID:
        if args.only and label not in args.only:
            continue
        if args.ratios and ratio is not None and ratio not in args.ratios:
            continue
        path = str(Path(args.checkpoints) / checkpoint) if checkpoint else None
        for dataset in args.datasets:
            started = time.perf_counter()
            command = f"comprexit-rag eval {DATASETS[dataset][1]} --method {method_name}"
            command += (f" --ratio {ratio}" if ratio else "") + (f" --checkpoint {checkpoint}" if checkpoint else "")
            try:
                method = build_method(method_name, backbone, ratio or 4, path)
                result = evaluate(
                    method, reader, examples[dataset], ratio=ratio, batch_size=args.batch_size, show_progress=False
                )
            except Exception as error:  # one broken row must not cost the rest of the grid
                logging.exception("row %s/%s failed", dataset, label)
                append(args.out, {"dataset": dataset, "label": label, "ratio": ratio, "error": repr(error)})
                continue
            append(args.out, {"dataset": dataset, "label": label, **result.summary(), "command": command + " --json"})
            if args.predictions:
                for example, prediction in zip(examples[dataset], result.predictions, strict=True):
                    record = {"dataset": dataset, "label": label, "ratio": ratio, "id": example.id}
                    append(args.predictions, record | {"prediction": prediction})  # gold answers stay in the data
            print(
                f"{dataset:9s} {label:14s} r={ratio!s:4s} F1={result.f1:.3f} EM={result.em:.3f} "
                f"acc={result.accuracy:.3f} ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )


def append(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
