"""Do a head's slots carry text from outside Wikipedia? Held-out reconstruction by domain.

The head and its reader adapter were trained on Wikipedia and Wikipedia-based QA only. Users index their
own documents. This scores teacher-forced reconstruction of 128-token windows (the reconstruction prompt,
as ``benchmarks/slot_quality.py`` scores NQ) in three domains:

* **Wikipedia**: the first 128 tokens of NQ dev gold passages (the table the issue's goal is set on);
* **privacy policies**: PolicyQA segments of at least 128 tokens (all splits: PolicyQA is in no training
  mix);
* **technical documentation**: consecutive 128-token windows of this repository's Markdown files
  (README, BENCHMARKS and docs/), written after every corpus the backbone or head saw;
* **Wikipedia windows** drawn as pretraining draws them (random 128-token windows of the token stream)
  from a shard the long run pretrained on (AB shard 0: the run drew 98M tokens from a stream of 44.5M,
  so it read each about twice) and from a shard no run read (AD shard 0): is the held-out NQ windows'
  excess over the training loss memorisation, or the NQ passages' own form?

Each window is read from its own slots, from another window's slots of the same domain (the next one),
with no context, and from its raw text through the same reader and through the frozen reader. If the
slots' excess over the raw text stays the same across domains, what the head keeps does not depend on
Wikipedia; a failure out of domain then lies in how the adapter answers, not in the slots. CPU, about
15 minutes for 64 windows a domain::

    HF_HUB_OFFLINE=1 python research/domain_reconstruction.py --out research/results/domain_reconstruction.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.reconstruction import mean_window_scores, reconstruction_scores, stream_windows
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.reading.reader import Context, Reader
from comprexit_rag.training.data import tokenize_passages

WINDOW = 128
BATCH = 16
REPOSITORY = Path(__file__).resolve().parent.parent
DOCUMENTATION = ("README.md", "BENCHMARKS.md", "docs/COMI.md", "docs/RELIABILITY.md", "docs/SCALING.md")


def passage_windows(backbone: Backbone, passages: list, count: int) -> list[list[int]]:
    """The first ``WINDOW`` tokens of the first ``count`` distinct passages that have that many."""
    seen, windows = set(), []
    for passage, ids in zip(passages, tokenize_passages(backbone.tokenizer, passages), strict=True):
        if len(ids) >= WINDOW and passage.text not in seen:
            seen.add(passage.text)
            windows.append(ids[:WINDOW])
    return windows[:count]


def documentation_windows(backbone: Backbone, count: int) -> list[list[int]]:
    """Consecutive ``WINDOW``-token windows of the repository's Markdown files, spread over the files."""
    per_file = [backbone.tokenize([(REPOSITORY / name).read_text()])[0] for name in DOCUMENTATION]
    windows = []
    for index in range(count):  # round robin over the files, so no one file fills the sample
        ids = per_file[index % len(per_file)]
        start = (index // len(per_file)) * WINDOW
        if start + WINDOW <= len(ids):
            windows.append(ids[start : start + WINDOW])
    return windows


def domains(backbone: Backbone, count: int) -> dict[str, list[list[int]]]:
    policies = [example.passages[0] for split in ("train", "dev") for example in load_split("policyqa", split)]
    return {
        "Wikipedia (NQ dev gold passages)": passage_windows(
            backbone, [example.passages[0] for example in load_split("nq", "dev")], count
        ),
        "privacy policies (PolicyQA segments)": passage_windows(backbone, policies, count),
        "technical documentation (this repository's Markdown)": documentation_windows(backbone, count),
        "Wikipedia windows, a pretraining shard (AB shard 0)": stream_windows(
            backbone.tokenizer, count, WINDOW, "wiki/enwiki_2015_AB_shard0.txt.gz"
        ),
        "Wikipedia windows, an unseen shard (AD shard 0)": stream_windows(
            backbone.tokenizer, count, WINDOW, "wiki/enwiki_2015_AD_shard0.txt.gz"
        ),
    }


def score(reader: Reader, windows: list[list[int]], contexts: list) -> dict[str, float]:
    """Mean nats per token and top-1 accuracy over the windows' tokens (the end token left out)."""
    nats, accuracy = mean_window_scores(reconstruction_scores(reader, windows, contexts, BATCH), with_end_token=False)
    return {"nats": round(nats, 3), "accuracy": round(accuracy, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="ComprExIT checkpoint with its reader adapter (default: the shipped one)")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--windows", type=int, default=64, help="windows of each domain")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone)
    reader = Reader(backbone, adapter=compressor.reader_adapter)
    frozen_reader = Reader(backbone, adapter=None)
    results = {}
    for domain, windows in domains(backbone, args.windows).items():
        slots = compressor.compress_token_ids(windows, ratio=args.ratio)
        own = [slots.select([i]) for i in range(len(windows))]
        texts = [backbone.tokenizer.decode(window) for window in windows]
        conditions: dict[str, tuple[Reader, list[Context]]] = {
            "own slots": (reader, own),
            "another window's slots": (reader, own[1:] + own[:1]),
            "no context": (reader, [None] * len(windows)),
            "raw text, same adapter": (reader, texts),
            "raw text, frozen reader": (frozen_reader, texts),
        }
        row: dict = {"windows": len(windows)}
        for name, (condition_reader, contexts) in conditions.items():
            row[name] = score(condition_reader, windows, contexts)
            logging.info("%s, %s: %.3f nats", domain, name, row[name]["nats"])
        row["own slots minus raw text (same adapter)"] = round(
            row["own slots"]["nats"] - row["raw text, same adapter"]["nats"], 3
        )
        results[domain] = row

    report = {
        "head": args.head or "shipped",
        "ratio": args.ratio,
        "window_tokens": WINDOW,
        "device": str(backbone.device),
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python research/domain_reconstruction.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None),
        "domains": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
