"""Held-out reading tasks: when the answer is wrong, is it the wrong place, the wrong length or the wrong words?

On the held-out reading tasks (span cloze and "what follows", ``comprexit_rag.evaluation.reading_tasks``) the
shipped slots reach 0.74x of the same-budget text reader's F1 but hold the exact span a third as often
(BENCHMARKS.md, session 22). This sorts every answer by how it meets the gold span, in SQuAD-normalised text:

* **exact**; **ran on** (the span, then more of the window); **stopped short** (a start of the span);
* **starts right, then other words**: its first word is the span's, but it is not the window's text from there on
  (a word changed, dropped or added);
* **another place**: the window's text, word for word, starting elsewhere (``offset``: how many words from the
  span's start);
* **not the window's text**: its first word is not the span's, and its words stand nowhere in the window.

Each reader answers from its own context only: the head's slots, the raw window through the head's adapter, and
(``--full-lora``) the raw window through the same-budget text reader's adapter::

    python research/span_boundaries.py --full-lora <full-lora final/> --out research/results/span_boundaries.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import QAExample
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import FullText, build_method
from comprexit_rag.evaluation.metrics import normalize_answer
from comprexit_rag.evaluation.reading_tasks import READING_TASK_KINDS, held_out_reading_tasks, task_kind
from comprexit_rag.reading.reader import Reader

CLASSES = (
    "exact",
    "ran on",
    "stopped short",
    "starts right, then other words",
    "another place",
    "not the window's text",
    "empty",
)


def classify(prediction: str, gold: str, window: str) -> tuple[str, int | None]:
    """The class of ``prediction`` against ``gold`` (see the module's docstring) and, for an answer from another
    place of the window, its offset in words from the span's start."""
    said, span, text = normalize_answer(prediction), normalize_answer(gold), normalize_answer(window)
    if not said:
        return "empty", None
    if said == span:
        return "exact", None
    if said.startswith(span):
        return "ran on", None
    if span.startswith(said):
        return "stopped short", None
    if said.split()[:1] == span.split()[:1]:  # (a span of punctuation alone normalises to nothing)
        return "starts right, then other words", None
    found, span_at = text.find(said), text.find(span)
    if found < 0 or span_at < 0:
        return "not the window's text", None
    return "another place", len(text[:found].split()) - len(text[:span_at].split())


class Sorted(NamedTuple):
    """One answer, sorted: its task's kind, its class and offset (:func:`classify`), the answer and the span."""

    kind: str
    cls: str
    offset: int | None
    answer: str
    span: str


def summarise(predictions: list[str], examples: list[QAExample]) -> dict:
    """Share of each class, by kind of task and in all, and the answers' and spans' mean lengths in words."""
    rows = [
        Sorted(task_kind(e), *classify(p, e.answers[0], e.passages[0].text), p, e.answers[0])
        for p, e in zip(predictions, examples, strict=True)
    ]
    report: dict = {}
    for kind in ("all", *READING_TASK_KINDS):
        chosen = [row for row in rows if kind in ("all", row.kind)]
        offsets = [abs(row.offset) for row in chosen if row.offset is not None]
        report[kind] = {
            "n": len(chosen),
            **{name: round(sum(row.cls == name for row in chosen) / len(chosen), 3) for name in CLASSES},
            "median_abs_offset_words": statistics.median(offsets) if offsets else None,
            "answer_words": round(statistics.mean(len(normalize_answer(row.answer).split()) for row in chosen), 1),
            "span_words": round(statistics.mean(len(normalize_answer(row.span).split()) for row in chosen), 1),
        }
    report["examples"] = [
        {"kind": row.kind, "class": row.cls, "offset": row.offset, "answer": row.answer, "span": row.span}
        for row in rows[:12]
    ]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="ComprExIT checkpoint with its reader adapter (default: the shipped one)")
    parser.add_argument("--full-lora", help="a full-lora checkpoint: its adapter reads the raw windows too")
    parser.add_argument("--tasks", type=int, default=200, help="held-out reading tasks (slot_quality.py's 200)")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    examples = held_out_reading_tasks(backbone.tokenizer, args.tasks)
    slots = build_method("comprexit", backbone, args.ratio, args.head)
    head_reader = Reader(backbone, adapter=slots.reader_adapter)
    readers = {"slots": (slots, head_reader), "raw text, head's adapter": (FullText(backbone), head_reader)}
    if args.full_lora:
        text_reader = build_method("full-lora", backbone, args.ratio, args.full_lora)
        readers["raw text, full-lora"] = (text_reader, Reader(backbone, adapter=text_reader.reader_adapter))
    report: dict = {"command": "python " + " ".join(sys.argv)}
    for name, (method, reader) in readers.items():
        scored = evaluate(method, reader, examples, ratio=args.ratio, batch_size=args.batch_size)
        report[name] = {"f1": round(scored.f1, 4), **summarise(scored.predictions, examples)}
        logging.info("%s: %s", name, report[name]["all"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
