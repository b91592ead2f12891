"""Which weights of a head did a training stage move, and how far? No model, seconds.

For two checkpoints of the same module (``model.safetensors``), each tensor's relative change
``|after - before| / |before|`` (Frobenius norms). Session 35, the lengths run's head across its QA stage
(`git archive 639975d training-state`, then `git archive fdea39e training-state`)::

    python research/weight_change.py --before training-state/lengths-run/pretrain/final \\
        --after training-state/lengths-run/sft/final --out research/results/weight_change_lengths_qa.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from comprexit_rag.checkpoint import load_state_dict


def relative_changes(before: dict, after: dict) -> dict[str, float]:
    if before.keys() != after.keys():
        raise SystemExit(f"The checkpoints hold different tensors: {sorted(before.keys() ^ after.keys())}")
    changes = {}
    for name, start in before.items():
        start, end = start.float(), after[name].float()
        changes[name] = round(((end - start).norm() / start.norm().clamp_min(1e-12)).item(), 4)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkpoint directory before the stage")
    parser.add_argument("--after", required=True, help="the same module's checkpoint after it")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    changes = relative_changes(load_state_dict(args.before), load_state_dict(args.after))
    for name, change in sorted(changes.items(), key=lambda item: -item[1]):
        print(f"{name:40s} {change:.3f}")
    if args.out:
        report = {"before": args.before, "after": args.after, "relative_change": changes}
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
