"""Is a head's QA loss at high ratios in what the slots hold, or in how the reader answers from them?

At 16x the multi-ratio head answers NQ at 27.8 F1 where the raw text through its adapter reads 59.0, yet
teacher-forced it regenerates the answer span's tokens from the slots at 70% top-1 (session 29). This
separates the two losses without training anything. For the first N NQ dev questions with their gold
passage, through the head's own adapter:

* **slots**: the answer read from the passage's slots, as ``comprexit-rag eval`` reads it;
* **regenerated**: the reader first writes the passage out from its slots (greedy, under the
  reconstruction prompt the head was pretrained with), then answers from that text;
* **regenerated, another question's**: the same, from the text regenerated from the next question's slots
  (the content gap of this path);
* **raw text** and **closed-book**: the references.

If "regenerated" reads well above "slots", the facts survive compression and the reader's direct answer
from slots is what loses them; if it reads no better, the slots do not hold them. Regeneration costs a
passage's length in decoding steps, so this is a diagnostic, not a way to read. CPU, 35-45 minutes for
400 questions at one ratio (the first 100 alone can mislead: session 31's did)::

    HF_HUB_OFFLINE=1 python research/regenerate_then_read.py --head comprexit-smollm2-135m-multi-ratio \\
        --ratio 16 --limit 400 --out research/results/regenerate_then_read_16x_400.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.evaluation.metrics import answer_contained, f1_score, normalize_answer
from comprexit_rag.evaluation.paired import paired_difference
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.prompts import ReconstructionPrompt
from comprexit_rag.reading.reader import Reader

BATCH = 8


def load_nq(limit: int) -> list:
    """The first ``limit`` NQ dev questions with their gold passage, as ``comprexit-rag eval`` reads them."""
    return load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "gold", limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="ComprExIT checkpoint with its reader adapter (default: the shipped one)")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--limit", type=int, default=400, help="the first N NQ dev questions")
    parser.add_argument("--max-passage-tokens", type=int, default=256, help="regeneration length cap")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--rescore", action="store_true", help="rebuild --out's tables from its per-question records (no model)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rescore:
        report = json.loads(args.out.read_text())
        write(report, load_nq(len(report["questions_detail"])), args.out)
        return
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone)
    reader = Reader(backbone, adapter=compressor.reader_adapter)
    writer = Reader(
        backbone,
        prompt=ReconstructionPrompt(),
        max_new_tokens=args.max_passage_tokens,
        adapter=compressor.reader_adapter,
    )
    examples = load_nq(args.limit)
    questions = [example.question for example in examples]
    passages = [example.passages[0].formatted() for example in examples]
    slots = compressor.compress(passages, ratio=args.ratio, show_progress=False)
    own = [slots.select([i]) for i in range(len(examples))]

    logging.info("regenerating %d passages from their slots", len(examples))
    # The reconstruction prompt has no question; generate() still wants a non-empty string per context.
    written = writer.generate(["passage"] * len(examples), own, batch_size=BATCH)
    # Greedy regeneration rarely stops and repeats itself past the passage: keep as many tokens as it has.
    tokenizer = backbone.tokenizer
    regenerated = [
        tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][: len(ids)])
        for text, ids in zip(written, tokenizer(passages, add_special_tokens=False)["input_ids"], strict=True)
    ]
    shifted = regenerated[1:] + regenerated[:1]  # question i reads question i+1's regenerated passage
    contexts = {
        "slots": own,
        "regenerated": regenerated,
        "regenerated, another question's": shifted,
        "raw text": passages,
        "closed-book": [None] * len(examples),
    }
    predictions = {}
    for name, context in contexts.items():
        logging.info("answering from: %s", name)
        predictions[name] = reader.generate(questions, context, batch_size=BATCH)

    details = [
        {"id": e.id, "answers": list(e.answers), "regenerated_passage": regenerated[i]}
        | {f"answer from {name}": predictions[name][i] for name in contexts}
        for i, e in enumerate(examples)
    ]
    report = {
        "made_by": "python " + " ".join(sys.argv),
        "head": args.head or "the shipped default",
        "ratio": args.ratio,
        "seconds": round(time.perf_counter() - started),
        "questions_detail": details,
    }
    write(report, examples, args.out)


def summarise(details: list[dict], examples: list) -> dict:
    """A run's tables from its per-question records."""
    passages = {e.id: e.passages[0].formatted() for e in examples}
    names = [key.removeprefix("answer from ") for key in details[0] if key.startswith("answer from ")]
    runs = {name: {d["id"]: (tuple(d["answers"]), d[f"answer from {name}"]) for d in details} for name in names}
    in_passage = {d["id"]: answer_contained(passages[d["id"]], d["answers"]) > 0 for d in details}
    in_regenerated = {d["id"]: answer_contained(d["regenerated_passage"], d["answers"]) > 0 for d in details}

    def mean_f1(name: str, rows: set[str]) -> float:
        return round(100 * sum(f1_score(runs[name][key][1], runs[name][key][0]) for key in rows) / len(rows), 1)

    def change(rows: set[str]) -> dict:
        if not rows:  # e.g. no answer survives a short regeneration
            return {"n": 0}
        pick = {name: {key: runs[name][key] for key in rows} for name in ("slots", "regenerated")}
        difference = paired_difference(pick["slots"], pick["regenerated"])
        return {
            "n": len(rows),
            "slots": round(100 * difference.mean_a, 1),
            "regenerated": round(100 * difference.mean_b, 1),
            "raw text": mean_f1("raw text", rows),
            "regenerated - slots": round(100 * difference.difference, 1),
            "se": round(100 * difference.standard_error, 1),
            "interval_95": [round(100 * difference.ci_low, 1), round(100 * difference.ci_high, 1)],
        }

    everyone = set(runs["slots"])
    # Do the slots answer right mostly where the answer survives regeneration (the same limit on both paths)?
    survived = {key for key in everyone if in_passage[key] and in_regenerated[key]}
    lost = {key for key in everyone if in_passage[key] and not in_regenerated[key]}
    return {
        "questions": len(details),
        "f1": {name: mean_f1(name, everyone) for name in names},
        "regenerated - slots": change(everyone),
        "regeneration": {
            "word_f1_against_passage": round(
                100 * sum(f1_score(d["regenerated_passage"], [passages[d["id"]]]) for d in details) / len(details), 1
            ),
            "answers_in_passage": sum(in_passage.values()),
            "of_those_answer_in_regenerated": len(survived),
            "empty": sum(1 for d in details if not normalize_answer(d["regenerated_passage"])),
        },
        "by_answer_survival": {
            "answer in the regenerated passage": change(survived),
            "answer lost in regeneration": change(lost),
        },
    }


def write(report: dict, examples: list, out: Path) -> None:
    report = (
        {key: value for key, value in report.items() if key != "questions_detail"}
        | summarise(report["questions_detail"], examples)
        | {"questions_detail": report["questions_detail"]}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    tables = ("f1", "regenerated - slots", "regeneration", "by_answer_survival")
    print(json.dumps({key: report[key] for key in tables}, indent=1))


if __name__ == "__main__":
    main()
