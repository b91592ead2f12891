"""What a head's slots carry, on held-out data: reconstruction and QA, each next to its controls.

For one head checkpoint (with its reader adapter, if it has one), through one reader:

* **Reconstruction** of the first 128 tokens of NQ dev gold passages (teacher-forced nats/token and
  token accuracy): from the passage's own slots, from another passage's slots, with no context, and
  from the raw text.
* **QA** on the NQ dev gold passage and HotpotQA dev (distractor paragraphs): EM / F1 / accuracy from
  the question's own slots, from another question's slots (the content gap), closed-book, and the
  raw text, all through the same reader (so closed-book and raw text include the adapter's effect).

GPU::

    python benchmarks/slot_quality.py --head runs/sft/final --device cuda --out results.json

CPU (a smaller sample)::

    HF_HUB_OFFLINE=1 python benchmarks/slot_quality.py --nq 50 --hotpotqa 0 --recon 16 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import ClosedBook, FullText, StoredSlots
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.data import tokenize_passages
from comprexit_rag.training.trainer import target_logits

WINDOW = 128


@torch.no_grad()
def reconstruction(compressor: ComprExITCompressor, reader: Reader, count: int, ratio: int) -> dict:
    backbone = compressor.backbone
    stop = answer_end_token_id(backbone.tokenizer)
    passages = [example.passages[0] for example in load_split("nq", "dev")]
    windows = [ids[:WINDOW] for ids in tokenize_passages(backbone.tokenizer, passages) if len(ids) >= WINDOW // 2]
    windows = windows[:count]
    own = compressor.compress_token_ids(windows, ratio=ratio)
    texts = [backbone.tokenizer.decode(ids) for ids in windows]
    conditions = {
        "own": [own.select([i]) for i in range(len(windows))],
        "other": [own.select([(i + 1) % len(windows)]) for i in range(len(windows))],
        "none": [None] * len(windows),
        "raw_text": texts,
    }
    result = {"windows": len(windows), "window_tokens": WINDOW}
    for name, contexts in conditions.items():
        loss, correct, total = 0.0, 0, 0
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
            correct += int((logits.argmax(-1) == labels).sum())
            total += labels.numel()
        result[f"{name}_nats"] = round(loss / total, 4)
        result[f"{name}_token_accuracy"] = round(correct / total, 4)
    return result


def qa(compressor: ComprExITCompressor, reader: Reader, dataset: str, count: int, ratio: int, batch: int) -> dict:
    examples = load_split(dataset, "dev")[:count]
    slots = StoredSlots("comprexit", compressor, ratio)
    runs = {
        "own": (slots, "own"),
        "other": (slots, "other"),
        "closed_book": (ClosedBook(), "own"),
        "raw_text": (FullText(compressor.backbone), "own"),
    }
    result: dict = {"n": len(examples)}
    for name, (method, source) in runs.items():
        scored = evaluate(method, reader, examples, ratio=ratio, batch_size=batch, contexts_from=source)
        result[name] = {key: round(getattr(scored, key), 4) for key in ("em", "f1", "accuracy")}
        result[name]["examples"] = [
            {"question": e.question, "gold": list(e.answers), "prediction": p}
            for e, p in zip(examples[:5], scored.predictions[:5], strict=False)
        ]
    result["content_gap_f1"] = round(result["own"]["f1"] - result["other"]["f1"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="head checkpoint directory (default: the shipped head)")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--recon", type=int, default=64, help="NQ dev windows for reconstruction (0: skip)")
    parser.add_argument("--nq", type=int, default=400, help="NQ dev questions (0: skip)")
    parser.add_argument("--hotpotqa", type=int, default=200, help="HotpotQA dev questions (0: skip)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone, batch_size=args.batch_size)
    reader = Reader(backbone)
    report: dict = {
        "head": args.head or "shipped",
        "ratio": args.ratio,
        "reader_adapter": None
        if compressor.reader_adapter is None
        else {
            "scope": compressor.reader_adapter.config.scope,
            "parameters": compressor.reader_adapter.num_parameters(),
        },
        "device": str(backbone.device),
        "command": "python benchmarks/slot_quality.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None),
    }
    if args.recon:
        report["reconstruction_nq"] = reconstruction(compressor, reader, args.recon, args.ratio)
        logging.info("reconstruction: %s", report["reconstruction_nq"])
    for dataset, count in (("nq", args.nq), ("hotpotqa", args.hotpotqa)):
        if count:
            report[f"qa_{dataset}"] = qa(compressor, reader, dataset, count, args.ratio, args.batch_size)
            scores = {k: v["f1"] for k, v in report[f"qa_{dataset}"].items() if isinstance(v, dict)}
            logging.info("%s F1: %s", dataset, scores)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
