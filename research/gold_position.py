"""Among retrieved passages, does it matter where the gold passage stands?

``comprexit-rag eval --retrieved-distractors 4`` reads each NQ dev question's gold passage among the 4
NQ-open passages closest to the question, at a position drawn from the question's id. This groups the F1
of such runs by that position, from their ``--predictions`` files, and counts the questions whose answer
also appears in a distractor (SQuAD-normalised substring):

    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open \\
        --method comprexit --retrieved-distractors 4 --limit 100 --predictions /tmp/slots.jsonl
    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open \\
        --method full --reader-adapter comprexit_rag/pretrained/comprexit-smollm2-135m \\
        --retrieved-distractors 4 --limit 100 --predictions /tmp/full.jsonl
    python research/gold_position.py --predictions slots=/tmp/slots.jsonl "raw text=/tmp/full.jsonl" \\
        --out research/results/gold_position.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.evaluation.metrics import f1_score, normalize_answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", nargs="+", required=True, help="NAME=FILE of `comprexit-rag eval`")
    parser.add_argument("--distractors", type=int, default=4, help="the runs' --retrieved-distractors")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = dict(item.split("=", 1) for item in args.predictions)
    predictions = {name: list(map(json.loads, Path(path).read_text().splitlines())) for name, path in runs.items()}
    count = len(next(iter(predictions.values())))
    examples = load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "distractor", count, args.distractors)

    report: dict = {"made_by": "the commands of research/gold_position.py's docstring", "distractors": args.distractors}
    for name, rows in predictions.items():
        by_position = defaultdict(list)
        for example, row in zip(examples, rows, strict=True):
            if row["id"] != example.id:
                raise SystemExit(f"{runs[name]} does not follow the examples' order (at {example.id}).")
            by_position[example.supporting[0]].append(f1_score(row["prediction"], example.answers))
        report[name] = {
            f"gold at {position}": {"n": len(scores), "f1": round(100 * sum(scores) / len(scores), 1)}
            for position, scores in sorted(by_position.items())
        }
    report["answer_in_a_distractor"] = sum(
        any(
            normalize_answer(answer) in normalize_answer(passage.text)
            for answer in example.answers
            for index, passage in enumerate(example.passages)
            if index != example.supporting[0]
        )
        for example in examples
    )
    report["questions"] = len(examples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
