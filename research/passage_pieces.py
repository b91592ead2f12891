"""Can a head's reader regenerate a text from the slots of its pieces, each compressed on its own?

A HotpotQA question brings ten paragraphs, each compressed alone, their slots read one after another;
pretraining only ever compressed one window per example. This cuts held-out 128-token windows (random
windows of the AA shard 0's token stream, as ``benchmarks/slot_quality.py --recon-lengths`` draws them) into
1, 2, 4 or 8 consecutive pieces, compresses each piece alone, and regenerates the whole window from the
pieces' slots in order (teacher-forced, the reconstruction prompt). The slot count stays about the same
(32 at 4x); what changes is that no piece's slots saw its neighbours. With one piece it is the usual
reconstruction. CPU, about 4 minutes a head::

    HF_HUB_OFFLINE=1 python research/passage_pieces.py --heads shipped=DEFAULT pretrained=DIR \\
        --out research/results/passage_pieces.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.evaluation.reconstruction import mean_window_scores, reconstruction_scores, stream_windows
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.reading.reader import Reader

WINDOW = 128
BATCH = 16
DEFAULT = "DEFAULT"  # the shipped head, as ComprExITCompressor.from_pretrained() loads it


def pieces_of(window: list[int], count: int) -> list[list[int]]:
    """``window`` cut into ``count`` consecutive pieces of (nearly) equal length."""
    bounds = [round(i * len(window) / count) for i in range(count + 1)]
    return [window[start:end] for start, end in itertools.pairwise(bounds)]


def mean_nats(reader: Reader, windows: list[list[int]], contexts: list) -> dict[str, float]:
    """Mean nats per token and top-1 accuracy over the windows' tokens (the end token left out)."""
    nats, accuracy = mean_window_scores(reconstruction_scores(reader, windows, contexts, BATCH), with_end_token=False)
    return {"nats": round(nats, 3), "accuracy": round(accuracy, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", required=True, help=f"NAME=DIR ({DEFAULT}: the shipped head)")
    parser.add_argument("--pieces", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    windows = stream_windows(backbone.tokenizer, args.windows, WINDOW)  # the held-out shard, as slot_quality.py
    results: dict[str, dict] = {}
    for item in args.heads:
        name, _, directory = item.partition("=")
        compressor = ComprExITCompressor.from_pretrained(None if directory == DEFAULT else directory, backbone)
        reader = Reader(backbone, adapter=compressor.reader_adapter)
        rows = {}
        for count in args.pieces:
            pieces = [piece for window in windows for piece in pieces_of(window, count)]
            slots = compressor.compress_token_ids(pieces, ratio=args.ratio)
            contexts = [slots.select(range(i * count, (i + 1) * count)) for i in range(len(windows))]
            rows[str(count)] = mean_nats(reader, windows, contexts) | {"slots": int(slots.mask.sum()) / len(windows)}
            logging.info("%s, %d pieces: %.3f nats", name, count, rows[str(count)]["nats"])
        results[name] = {"directory": directory, "by_pieces": rows}

    report = {
        "windows": len(windows),
        "window_tokens": WINDOW,
        "ratio": args.ratio,
        "device": str(backbone.device),
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"python research/passage_pieces.py --heads {' '.join(args.heads)} --pieces "
        f"{' '.join(map(str, args.pieces))} --windows {args.windows} --ratio {args.ratio} --out {args.out}",
        "heads": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
