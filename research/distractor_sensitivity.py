"""How do a head's slots and the raw text hold up as distractors are added, and in what order?

With retrieval in the loop (open-corpus HotpotQA, BENCHMARKS.md, session 13) the stored slots reached 16.0
F1 against 29.9 from the raw text through the same adapter, while on the same questions with all ~10
paragraphs they reached 18.1 against 19.9. This probe reads each HotpotQA dev question's own paragraphs
in several selections, as slots and as raw text, through one reader (the head's adapter):

* ``gold``: the supporting paragraphs only;
* ``top5``: the 5 paragraphs closest to the question by the default embedder (all-MiniLM-L6-v2), best first,
  as the pipeline would retrieve them from this question's paragraphs alone;
* ``top5 reversed``: the same, best last;
* ``all``: every paragraph, in the dataset's order (the distractor setting of the quality tables);

plus the controls: the next question's gold paragraphs (``other``) and no passages (``closed-book``).
Every paragraph is compressed once, alone, as at indexing time.

    HF_HUB_OFFLINE=1 python research/distractor_sensitivity.py --questions 50 \\
        --out research/results/distractor_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.metrics import compute_scores
from comprexit_rag.methods.comprexit import ComprExITCompressor
from comprexit_rag.reading.reader import Reader
from comprexit_rag.retrieval import default_embedder_path

SELECTIONS = ("gold", "top5", "top5 reversed", "all", "other")


def selections(examples, embedder: SentenceTransformer) -> dict[str, list[list[str]]]:
    """For each selection, each question's paragraphs (formatted title + text), in reading order."""
    chosen: dict[str, list[list[str]]] = {name: [] for name in SELECTIONS}
    for index, example in enumerate(examples):
        texts = [passage.formatted() for passage in example.passages]
        question = embedder.encode([example.question], normalize_embeddings=True, show_progress_bar=False)[0]
        scores = embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False) @ question
        top5 = [texts[i] for i in np.argsort(-scores)[:5]]
        following = examples[(index + 1) % len(examples)]
        chosen["gold"].append([passage.formatted() for passage in example.gold_passages()])
        chosen["top5"].append(top5)
        chosen["top5 reversed"].append(top5[::-1])
        chosen["all"].append(texts)
        chosen["other"].append([passage.formatted() for passage in following.gold_passages()])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default=None, help="ComprExIT head + adapter (default: the shipped one)")
    parser.add_argument("--questions", type=int, default=50, help="first N HotpotQA dev questions")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    backbone = Backbone.from_pretrained()
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone)
    reader = Reader(backbone, adapter=compressor.reader_adapter)
    examples = load_split("hotpotqa", "dev")[: args.questions]
    chosen = selections(examples, SentenceTransformer(str(default_embedder_path()), device="cpu"))

    paragraphs = list(dict.fromkeys(text for lists in chosen.values() for texts in lists for text in texts))
    compressed = compressor.compress(paragraphs, ratio=args.ratio)
    position = {text: index for index, text in enumerate(paragraphs)}
    questions = [example.question for example in examples]

    rows = {}
    for name in SELECTIONS:
        slots = [compressed.select([position[text] for text in texts]) for texts in chosen[name]]
        readings = {"slots": slots} if name == "other" else {"slots": slots, "raw text": chosen[name]}
        for context, contexts in readings.items():
            predictions = reader.generate(questions, contexts, max_new_tokens=20)
            rows[f"{name}: {context}"] = compute_scores(predictions, examples).as_dict()
            logging.info("%s: %s %s", name, context, rows[f"{name}: {context}"])
    predictions = reader.generate(questions, [None] * len(questions), max_new_tokens=20)
    rows["closed-book"] = compute_scores(predictions, examples).as_dict()

    report = {
        "command": "python research/distractor_sensitivity.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items() if value is not None),
        "questions": len(examples),
        "ratio": args.ratio,
        "head": args.head or "shipped",
        "paragraphs_per_selection": {
            name: round(sum(map(len, lists)) / len(lists), 2) for name, lists in chosen.items()
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
