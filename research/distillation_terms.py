"""Does hidden-state distillation bring the reading of the slots closer to the reading of the text, and do
the answers follow?

For each checkpoint (a head and its reader adapter), on the first N NQ dev questions with their gold passage,
teacher-forced on the gold answer as the QA stage trains it: the answer's cross-entropy from the slots, KL
(the same adapter reading the raw passage || reading the slots) on the answer's tokens, and the cosine
distance between every decoder layer's output after the context in the two readings: the three terms of
``comprexit_rag.training.losses.distillation_terms``, each a mean over its positions, weighted across batches
by their answer tokens. Held-out: the QA stage trains on NQ's train split.

    HF_HUB_OFFLINE=1 python research/distillation_terms.py --nq 200 \\
        --checkpoint joint=<fdea39e: lengths-run/sft/final> \\
        --checkpoint hidden-801=<e437c53: hidden-distill-run/sft/checkpoint/step-0000801/module> \\
        --out research/results/distillation_terms.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from comprexit_rag.backbone import Backbone, encode_text
from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.methods.comprexit import ComprExITCompressor
from comprexit_rag.prompts import QAPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.data import MAX_PASSAGE_TOKENS, tokenize_passages
from comprexit_rag.training.encoders import SlotHeadEncoder
from comprexit_rag.training.examples import TrainExample
from comprexit_rag.training.losses import distillation_terms


def nq_examples(backbone: Backbone, count: int) -> list[TrainExample]:
    """The first ``count`` NQ dev questions (the order of ``comprexit-rag eval --limit``) as QA-stage examples."""
    examples = load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "distractor", count)
    tokenizer = backbone.tokenizer
    stop = answer_end_token_id(tokenizer)
    answers = encode_text(tokenizer, [example.answers[0] for example in examples])
    made = []
    for example, answer in zip(examples, answers, strict=True):
        passages = [ids[:MAX_PASSAGE_TOKENS] for ids in tokenize_passages(tokenizer, example.passages)]
        made.append(TrainExample(passages, example.question, [*answer, stop]))
    return made


@torch.no_grad()
def mean_terms(
    reader: Reader, encoder: SlotHeadEncoder, examples: list[TrainExample], ratio: int, batch_size: int
) -> dict[str, float]:
    """Each term's mean over the examples' answer tokens."""
    sums: dict[str, float] = {}
    tokens = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        count = sum(len(example.target_ids) for example in batch)
        terms = distillation_terms(reader, encoder, batch, ratio, QAPrompt(), layers=True).detached()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value) * count
        tokens += count
    return {name: round(total / tokens, 4) for name, total in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="NAME=DIR, a head with its adapter")
    parser.add_argument("--nq", type=int, default=200)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    backbone = Backbone.from_pretrained()
    examples = nq_examples(backbone, args.nq)
    rows = []
    for name, directory in (item.split("=", 1) for item in args.checkpoint):
        compressor = ComprExITCompressor.from_pretrained(directory, backbone)
        reader = Reader(backbone, adapter=compressor.reader_adapter)
        # The QA stage's own encoder: the slots its loss reads, without gradients here.
        encoder = SlotHeadEncoder(backbone, compressor.module, "comprexit")
        terms = mean_terms(reader, encoder, examples, args.ratio, args.batch_size)
        rows.append({"checkpoint": name, "directory": directory, **terms})
        logging.info("%s", rows[-1])
    report = {"command": " ".join(["python", *sys.argv]), "nq": len(examples), "ratio": args.ratio, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
