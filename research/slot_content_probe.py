"""Do a head's slots carry what the answer needs? The same questions read their own slots, then another's.

For the first ``--limit`` dev questions of ``--dataset`` (held out; NQ: the gold passage, HotpotQA: all
its distractor-setting paragraphs), each passage is compressed once at ``--ratio``. The reader then
answers every question twice: from the slots of its own passages, and from the slots of the next
question's passages (a fixed rotation, so every question reads real passages of the same kind, length
and format, only not its own). Reported for both: EM, F1 and answer-contained accuracy (SQuAD
normalisation), and the share of questions whose answer did not change at all.

If the slots carried the passages, answers from the wrong ones would be wrong and different; if they
only steer the reader (answer format, a topic prior), the scores and most answers stay the same. CPU::

    HF_HUB_OFFLINE=1 python research/slot_content_probe.py --out research/results/slot_content_probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.metrics import compute_scores
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.reading.reader import Reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("nq", "hotpotqa"), default="nq")
    parser.add_argument("--limit", type=int, default=100, help="first N dev questions")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--head", help="ComprExIT head directory (default: the shipped head)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    backbone = Backbone.from_pretrained(device=args.device)
    compressor = ComprExITCompressor(backbone, ComprExITHead.from_pretrained(args.head))
    reader = Reader(backbone)
    examples = load_split(args.dataset, "dev")[: args.limit]
    questions = [example.question for example in examples]

    started = time.perf_counter()
    soft = compressor.compress(
        [passage.formatted() for example in examples for passage in example.passages], ratio=args.ratio
    )
    own, start = [], 0
    for example in examples:
        own.append(soft.select(range(start, start + len(example.passages))))
        start += len(example.passages)
    other = own[1:] + own[:1]  # question i reads the passages of question i + 1
    compress_s = time.perf_counter() - started

    answers, scores = {}, {}
    for condition, contexts in (("own passage", own), ("another passage", other)):
        answers[condition] = reader.generate(questions, contexts, batch_size=args.batch_size)
        result = compute_scores(answers[condition], examples)
        scores[condition] = {"em": result.em, "f1": result.f1, "accuracy": result.accuracy, "n": result.n}
    same = sum(a == b for a, b in zip(answers["own passage"], answers["another passage"], strict=True))
    report = {
        "description": __doc__.split("\n\n")[0],
        "dataset": args.dataset,
        "head": args.head or "shipped",
        "device": str(backbone.device),
        "ratio": args.ratio,
        "questions": len(examples),
        "compress_s": round(compress_s, 1),
        "scores": scores,
        "unchanged_answers": same / len(examples),
        "examples": [
            {"question": q, "gold": list(e.answers), "own": a, "another": b}
            for q, e, a, b in list(
                zip(questions, examples, answers["own passage"], answers["another passage"], strict=True)
            )[:10]
        ],
    }
    for condition, row in scores.items():
        print(f"{condition:16s} EM {row['em']:.3f}  F1 {row['f1']:.3f}  accuracy {row['accuracy']:.3f}")
    print(f"answers unchanged with another passage: {same}/{len(examples)}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
