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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from slot_quality import WINDOW, nq_windows, regenerated

from comprexit_rag.backbone import Backbone
from comprexit_rag.methods.comprexit import ComprExITCompressor
from comprexit_rag.reading.reader import Reader


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
            nats, _ = regenerated(reader, windows, contexts)
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
