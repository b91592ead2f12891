"""Operator calls a QA-stage training step dispatches, at several batch sizes (CPU, real SmolLM2).

A step's GPU time is set by its work or by the host that dispatches it. This counts the aten operator
calls of a few steps of a QA stage config (``torch.profiler``; nested calls, e.g. ``aten::linear`` and
the ``aten::addmm`` inside it, each count) at each ``--batch-sizes`` value, from the shipped head. If the
count does not grow with the batch, the host's share of a step is fixed, and a larger batch spreads it
over more examples (the case for ``experiments/reader-adapter-qa-batch128.json``)::

    HF_HUB_OFFLINE=1 python benchmarks/qa_step_ops.py --out benchmarks/results/qa_step_ops_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from benchmark_environment import machine_environment
from torch.profiler import ProfilerActivity, profile

from comprexit_rag.backbone import Backbone
from comprexit_rag.methods.comprexit.head import DEFAULT_HEAD
from comprexit_rag.training.config import TrainConfig
from comprexit_rag.training.trainer import train


def count_ops(options: dict, backbone: Backbone) -> dict:
    """Aten operator calls per step of a fresh run of ``options`` (its steps and timings)."""
    with tempfile.TemporaryDirectory() as output, profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        summary = train(TrainConfig(**options, output_dir=output), backbone)
        seconds = time.perf_counter() - started
    steps = summary["steps"]
    events = profiler.key_averages()
    return {
        "batch_size": options["batch_size"],
        "steps": steps,
        "aten_calls_per_step": round(sum(e.count for e in events if e.key.startswith("aten::")) / steps),
        "seconds_per_step_cpu_profiled": round(seconds / steps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/reader_adapter/sft-4x-mixed.json")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    backbone = Backbone.from_pretrained(device="cpu")
    base = json.loads(Path(args.config).read_text())
    # One Wikipedia shard is enough for a few steps' text windows (all of them take a minute to tokenise).
    # Another method's module starts fresh: the operators a step dispatches do not depend on its weights.
    base.update(
        max_steps=args.steps,
        warmup_steps=1,
        log_every=1,
        init_from=str(DEFAULT_HEAD) if base["method"] == "comprexit" else None,
        seed=0,
        wikipedia=["wiki/enwiki_2015_AB_shard0.txt.gz"],
    )
    results = [count_ops(base | {"batch_size": batch}, backbone) for batch in args.batch_sizes]
    report = {
        "command": "python benchmarks/qa_step_ops.py "
        + " ".join(
            f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in vars(args).items()
        ),
        "config": args.config,
        "environment": machine_environment(backbone.device),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for row in results:
        logging.info("batch %d: %d aten calls a step", row["batch_size"], row["aten_calls_per_step"])


if __name__ == "__main__":
    main()
