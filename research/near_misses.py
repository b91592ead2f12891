"""Where do the slots lose to the raw text? A question-by-question comparison of two `eval` runs.

Reads two ``comprexit-rag eval --predictions`` files over the same questions (e.g. the shipped head at 4x
and the same-budget ``full-lora`` reader on the raw passage) and sorts the questions that the second run
answers (F1 >= 0.5) and the first does not by what the first said instead:

* **same kind, wrong value**: a number or date for a numeric answer (``1981`` for ``1982``), or a name
  (capitalised words) for a name: the slots kept what sort of thing the passage says, not which one;
* **other**: a different kind of answer, an empty one, or a paraphrase the metric misses;

and by whether what the first said occurs in the question's passages (the dev split of ``--family``):
if it does, the reader read the passage and took the wrong span of it; if not, it made the value up.

    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open \\
        --method comprexit --limit 100 --predictions /tmp/slots.jsonl
    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open \\
        --method full-lora --checkpoint <full-lora final/> --limit 100 --predictions /tmp/text.jsonl
    python research/near_misses.py --slots /tmp/slots.jsonl --text /tmp/text.jsonl \\
        --out research/results/near_misses.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from comprexit_rag.data import load_split
from comprexit_rag.evaluation.metrics import f1_score, normalize_answer

ANSWERED = 0.5
NUMBER = re.compile(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million)\b", re.I)
NAME = re.compile(r"\b[A-Z][a-z]")


def kind(answer: str) -> str:
    """``number`` (digits or number words), ``name`` (a capitalised word) or ``other``."""
    if NUMBER.search(answer):
        return "number"
    if NAME.search(answer):
        return "name"
    return "other"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=Path, required=True, help="predictions of the compressed run")
    parser.add_argument("--text", type=Path, required=True, help="predictions of the raw-text run, same questions")
    parser.add_argument("--family", default="nq", help="the dev split the predictions read (default: nq)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    passages = {
        example.question: normalize_answer(" ".join(passage.formatted() for passage in example.passages))
        for example in load_split(args.family, "dev")
    }

    slots, text = read(args.slots), read(args.text)
    if [row["id"] for row in slots] != [row["id"] for row in text]:
        raise SystemExit("The two files hold different questions (or another order); run both with the same --limit.")
    lost, won, both_wrong = [], 0, 0
    for compressed, raw in zip(slots, text, strict=True):
        slot_f1 = f1_score(compressed["prediction"], raw["answers"])
        text_f1 = f1_score(raw["prediction"], raw["answers"])
        if slot_f1 < ANSWERED <= text_f1:
            gold_kind = kind(raw["answers"][0])
            said = kind(compressed["prediction"])
            lost.append(
                {
                    "question": raw["question"],
                    "answers": raw["answers"],
                    "slots": compressed["prediction"],
                    "text": raw["prediction"],
                    "answer_kind": gold_kind,
                    "same_kind_wrong_value": gold_kind != "other" and said == gold_kind,
                    "slots_answer_in_passage": normalize_answer(compressed["prediction"]) in passages[raw["question"]],
                }
            )
        elif text_f1 < ANSWERED <= slot_f1:
            won += 1
        elif max(slot_f1, text_f1) < ANSWERED:
            both_wrong += 1
    same_kind = sum(row["same_kind_wrong_value"] for row in lost)
    report = {
        "questions": len(slots),
        "slots_f1": round(100 * sum(f1_score(r["prediction"], r["answers"]) for r in slots) / len(slots), 1),
        "text_f1": round(100 * sum(f1_score(r["prediction"], r["answers"]) for r in text) / len(text), 1),
        "text_answers_slots_do_not": len(lost),
        "of_which_same_kind_wrong_value": same_kind,
        "of_which_slots_answer_in_passage": sum(row["slots_answer_in_passage"] for row in lost),
        "by_answer_kind": {k: sum(row["answer_kind"] == k for row in lost) for k in ("number", "name", "other")},
        "slots_answer_text_does_not": won,
        "neither_answers": both_wrong,
        "lost": lost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "lost"}, indent=1))


if __name__ == "__main__":
    main()
