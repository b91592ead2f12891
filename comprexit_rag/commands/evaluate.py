"""``comprexit-rag eval``: score one method on a QA file with the shared reader."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path

from ..data import load_hotpotqa, load_nq_open, load_policyqa, load_squad_mrqa
from ..errors import InvalidInputError
from ..methods import get_method, method_names
from ._args import positive_int

logger = logging.getLogger(__name__)

# --format -> the file's loader, and the split family whose dev examples the file holds
FORMATS: dict[str, tuple[Callable[[str], list], str]] = {
    "hotpotqa": (load_hotpotqa, "hotpotqa"),
    "nq-open": (load_nq_open, "nq"),
    "squad-mrqa": (load_squad_mrqa, "squad"),
    "policyqa": (load_policyqa, "policyqa"),
}


NAME = "eval"
HELP = "evaluate a method (EM, F1, accuracy, cost) on a QA file"
DESCRIPTION = """\
Score one way of giving the reader the passages (--method) on a QA file: exact match, F1, accuracy,
and the context tokens/slots read.
"""


def load_examples(
    path: str, data_format: str, split: str, context: str, limit: int | None, retrieved: int | None = None
) -> list:
    """The file's examples of ``split`` (with their ``context``), the first ``limit``; with ``retrieved`` = K,
    each one-passage example's gold passage comes among the K passages of the file closest to its question
    (:func:`~comprexit_rag.evaluation.retrieved_contexts.with_retrieved_distractors`; chosen for the whole
    split, so one set of cached neighbours serves every ``limit``)."""
    from ..data import QAExample, load_split
    from ..data.paths import DataNotFoundError
    from ..evaluation.retrieved_contexts import with_retrieved_distractors

    loader, family = FORMATS[data_format]
    examples: list[QAExample] = read_qa_file(loader, path, data_format)
    pool = [passage for example in examples for passage in example.passages]
    if split != "all":
        try:
            split_ids = {e.id for e in load_split(family, split)}
        except DataNotFoundError:
            split_ids = set()
        kept = [e for e in examples if e.id in split_ids]
        if kept:
            examples = kept
        elif split == "train":  # scores on the training questions are asked for on purpose: never substitute
            raise InvalidInputError(
                f"--data {path} holds no example of the project's {family} train split. Pass one of the shared "
                "data files that the split is drawn from, or --split all."
            )
        else:
            logger.warning("%s has no example of the project's dev split; evaluating all of it.", path)
    if context == "gold":
        examples = [
            QAExample(e.id, e.question, e.answers, e.gold_passages(), tuple(range(len(e.gold_passages()))))
            for e in examples
        ]
    if retrieved:
        examples = with_retrieved_distractors(examples, pool, retrieved)
    return examples[:limit] if limit else examples


def load_reader_adapter(path: str, backbone):
    from ..reading.adapter import ADAPTER_DIR, ReaderAdapter

    directory = Path(path)
    return ReaderAdapter.from_pretrained(
        directory / ADAPTER_DIR if (directory / ADAPTER_DIR).is_dir() else directory, backbone
    )


def read_qa_file(loader: Callable[[str], list], path: str, data_format: str) -> list:
    """``loader(path)``, with every way the file can be wrong turned into one :class:`InvalidInputError`."""
    source = Path(path)
    if not source.exists():
        raise InvalidInputError(f"--data {path}: no such file.")
    if source.is_dir():
        raise InvalidInputError(f"--data {path} is a directory; pass one QA file.")
    try:
        examples = loader(path)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, EOFError, zlib.error) as error:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, gzip.BadGzipFile an OSError of its own.
        raise InvalidInputError(
            f"--data {path} is not a {data_format} file ({type(error).__name__}: {error}). Check --format "
            f"({', '.join(FORMATS)}) and that the file is complete."
        ) from error
    except gzip.BadGzipFile as error:
        raise InvalidInputError(f"--data {path} is a corrupt gzip file ({error}).") from error
    if not examples:
        raise InvalidInputError(f"--data {path} holds no {data_format} example.")
    return examples


def run(args: argparse.Namespace) -> int:
    from ..backbone import Backbone
    from ..evaluation.harness import evaluate
    from ..evaluation.methods import build_method
    from ..evaluation.paired import write_predictions
    from ..reading.reader import Reader
    from ..validation import validate_ratio

    ratio = validate_ratio(args.ratio, 128) if get_method(args.method).takes_ratio else None
    examples = load_examples(args.data, args.format, args.split, args.context, args.limit, args.retrieved_distractors)
    backbone = Backbone.from_pretrained(args.backbone, device=args.device)
    method = build_method(args.method, backbone, ratio or 4, args.checkpoint)
    adapter = method.reader_adapter  # the one its checkpoint brought, if any
    if args.reader_adapter == "none":
        adapter = None
    elif args.reader_adapter:
        adapter = load_reader_adapter(args.reader_adapter, backbone)
    reader = Reader(backbone, max_new_tokens=args.max_new_tokens, adapter=adapter)
    result = evaluate(
        method,
        reader,
        examples,
        ratio=ratio,
        batch_size=args.batch_size,
        show_progress=not args.json,
        contexts_from=args.contexts_from,
    )
    if args.predictions:
        write_predictions(args.predictions, examples, result.predictions)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="QA file (HotpotQA json/jsonl, NQ-open jsonl[.gz], MRQA)")
    parser.add_argument("--format", choices=tuple(FORMATS), required=True, help="layout of the --data file")
    parser.add_argument("--method", choices=method_names(), required=True, help="how the reader gets the passages")
    parser.add_argument(
        "--ratio", type=int, default=4, help="compression ratio for " + ", ".join(method_names(takes_ratio=True))
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N examples")
    parser.add_argument(
        "--context",
        choices=("distractor", "gold"),
        default="distractor",
        help="HotpotQA: all paragraphs of a question (distractor) or only the supporting ones (gold)",
    )
    parser.add_argument(
        "--split",
        choices=("dev", "train", "all"),
        default="dev",
        help="dev: keep only this project's held-out dev split when the file is one of the shared data files "
        "(a file with no example in the split is used whole); train: only the examples the QA stage trains on "
        "(against dev, how much of a score is memorised); all: every example",
    )
    parser.add_argument(
        "--contexts-from",
        choices=("own", "other"),
        default="own",
        help="other: each question reads the next example's passages (the content gap is own minus other)",
    )
    parser.add_argument(
        "--retrieved-distractors",
        type=positive_int,
        metavar="K",
        help="one-passage files (NQ-open, SQuAD, PolicyQA): read each gold passage among the K passages of the file "
        "closest to the question by the retriever's embedder (all-MiniLM-L6-v2), as a RAG pipeline's top hits come",
    )
    parser.add_argument(
        "--checkpoint",
        help="trained module of the method: a checkpoint directory or the name of a shipped one "
        "(default: the shipped one)",
    )
    parser.add_argument(
        "--reader-adapter",
        help="read through this reader adapter (a head checkpoint with reader_adapter/, or the adapter directory), "
        "e.g. closed-book or full text with the adapter a head was trained with; 'none' reads with the frozen "
        "weights (default: the adapter of the method's checkpoint, if any)",
    )
    parser.add_argument("--backbone", help="HF causal-LM name or path (default: embedded SmolLM2)")
    parser.add_argument("--device", help="torch device of the backbone (default: cuda when available)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="examples per reader batch")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="longest answer, in tokens")
    parser.add_argument("--predictions", help="write one JSON line per example (id, question, answers, prediction)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
