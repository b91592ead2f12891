"""Build the BENCHMARKS.md quality table and the F1-vs-ratio plot from prediction files.

Every row is re-scored from its predictions on the examples that *all* rows of a dataset
answered, so rows measured in different runs (GPU grid, CPU subset) compare on equal terms.
Gold answers are read from the data (prediction files hold ids and predictions only; the committed
ones of rounds 2-6 are in git history, see benchmarks/results/README.md).

    python benchmarks/summarize.py runs/results/predictions.jsonl --table quality.md --plot f1_vs_ratio.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from comprexit_rag.data import load_split
from comprexit_rag.evaluation.metrics import answer_contained, exact_match, f1_score


def load(paths: list[str]) -> dict[tuple[str, str, int | None], dict[str, dict]]:
    rows: dict[tuple[str, str, int | None], dict[str, dict]] = defaultdict(dict)
    for path in paths:
        with open(path) as handle:
            for line in handle:
                record = json.loads(line)
                rows[(record["dataset"], record["label"], record["ratio"])][record["id"]] = record
    return rows


def score(rows: dict, ids: set[str], golds: dict[str, tuple[str, ...]]) -> dict[str, float]:
    pairs = [(rows[i]["prediction"], golds[i]) for i in sorted(ids)]
    count = len(pairs)
    return {
        "em": 100 * sum(exact_match(p, g) for p, g in pairs) / count,
        "f1": 100 * sum(f1_score(p, g) for p, g in pairs) / count,
        "accuracy": 100 * sum(answer_contained(p, g) for p, g in pairs) / count,
        "n": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+")
    parser.add_argument("--table", required=True)
    parser.add_argument("--plot")
    args = parser.parse_args()

    rows = load(args.predictions)
    datasets = sorted({key[0] for key in rows})
    lines = ["| dataset | method | ratio | EM | F1 | accuracy | n |", "|---|---|---|---|---|---|---|"]
    curves: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    levels: dict[tuple[str, str], float] = {}
    for dataset in datasets:
        golds = {example.id: example.answers for example in load_split(dataset, "dev")}
        keys = sorted((k for k in rows if k[0] == dataset), key=lambda k: (k[1], k[2] or 0))
        common = set.intersection(*(set(rows[k]) for k in keys))
        for key in keys:
            result = score(rows[key], common, golds)
            ratio = "-" if key[2] is None else f"{key[2]}x"
            lines.append(
                f"| {dataset} | {key[1]} | {ratio} | {result['em']:.1f} | {result['f1']:.1f} "
                f"| {result['accuracy']:.1f} | {result['n']} |"
            )
            if key[2] is not None:
                curves[(dataset, key[1])].append((key[2], result["f1"]))
            else:
                levels[(dataset, key[1])] = result["f1"]
    with open(args.table, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # One colour per method across both panels.
        names = sorted({label for _, label in curves} | {label for _, label in levels})
        colour = {label: f"C{index % 10}" for index, label in enumerate(names)}
        figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for axis, dataset in zip(axes[0], datasets, strict=True):
            for (name, label), points in sorted(curves.items()):
                if name != dataset:
                    continue
                points.sort()
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour[label], label=label)
            # Methods without a ratio (full text, closed book, ...) are horizontal reference lines.
            for (name, label), f1 in sorted(levels.items()):
                if name == dataset:
                    axis.axhline(f1, linestyle="--", linewidth=1, color=colour[label], label=label)
            axis.set_xscale("log", base=2)
            axis.set_xlabel("compression ratio")
            axis.set_ylabel("F1 (%)")
            axis.set_title(dataset)
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
