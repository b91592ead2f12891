"""Is a low F1 a reading failure or an answer-form mismatch? F1 by question form, and answer lengths.

PolicyQA's gold answers are spans of a privacy policy (11 words on average), but most of its questions are
phrased for a yes or no ("Does the website collect my information?"). A reader trained on short-answer QA
answers those "yes", which scores no token overlap with the span; the frozen reader writes a sentence that
overlaps it. This splits F1 by whether a question is phrased for a yes or no, and counts the answers'
words and the "yes"/"no" answers, for prediction files of ``comprexit-rag eval --predictions``::

    python research/answer_form.py own=P1.jsonl raw-adapter=P2.jsonl raw-frozen=P3.jsonl --out F.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from comprexit_rag.evaluation.metrics import f1_score

# First words of a question phrased for a yes or no.
YES_NO_OPENERS = frozenset(
    [
        "do",
        "does",
        "did",
        "is",
        "are",
        "was",
        "were",
        "can",
        "could",
        "will",
        "would",
        "should",
        "shall",
        "has",
        "have",
        "had",
        "may",
        "might",
        "must",
    ]
)


def asks_yes_or_no(question: str) -> bool:
    words = question.strip().lower().split()
    return bool(words) and words[0] in YES_NO_OPENERS


def summarise(records: list[dict]) -> dict:
    """F1 (x100) over all records and by question form; mean words of predictions and gold answers."""

    def mean_f1(rows: list[dict]) -> float | None:
        if not rows:
            return None
        return round(100 * statistics.mean(f1_score(row["prediction"], tuple(row["answers"])) for row in rows), 1)

    yes_no = [row for row in records if asks_yes_or_no(row["question"])]
    other = [row for row in records if not asks_yes_or_no(row["question"])]
    return {
        "questions": len(records),
        "f1": mean_f1(records),
        "yes_no_phrased": {"questions": len(yes_no), "f1": mean_f1(yes_no)},
        "other_questions": {"questions": len(other), "f1": mean_f1(other)},
        "answers_yes_or_no": sum(row["prediction"].strip().lower().rstrip(".!") in ("yes", "no") for row in records),
        "prediction_words": round(statistics.mean(len(row["prediction"].split()) for row in records), 1),
        "gold_words": round(
            statistics.mean(statistics.mean(len(answer.split()) for answer in row["answers"]) for row in records), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", help="NAME=FILE: a prediction file and its row's name")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = {}
    for item in args.predictions:
        name, _, path = item.partition("=")
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        rows[name] = summarise(records)
    report = {"command": "python research/answer_form.py " + " ".join(args.predictions) + f" --out {args.out}"}
    report["rows"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, row in rows.items():
        print(
            f"{name:14s} F1 {row['f1']:5.1f}  yes/no-phrased {row['yes_no_phrased']['f1']:5.1f}  "
            f"other {row['other_questions']['f1']:5.1f}  words {row['prediction_words']:4.1f}  "
            f"'yes'/'no' answers {row['answers_yes_or_no']}"
        )


if __name__ == "__main__":
    main()
