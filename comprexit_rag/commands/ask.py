"""``comprexit-rag ask``: answer a question from an indexed pipeline directory."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING

from ..methods import describe_methods, get_method, method_names
from ._args import positive_int

if TYPE_CHECKING:
    from ..rag.results import Answer


NAME = "ask"
HELP = "answer a question from a directory built by `comprexit-rag index`"
DESCRIPTION = """\
Retrieve the --k passages closest to QUESTION in DIRECTORY (built by `comprexit-rag index`) and
answer from their stored slots; prints the answer, its sources and what was read.
"""


def run(args: argparse.Namespace) -> int:
    from ..rag.pipeline import RAGPipeline

    # With --json, stdout carries the JSON object and nothing else: stray prints go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        pipeline = RAGPipeline.load(args.directory, comi_merger=args.comi_merger, device=args.device)
        answer = pipeline.ask(
            args.question,
            method=args.method,
            k=args.k,
            ratio=args.ratio,
            max_new_tokens=args.max_new_tokens,
            search_query=args.search_query,
        )
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
        return 0
    print(f"Answer ({answer.method}): {answer.answer}")
    print("Sources:")
    for rank, source in enumerate(answer.sources, start=1):
        print(f"  {rank}. [{source.score:.3f}] {source.title or source.id}")
    print(f"Context: {describe_stats(answer)}")
    return 0


def describe_stats(answer: Answer) -> str:
    """One line: context tokens, slots and ratio, store hits (stored slots) and timings."""
    spec, stats = get_method(answer.method), answer.stats
    context = f"{stats.context_tokens} tokens" if spec.context != "none" else "no passages"
    if spec.context == "slots":
        context += f" -> {stats.slots} slots (ratio {stats.ratio:.1f})"
    if spec.storable:
        context += f", store hits {stats.store_hits}/{stats.store_hits + stats.store_misses}"
    times = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in answer.timings.items())
    return f"{context}; {times}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="pipeline directory built by `comprexit-rag index`")
    parser.add_argument("question", help="the question, in quotes")
    parser.add_argument(
        "--method",
        choices=method_names(pipeline=True),
        default="comprexit",
        help=describe_methods(method_names(pipeline=True)),
    )
    parser.add_argument("--k", type=positive_int, default=5, help="passages to retrieve")
    parser.add_argument(
        "--search-query", help="retrieve with this text instead of the question (the reader reads the question)"
    )
    parser.add_argument("--ratio", type=int, help="compression ratio (default: the pipeline's)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="longest answer, in tokens")
    parser.add_argument("--comi-merger", help="COMI merger checkpoint for --method comi (default: the shipped one)")
    parser.add_argument("--device", help="torch device of the backbone (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
