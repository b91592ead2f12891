"""Which change of the QA stage costs reconstruction: the head's or the reader adapter's?

The batch-256 run's head reads its own held-out slots at 0.19 nats/token right after pretraining and
at 0.57 after the mixed QA stage that follows (BENCHMARKS.md, session 11). This probe crosses the two
checkpoints' heads and adapters: the slots of each head read through each adapter (and raw text and no
context through each adapter), teacher-forced on the first 128 tokens of NQ dev gold passages, as
``benchmarks/slot_quality.py`` measures reconstruction. A head's slots are handed to the other
checkpoint's adapter as plain embeddings, which bypasses the pairing check the library enforces.

    HF_HUB_OFFLINE=1 python research/qa_stage_drift.py --before runs/pretrain-b256/final \\
        --after comprexit_rag/pretrained/comprexit-smollm2-135m --windows 32 --out research/results/qa_stage_drift.json

``--nq N`` also answers the first N NQ dev questions at the ratio through the QA-trained adapter, from each
head's slots: does the head's change in the QA stage matter for answering, or only the adapter's? Each
head's answers go to ``<out stem>-<head>-head.jsonl`` (the format of ``comprexit-rag eval --predictions``, for
``benchmarks/paired_difference.py``). Session 35, the QA stage after the pretraining on every length:

    HF_HUB_OFFLINE=1 python research/qa_stage_drift.py --before <639975d: lengths-run/pretrain/final> \\
        --after <fdea39e: lengths-run/sft/final> --windows 32 --nq 400 \\
        --out research/results/qa_stage_drift_lengths.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from slot_quality import WINDOW, nq_windows, regenerated

from comprexit_rag.backbone import Backbone
from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import StoredSlots
from comprexit_rag.evaluation.paired import write_predictions
from comprexit_rag.methods.comprexit import ComprExITCompressor
from comprexit_rag.reading.reader import Reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="head + adapter before the QA stage")
    parser.add_argument("--after", required=True, help="head + adapter after it")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--nq", type=int, default=0, help="NQ dev questions answered from each head's slots")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    backbone = Backbone.from_pretrained()
    windows = nq_windows(backbone.tokenizer, args.windows)
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
            nats = regenerated(reader, windows, contexts)["nats"]
            rows.append({"context": condition, "adapter": adapter_of, "nats": nats})
            logging.info("%s", rows[-1])
    if args.nq:
        rows += answers_through_the_qa_adapter(backbone, compressors, args)
    report = {
        "command": "python research/qa_stage_drift.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()),
        "windows": len(windows),
        "window_tokens": WINDOW,
        "ratio": args.ratio,
        "checkpoints": checkpoints,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def answers_through_the_qa_adapter(backbone: Backbone, compressors: dict, args: argparse.Namespace) -> list[dict]:
    """F1 on the first ``args.nq`` NQ dev questions from each head's slots, read through the "after" adapter."""
    adapter = compressors["after"].reader_adapter
    reader = Reader(backbone, adapter=adapter)
    # The questions and order of `comprexit-rag eval --data <NQ-open file> --format nq-open --limit N`.
    examples = load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "distractor", args.nq)
    rows = []
    for name, compressor in compressors.items():
        # The "before" head was trained with another adapter: its slots are marked as the QA adapter's here.
        crossed = copy.copy(compressor)
        crossed.reader_adapter = adapter
        method = StoredSlots("comprexit", crossed, args.ratio)
        scored = evaluate(method, reader, examples, ratio=args.ratio, batch_size=args.batch_size)
        write_predictions(args.out.with_name(f"{args.out.stem}-{name}-head.jsonl"), examples, scored.predictions)
        rows.append({"context": f"{name} head's slots", "adapter": "after", "nq": len(examples), "f1": scored.f1})
        logging.info("%s", rows[-1])
    return rows


if __name__ == "__main__":
    main()
