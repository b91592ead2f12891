"""Which tokens do a head's slots lose? Held-out reconstruction loss split by what each token is.

The first 128 tokens of NQ dev gold passages are regenerated teacher-forced (the reconstruction prompt,
as ``benchmarks/slot_quality.py`` scores them) from the passage's own slots, from its raw text through
the same reader (and through the frozen reader, which reads raw text best), and with no context. Each
target token's loss is then grouped:

* **kind**: the token holds a digit; it starts with a capital letter (names, mostly); a lower-case word
  or word piece; anything else (punctuation, spaces);
* **word start** vs **continuation** (a token that goes on the word before it is easy to guess once
  its start is known, with or without the passage);
* **quarter of the window** (does the loss grow with the position in the passage?);
* **answer span**: the tokens of the question's gold answer, where the answer occurs in the window.

If the slots lose "detail" (which number, which name: ``near_misses.py``), their excess over the raw text
is largest on digits, capitalised tokens and answer spans; if they lose the passage evenly, it is flat.
CPU, about 10 minutes for 128 windows::

    HF_HUB_OFFLINE=1 python research/reconstruction_by_token.py --out research/results/reconstruction_by_token.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import load_split
from comprexit_rag.evaluation.reconstruction import reconstruction_scores
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.reading.reader import Context, Reader
from comprexit_rag.training.data import tokenize_passages

WINDOW = 128
BATCH = 16


def token_groups(tokenizer, ids: list[int], answers: tuple[str, ...]) -> list[list[str]]:
    """The groups each token of a window belongs to (kind, word start or not, quarter, answer span)."""
    pieces = [tokenizer.decode([token]) for token in ids]
    text = tokenizer.decode(ids)
    starts = [len(tokenizer.decode(ids[:i])) for i in range(len(ids) + 1)]
    spans = []
    lowered = text.lower()
    for answer in answers:
        at = lowered.find(answer.lower()) if answer.strip() else -1
        if at >= 0:
            spans.append((at, at + len(answer)))
    groups = []
    for i, piece in enumerate(pieces):
        stripped = piece.strip()
        if any(ch.isdigit() for ch in stripped):
            kind = "digit"
        elif stripped[:1].isupper():
            kind = "capitalised"
        elif stripped.isalpha():
            kind = "lower-case word"
        else:
            kind = "other"
        word_start = i == 0 or piece[:1].isspace() or not stripped.isalnum() or not pieces[i - 1].strip()[-1:].isalnum()
        in_answer = any(starts[i] < end and starts[i + 1] > begin for begin, end in spans)
        groups.append(
            [
                f"kind: {kind}",
                "word start" if word_start else "word continuation",
                f"quarter {4 * i // len(ids) + 1}",
                "answer span" if in_answer else ("outside answer" if spans else "no answer in window"),
            ]
        )
    return groups


def token_losses(reader: Reader, windows: list[list[int]], contexts: list[Context]) -> list[list[tuple[float, bool]]]:
    """Per window, each token's teacher-forced loss (nats) and whether the reader's top token is right."""
    return [
        list(zip(losses[:-1].tolist(), hits[:-1].tolist(), strict=True))  # the end token left out
        for losses, hits in reconstruction_scores(reader, windows, contexts, BATCH)
    ]


def summarise(groups: list[list[list[str]]], losses: dict[str, list[list[tuple[float, bool]]]]) -> dict:
    """Mean nats, top-1 accuracy and token count of every group under every condition."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    for condition, per_window in losses.items():
        for window_groups, window_losses in zip(groups, per_window, strict=True):
            for token_groups_, (loss, hit) in zip(window_groups, window_losses, strict=True):
                for group in ("all tokens", *token_groups_):
                    total = sums[group][condition]
                    total[0] += loss
                    total[1] += hit
                    total[2] += 1
    table = {}
    for group, by_condition in sorted(sums.items()):
        row: dict = {"tokens": int(next(iter(by_condition.values()))[2])}
        for condition, (loss, hits, count) in by_condition.items():
            row[f"{condition}_nats"] = round(loss / count, 3)
            row[f"{condition}_accuracy"] = round(hits / count, 3)
        row["slots_minus_text_nats"] = round(row["slots_nats"] - row["raw_text_nats"], 3)
        table[group] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="ComprExIT checkpoint with its reader adapter (default: the shipped one)")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--windows", type=int, default=128, help="NQ dev gold passages (first 128 tokens each)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    backbone = Backbone.from_pretrained(device=args.device)
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone)
    reader = Reader(backbone, adapter=compressor.reader_adapter)
    examples = [example for example in load_split("nq", "dev")]
    ids = tokenize_passages(backbone.tokenizer, [example.passages[0] for example in examples])
    kept = [(example, window[:WINDOW]) for example, window in zip(examples, ids, strict=True) if len(window) >= WINDOW]
    kept = kept[: args.windows]
    windows = [window for _, window in kept]
    slots = compressor.compress_token_ids(windows, ratio=args.ratio)
    texts = [backbone.tokenizer.decode(window) for window in windows]
    conditions: dict[str, tuple[Reader, list[Context]]] = {
        "slots": (reader, [slots.select([i]) for i in range(len(windows))]),
        "raw_text": (reader, texts),
        "raw_text_frozen_reader": (Reader(backbone, adapter=None), texts),
        "no_context": (reader, [None] * len(windows)),
    }
    losses = {}
    for name, (condition_reader, contexts) in conditions.items():
        logging.info("scoring %s", name)
        losses[name] = token_losses(condition_reader, windows, contexts)
    groups = [token_groups(backbone.tokenizer, window, example.answers) for example, window in kept]
    report = {
        "head": args.head or "shipped",
        "ratio": args.ratio,
        "windows": len(windows),
        "window_tokens": WINDOW,
        "windows_with_answer": sum(any(g[3] == "answer span" for g in window) for window in groups),
        "device": str(backbone.device),
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python research/reconstruction_by_token.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None),
        "groups": summarise(groups, losses),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for group, row in report["groups"].items():
        logging.info(
            "%-22s %5d tokens  slots %.2f  text %.2f  text, frozen reader %.2f  none %.2f",
            group,
            row["tokens"],
            row["slots_nats"],
            row["raw_text_nats"],
            row["raw_text_frozen_reader_nats"],
            row["no_context_nats"],
        )


if __name__ == "__main__":
    main()
