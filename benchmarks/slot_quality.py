"""What a head's slots carry, on held-out data: reconstruction and QA, each next to its controls.

For one head checkpoint (with its reader adapter, if it has one), through one reader:

* **Reconstruction** of the first 128 tokens of NQ dev gold passages (teacher-forced nats/token and
  token accuracy): from the passage's own slots, from another passage's slots, with no context, and
  from the raw text.
* **Reconstruction by length** (``--recon-lengths``): the same passages cut to each length, own slots
  against no context. Passages come in every length, and a head pretrained on one window length may read
  only that one (BENCHMARKS.md, session 17). The passages are random windows of the longest length from
  the token stream of a Wikipedia shard that no reader-adapter run trains on
  (``comprexit_rag.evaluation.reconstruction.HELD_OUT_SHARD``).
* **QA** on the NQ dev gold passage, HotpotQA dev (distractor paragraphs) and SQuAD dev (the gold
  paragraph): EM / F1 / accuracy from
  the question's own slots, from another question's slots (the content gap), closed-book, and the
  raw text, all through the same reader (so closed-book and raw text include the adapter's effect).
* **QA among retrieved passages** (``--nq-retrieved N``): the first N NQ dev questions, each reading its
  gold passage among the ``--retrieved`` passages of the NQ-open file (2,155) closest to the question by the
  retriever's embedder, as a pipeline's top hits would come (``comprexit_rag.evaluation.retrieved_contexts``;
  the same as ``comprexit-rag eval --retrieved-distractors 4`` on that file; the neighbours are cached, so a
  machine without the embedder reads them from a carried cache).
* **Reading tasks** (``--reading-tasks N``): N questions about 128-token windows of the held-out Wikipedia
  shard that only the window answers, span cloze and "what follows" half and half
  (``comprexit_rag.evaluation.reading_tasks``; the kinds the QA stage can train on): whether the reader finds
  an arbitrary fact of the passage in the slots, not only the kinds the labelled QA sets ask about.

``--method`` scores another stored-slot head (``mean-pool``), the query-aware ``comi`` (each passage
compressed with its question; no reconstruction rows, which ask no question), a trained text baseline
(``full-lora``) or ``truncate`` (the first 1/ratio of the text, untrained): ``--head`` is its checkpoint,
read through its adapter when it has one, or through ``--reader-adapter`` (e.g. truncation read through
``full-lora``'s adapter: the same adapter budget). The same table, where "own" is the method's own context
(for ``full-lora`` the raw text, so its ``raw_text`` row is its ``own`` row).

GPU::

    python benchmarks/slot_quality.py --head runs/sft/final --device cuda --out results.json
    python benchmarks/slot_quality.py --method full-lora --head runs/full-lora/final --device cuda --out fl.json
    python benchmarks/slot_quality.py --method comi --head runs/comi/final --device cuda --out comi.json
    python benchmarks/slot_quality.py --method truncate --reader-adapter runs/full-lora/final --device cuda --out t.json

CPU (a smaller sample)::

    HF_HUB_OFFLINE=1 python benchmarks/slot_quality.py --nq 50 --hotpotqa 0 --squad 0 --recon 16 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from comprexit_rag.backbone import Backbone
from comprexit_rag.commands.evaluate import load_examples, load_reader_adapter
from comprexit_rag.data import Passage, QAExample, load_split
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.evaluation.harness import evaluate
from comprexit_rag.evaluation.methods import ClosedBook, EvalMethod, FullText, StoredSlots, build_method
from comprexit_rag.evaluation.metrics import compute_scores
from comprexit_rag.evaluation.reading_tasks import held_out_reading_tasks, task_kind
from comprexit_rag.evaluation.reconstruction import (
    mean_window_scores,
    nats_standard_error,
    reconstruction_scores,
    stream_windows,
)
from comprexit_rag.methods import MethodSpec, get_method, method_names
from comprexit_rag.reading.reader import Context, Reader
from comprexit_rag.training.data import tokenize_passages

WINDOW = 128
# Slot methods (stored or query-aware), the trained methods that give the reader text through their own adapter,
# and truncation (untrained; read through --reader-adapter for an adapter budget).
METHODS = (*method_names(context="slots"), *method_names(context="text", adapter_only=True), "truncate")


def build(spec: MethodSpec, backbone: Backbone, checkpoint: str | None, ratio: int, batch_size: int) -> EvalMethod:
    """The method of ``checkpoint`` (None: the shipped one), with its reader adapter if it brings one."""
    if spec.storable:  # compressing --batch-size passages at a time, as the committed tables did
        compressor = spec.compressor_class().from_pretrained(checkpoint, backbone, batch_size=batch_size)
        return StoredSlots(spec.name, compressor, ratio)
    return build_method(spec.name, backbone, ratio, checkpoint)


def window_contexts(method: EvalMethod, windows: list[list[int]], texts: list[str], ratio: int) -> list[Context]:
    """Each window as ``method`` gives it to the reader: its slots (of exactly the window's tokens), or what a
    text method makes of its text (the text, or its first 1/ratio)."""
    if isinstance(method, StoredSlots):
        slots = method.compressor.compress_token_ids(windows, ratio=ratio)
        return [slots.select([i]) for i in range(len(windows))]
    examples = [QAExample(f"window-{i}", "", ("",), (Passage(text),)) for i, text in enumerate(texts)]
    return method.prepare(examples).contexts


def nq_windows(tokenizer, count: int) -> list[list[int]]:
    """The first WINDOW tokens of the first ``count`` NQ dev gold passages (those of at least WINDOW / 2)."""
    passages = [example.passages[0] for example in load_split("nq", "dev")]
    windows = [ids[:WINDOW] for ids in tokenize_passages(tokenizer, passages) if len(ids) >= WINDOW // 2]
    return windows[:count]


@torch.no_grad()
def reconstruction(method: EvalMethod, reader: Reader, count: int, ratio: int) -> dict:
    backbone = reader.backbone
    windows = nq_windows(backbone.tokenizer, count)
    texts = [backbone.tokenizer.decode(ids) for ids in windows]
    own = window_contexts(method, windows, texts, ratio)
    conditions = {
        "own": own,
        "other": own[1:] + own[:1],
        "none": [None] * len(windows),
        "raw_text": texts,
    }
    result = {"windows": len(windows), "window_tokens": WINDOW}
    for name, contexts in conditions.items():
        result |= {f"{name}_{key}": value for key, value in regenerated(reader, windows, contexts).items()}
    return result


@torch.no_grad()
def reconstruction_by_length(
    method: EvalMethod, reader: Reader, count: int, ratio: int, lengths: list[int], stream_tokens: int = 2_000_000
) -> dict[str, dict]:
    """Own-slot and no-context reconstruction of the same ``count`` passages cut to each of ``lengths``, drawn
    from the first ``stream_tokens`` of the held-out shard (plenty for a few hundred windows)."""
    backbone = reader.backbone
    longest = stream_windows(backbone.tokenizer, count, max(lengths), stream_tokens=stream_tokens)
    result = {}
    for length in lengths:
        windows = [ids[:length] for ids in longest]
        texts = [backbone.tokenizer.decode(ids) for ids in windows]
        row: dict = {"windows": len(windows)}
        conditions = {"own": window_contexts(method, windows, texts, ratio), "none": [None] * len(windows)}
        for name, contexts in conditions.items():
            row |= {f"{name}_{key}": value for key, value in regenerated(reader, windows, contexts).items()}
        result[str(length)] = row
        logging.info(
            "reconstruction, %d tokens: %.3f nats (no context %.3f)", length, row["own_nats"], row["none_nats"]
        )
    return result


def regenerated(reader: Reader, windows: list[list[int]], contexts: list[Context]) -> dict[str, float]:
    """Teacher-forced nats per token (``nats``), their standard error over the windows (``nats_se``) and the
    token accuracy (``token_accuracy``) of regenerating each window from its context."""
    scores = reconstruction_scores(reader, windows, contexts)
    nats, accuracy = mean_window_scores(scores)
    return {
        "nats": round(nats, 4),
        "nats_se": round(nats_standard_error(scores), 4),
        "token_accuracy": round(accuracy, 4),
    }


def qa(
    method: EvalMethod,
    reader: Reader,
    examples: list[QAExample],
    ratio: int,
    batch: int,
    kind: Callable[[QAExample], str] | None = None,
) -> dict:
    """Own / another / closed-book / raw-text scores; with ``kind``, each condition's scores by kind too."""
    runs = {"own": (method, "own"), "other": (method, "other"), "closed_book": (ClosedBook(), "own")}
    if not isinstance(method, FullText):  # a text method's own context is the raw text: its raw_text row is "own"
        runs["raw_text"] = (FullText(reader.backbone), "own")
    result: dict = {"n": len(examples)}
    for name, (context, source) in runs.items():
        scored = evaluate(context, reader, examples, ratio=ratio, batch_size=batch, contexts_from=source)
        result[name] = {key: round(getattr(scored, key), 4) for key in ("em", "f1", "accuracy")}
        if kind is not None:
            result[name]["by_kind"] = scores_by_kind(scored.predictions, examples, kind)
        result[name]["examples"] = [
            {"question": e.question, "gold": list(e.answers), "prediction": p}
            for e, p in zip(examples[:5], scored.predictions[:5], strict=False)
        ]
    result.setdefault("raw_text", result["own"])
    result["content_gap_f1"] = round(result["own"]["f1"] - result["other"]["f1"], 4)
    return result


def scores_by_kind(predictions: list[str], examples: list[QAExample], kind: Callable[[QAExample], str]) -> dict:
    """EM / F1 / accuracy of each kind of example (predictions in the examples' order)."""
    kinds: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        kinds.setdefault(kind(example), []).append(index)
    result = {}
    for name, indices in kinds.items():
        scores = compute_scores([predictions[i] for i in indices], [examples[i] for i in indices])
        result[name] = {key: round(value, 4) for key, value in scores.as_dict().items()}
    return result


def table_examples(table: str, count: int, backbone: Backbone, retrieved: int) -> list[QAExample]:
    """The first ``count`` held-out examples of a QA table."""
    if table == "qa_nq_retrieved":  # exactly `comprexit-rag eval --retrieved-distractors` on the NQ-open file
        return load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "distractor", count, retrieved)
    if table == "reading_tasks":
        return held_out_reading_tasks(backbone.tokenizer, count)
    return load_split(table.removeprefix("qa_"), "dev")[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="comprexit", help="what --head holds (default: comprexit)")
    parser.add_argument(
        "--head", help="checkpoint directory of the method (default: the shipped one; full-lora ships none)"
    )
    parser.add_argument(
        "--reader-adapter",
        help="read through this adapter instead (a checkpoint with reader_adapter/, or the adapter directory; "
        "'none': the frozen reader)",
    )
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--recon", type=int, default=64, help="NQ dev windows for reconstruction (0: skip)")
    parser.add_argument(
        "--recon-lengths",
        type=int,
        nargs="+",
        help="also reconstruct --recon held-out Wikipedia passages cut to each of these lengths (tokens)",
    )
    parser.add_argument("--nq", type=int, default=400, help="NQ dev questions (0: skip)")
    parser.add_argument("--hotpotqa", type=int, default=200, help="HotpotQA dev questions (0: skip)")
    parser.add_argument("--squad", type=int, default=200, help="SQuAD dev questions, gold paragraph (0: skip)")
    parser.add_argument(
        "--nq-retrieved", type=int, default=0, help="NQ dev questions read among retrieved passages (0: skip)"
    )
    parser.add_argument("--retrieved", type=int, default=4, help="retrieved passages read with the gold one")
    parser.add_argument(
        "--reading-tasks", type=int, default=0, help="held-out span-cloze / what-follows questions (0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()

    spec = get_method(args.method)
    backbone = Backbone.from_pretrained(device=args.device)
    method = build(spec, backbone, args.head, args.ratio, args.batch_size)
    adapter = method.reader_adapter
    if args.reader_adapter == "none":
        adapter = None
    elif args.reader_adapter:
        adapter = load_reader_adapter(args.reader_adapter, backbone)
    reader = Reader(backbone, adapter=adapter)
    report: dict = {
        "method": args.method,
        "head": args.head or ("shipped" if spec.storable else None),
        "ratio": args.ratio,
        "reader_adapter": None
        if adapter is None
        else {"scope": adapter.config.scope, "parameters": adapter.num_parameters()},
        "device": str(backbone.device),
        "command": "python benchmarks/slot_quality.py "
        + " ".join(
            f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in vars(args).items()
            if value is not None
        ),
    }
    if args.recon and spec.query_aware:
        logging.info("No reconstruction rows: %s compresses a passage with its question, and they ask none", spec.name)
    elif args.recon:
        report["reconstruction_nq"] = reconstruction(method, reader, args.recon, args.ratio)
        logging.info("reconstruction: %s", report["reconstruction_nq"])
        if args.recon_lengths:
            report["reconstruction_by_length"] = reconstruction_by_length(
                method, reader, args.recon, args.ratio, args.recon_lengths
            )
    counts = {
        "qa_nq": args.nq,
        "qa_hotpotqa": args.hotpotqa,
        "qa_squad": args.squad,
        "qa_nq_retrieved": args.nq_retrieved,
        "reading_tasks": args.reading_tasks,
    }
    for table, count in counts.items():
        if not count:
            continue
        examples = table_examples(table, count, backbone, args.retrieved)
        kind = task_kind if table == "reading_tasks" else None
        report[table] = qa(method, reader, examples, args.ratio, args.batch_size, kind)
        logging.info("%s F1: %s", table, {k: v["f1"] for k, v in report[table].items() if isinstance(v, dict)})
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
