"""Which change of the QA stage costs reconstruction: the head's or the reader adapter's?

The batch-256 run's head reads its own held-out slots at 0.19 nats/token right after pretraining and
at 0.57 after the mixed QA stage that follows (BENCHMARKS.md, session 11). This probe crosses the two
checkpoints' heads and adapters: the slots of each head read through each adapter (and raw text and no
context through each adapter), teacher-forced on the first 128 tokens of NQ dev gold passages, as
``benchmarks/slot_quality.py`` measures reconstruction. A head's slots are handed to the other
checkpoint's adapter as plain embeddings, which bypasses the pairing check the library enforces.

    HF_HUB_OFFLINE=1 python research/qa_stage_drift.py --before runs/pretrain-b256/final \\
        --after comprexit_rag/pretrained/comprexit-smollm2-135m --windows 32 --out research/results/qa_stage_drift.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.methods.comprexit import ComprExITCompressor
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.data import tokenize_passages
from comprexit_rag.training.trainer import target_logits

WINDOW = 128  # as benchmarks/slot_quality.py


@torch.no_grad()
def nats_per_token(reader: Reader, windows: list[list[int]], contexts: list) -> float:
    """Teacher-forced loss of regenerating each window from its context, per target token."""
    stop = answer_end_token_id(reader.backbone.tokenizer)
    loss, total = 0.0, 0
    for start in range(0, len(windows), 16):
        batch = windows[start : start + 16]
        inputs = reader.build_inputs(
            [""] * len(batch),
            contexts[start : start + 16],
            [[*ids, stop] for ids in batch],
            prompt=ReconstructionPrompt(),
            padding_side="right",
        )
        logits, labels = target_logits(reader, inputs)
        loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        total += labels.numel()
    return round(loss / total, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="head + adapter before the QA stage")
    parser.add_argument("--after", required=True, help="head + adapter after it")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    backbone = Backbone.from_pretrained()
    passages = [example.passages[0] for example in load_split("nq", "dev")]
    tokenized = tokenize_passages(backbone.tokenizer, passages)
    windows = [ids[:WINDOW] for ids in tokenized if len(ids) >= WINDOW // 2][: args.windows]
    texts = [backbone.tokenizer.decode(ids) for ids in windows]

    checkpoints = {"before": args.before, "after": args.after}
    compressors = {name: ComprExITCompressor.from_pretrained(path, backbone) for name, path in checkpoints.items()}
    slots = {}
    for name, compressor in compressors.items():
        made = compressor.compress_token_ids(windows, ratio=args.ratio)
        slots[name] = [made.select([i]).embeddings() for i in range(len(windows))]

    rows = []
    for adapter_of, compressor in compressors.items():
        reader = Reader(backbone, adapter=compressor.reader_adapter)
        conditions = {**{f"{name} head's slots": slots[name] for name in checkpoints}, "raw text": texts}
        conditions["no context"] = [None] * len(windows)
        for condition, contexts in conditions.items():
            nats = nats_per_token(reader, windows, contexts)
            rows.append({"context": condition, "adapter": adapter_of, "nats": nats})
            logging.info("%s", rows[-1])
    report = {
        "command": "python research/qa_stage_drift.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items()),
        "windows": len(windows),
        "window_tokens": WINDOW,
        "ratio": args.ratio,
        "checkpoints": checkpoints,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
