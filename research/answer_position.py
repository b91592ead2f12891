"""At 8x and 16x, do the slots lose answers late in the passage, or lose them everywhere alike?

A head that reads fewer slots could keep a passage's start and drop its end (the slots run out), or blur
the whole passage evenly. This groups the F1 of ``comprexit-rag eval --predictions`` files of the same NQ
gold-passage questions by where the answer's first occurrence starts in the passage (in the backbone's
tokens) and by the passage's length, with each later file's change against the first, question by question:

    comprexit-rag eval --data ../shared/data/nq/nq_open_oracle_2155.jsonl.gz --format nq-open \\
        --method comprexit --ratio R --limit 400 --checkpoint comprexit-smollm2-135m-multi-ratio --predictions F
    python research/answer_position.py 4x=F4.jsonl 8x=F8.jsonl 16x=F16.jsonl --out research/results/answer_position.json

A question whose answers do not occur in its passage (SQuAD-normalised) is counted under "answer not in the
passage".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from transformers import AutoTokenizer

from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.default_model import default_backbone_dir
from comprexit_rag.evaluation.metrics import normalize_answer
from comprexit_rag.evaluation.paired import load_predictions, paired_difference

# Upper bounds (exclusive) of the groups, in tokens.
POSITION_EDGES = (32, 64, 128)
LENGTH_EDGES = (64, 128, 192)
NOT_IN_PASSAGE = "answer not in the passage"


def group(value: int, edges: tuple[int, ...], unit: str) -> str:
    """The name of the group of ``value``: "< 32 tokens", "32-63 tokens", ..., ">= 128 tokens"."""
    lower = 0
    for edge in edges:
        if value < edge:
            return f"< {edge} {unit}" if lower == 0 else f"{lower}-{edge - 1} {unit}"
        lower = edge
    return f">= {lower} {unit}"


def group_names(edges: tuple[int, ...], unit: str) -> list[str]:
    """Every group of ``edges``, in order."""
    return [group(value, edges, unit) for value in (0, *edges)]


def answer_start(text: str, answers: list[str], tokenizer) -> int | None:
    """The token index where the earliest answer occurrence starts in ``text``, or None if none occurs."""
    lowered = text.lower()
    starts = [lowered.find(answer.lower()) for answer in answers if normalize_answer(answer)]
    starts = [start for start in starts if start >= 0]
    if not starts:
        return None
    return len(tokenizer(text[: min(starts)], add_special_tokens=False)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", help="NAME=FILE of `comprexit-rag eval --predictions`")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = {name: load_predictions(path) for name, path in (item.split("=", 1) for item in args.predictions)}
    count = len(next(iter(runs.values())))
    examples = load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "gold", count)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())

    # Each question's group under each grouping, by id.
    orders = {
        "by answer position": [*group_names(POSITION_EDGES, "tokens"), NOT_IN_PASSAGE],
        "by passage length": group_names(LENGTH_EDGES, "tokens"),
    }
    groups: dict[str, dict[str, list[str]]] = {grouping: defaultdict(list) for grouping in orders}
    for example in examples:
        text = example.passages[0].text
        start = answer_start(text, example.answers, tokenizer)
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        position = NOT_IN_PASSAGE if start is None else group(start, POSITION_EDGES, "tokens")
        groups["by answer position"][position].append(example.id)
        groups["by passage length"][group(length, LENGTH_EDGES, "tokens")].append(example.id)

    # Each group's F1 per run, and each later run against the first, question by question.
    report: dict = {"made_by": "the commands of research/answer_position.py's docstring", "questions": count}
    first, *later = runs
    for grouping, order in orders.items():
        report[grouping] = {}
        for key in (key for key in order if key in groups[grouping]):
            ids = groups[grouping][key]
            subset = {name: {i: run[i] for i in ids} for name, run in runs.items()}
            cell: dict = {"n": len(ids)}
            for name in later:
                change = paired_difference(subset[first], subset[name], resamples=1)
                cell[first] = round(100 * change.mean_a, 1)
                cell[name] = round(100 * change.mean_b, 1)
                cell[f"{name} - {first}"] = {
                    "f1": round(100 * change.difference, 1),
                    "se": round(100 * change.standard_error, 1),
                }
            report[grouping][key] = cell
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
