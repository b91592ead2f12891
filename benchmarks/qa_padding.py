"""How much of a QA stage's reading is padding: padded over real tokens of its batches, by pass budget.

A reading pass pads every row to its longest (passage tokens + target). The mixed QA stage mixes
single passages with 10- and 20-paragraph questions, so a batch read at once is mostly padding;
:func:`comprexit_rag.training.passes.reading_passes` cuts it into passes of at most N padded tokens,
grouping examples by length. This draws the first ``--steps`` batches of an experiment config exactly
as the trainer does (same seeds) and reports, for each budget, padded tokens / real tokens and the mean
number of passes per step, next to cutting the batch in its sampled order. No model runs: only the
tokenizer and the data::

    HF_HUB_OFFLINE=1 python benchmarks/qa_padding.py --config experiments/reader_adapter/sft-4x-mixed.json \
        --out benchmarks/results/qa_padding.json
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.training.config import TrainConfig
from comprexit_rag.training.examples import TrainExample
from comprexit_rag.training.passes import cut_in_order, reading_passes, row_tokens
from comprexit_rag.training.trainer import make_sampler


def padded(passes: list[list[TrainExample]]) -> int:
    return sum(len(part) * max(row_tokens(example) for example in part) for part in passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="experiment file of a training stage")
    parser.add_argument("--steps", type=int, default=400, help="batches drawn (steps 0 .. N-1)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16_384, 32_768, 65_536])
    parser.add_argument("--data", help="data directory (default: $COMPREXIT_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    config = TrainConfig(**json.loads(args.config.read_text()), output_dir="unused", data_root=args.data)
    backbone = Backbone.from_pretrained(device="cpu")  # for its tokenizer
    sample, _ = make_sampler(replace(config, max_pass_tokens=None), backbone)
    batches = []
    for step in range(args.steps):
        rng = random.Random(config.seed * 1_000_003 + step * 101)  # the trainer's seed for micro-batch 0
        rng.choice(config.ratios)
        batches.append(sample(rng)[0])
    real = sum(row_tokens(example) for batch in batches for example in batch)
    rows = [{"max_pass_tokens": None, "padded_over_real": round(sum(padded([b]) for b in batches) / real, 3)}]
    for budget in args.budgets:
        grouped = [reading_passes(batch, budget) for batch in batches]
        ordered = [cut_in_order(batch, budget) for batch in batches]  # how passes were cut before session 10
        rows.append(
            {
                "max_pass_tokens": budget,
                "padded_over_real": round(sum(map(padded, grouped)) / real, 3),
                "passes_per_step": round(sum(map(len, grouped)) / len(batches), 2),
                "in_sampled_order_padded_over_real": round(sum(map(padded, ordered)) / real, 3),
                "in_sampled_order_passes_per_step": round(sum(map(len, ordered)) / len(batches), 2),
            }
        )
    result = {
        "command": f"python benchmarks/qa_padding.py --config {args.config} --steps {args.steps} "
        f"--budgets {' '.join(map(str, args.budgets))}",
        "config": str(args.config),
        "steps": args.steps,
        "real_tokens_per_step": round(real / len(batches)),
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
