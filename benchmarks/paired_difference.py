"""Is system B better than system A on the same questions? A paired difference of two prediction files.

    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open --method comprexit \
        --predictions a.jsonl
    comprexit-rag eval ... --checkpoint <other head> --predictions b.jsonl
    python benchmarks/paired_difference.py a.jsonl b.jsonl --out difference.json

Prints and writes, for EM, F1 and containment: both means, the mean per-question difference (B - A), its
standard error, a 95% bootstrap interval, and how many questions each side wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from comprexit_rag.evaluation.paired import METRICS, load_predictions, paired_difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="predictions of the reference system (comprexit-rag eval --predictions)")
    parser.add_argument("b", type=Path, help="predictions of the system compared with it, on the same questions")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON")
    args = parser.parse_args()

    a, b = load_predictions(args.a), load_predictions(args.b)
    rows = [paired_difference(a, b, metric, resamples=args.resamples).as_dict() for metric in METRICS]
    for row in rows:
        print(
            f"{row['metric']:>8}: A {100 * row['mean_a']:.1f}  B {100 * row['mean_b']:.1f}  "
            f"B-A {100 * row['difference']:+.1f} (se {100 * row['standard_error']:.1f}, "
            f"95% [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}])  "
            f"wins B {row['b_better']} / A {row['a_better']} / ties {row['ties']}"
        )
    if args.out:
        record = {"command": "python " + " ".join(sys.argv), "a": str(args.a), "b": str(args.b), "metrics": rows}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
