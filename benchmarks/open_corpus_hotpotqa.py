"""Open-corpus RAG on HotpotQA, end to end on CPU: retrieval recall, answer quality and per-query latency.

The corpus is every distinct paragraph (title + text) of the first ``--limit`` questions of the fixed
HotpotQA dev split (``load_split("hotpotqa", "dev")``; 50 questions give 500 paragraphs). It is indexed
once with ``RAGPipeline.index`` (MiniLM dense retrieval over faiss, ComprExIT slots computed and stored
at ``--ratio``); the indexing time is reported on its own, as it is paid once, not per query.

Each question is then answered by every method of ``--methods`` from the same top ``--k`` passages:

- ``comprexit``: the stored slots of the retrieved passages;
- ``comi``: the retrieved passages compressed with the question (query-aware COMI), per query;
- ``full``: the raw text of the retrieved passages.

Next to each method, the controls every quality table of this project shows: the same method reading
the passages retrieved for another question (the next one; ``<method>/other``, through
``RAGPipeline.ask(search_query=...)``), and the reader answering closed-book (``closed-book``, through
the same reader adapter as the slots and the text). Own minus other is what the passages contribute.

Methods are interleaved per question (after one untimed warm-up call each), so load on a shared
machine affects all of them alike. Reported per method: retrieval recall@k (share of the question's
supporting paragraphs in the top k, and the share of questions with both found), EM / F1 / accuracy
(``comprexit_rag.evaluation.metrics``), mean and median wall-clock latency of ``RAGPipeline.ask``
with the pipeline's own breakdown (retrieve / compress / read), the latency relative to ``full``
(goal for ``comprexit``: <= 0.25x) and the context vectors the reader reads (slots, or text tokens
for ``full``).

Reproduce the committed 4x result (about 10 minutes on 2 cores, all three methods, indexing included)::

    HF_HUB_OFFLINE=1 python benchmarks/open_corpus_hotpotqa.py --out benchmarks/results/open_corpus_hotpotqa.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from benchmark_environment import load_average, machine_environment
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from comprexit_rag.data import Passage, QAExample, load_split
from comprexit_rag.evaluation.metrics import answer_contained, compute_scores, exact_match, f1_score
from comprexit_rag.rag import METHODS, RAGPipeline
from comprexit_rag.rag.directory import PIPELINE_FILE
from comprexit_rag.rag.results import Answer, IndexReport
from comprexit_rag.retrieval import DenseRetriever, default_embedder_path
from comprexit_rag.slots import content_key

logger = logging.getLogger("open_corpus_hotpotqa")

DEFAULT_OUT = Path(__file__).parent / "results" / "open_corpus_hotpotqa.json"
TIMING_KEYS = ("retrieve", "compress", "read", "total")
LATENCY_GOAL = 0.25  # comprexit latency / full latency


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=50, help="first N HotpotQA dev questions (corpus and queries)")
    parser.add_argument("--k", type=int, default=5, help="passages retrieved per question (all methods)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="closed-book runs whatever is chosen"
    )
    parser.add_argument("--ratio", type=int, default=4, help="compression ratio (stored slots and COMI)")
    parser.add_argument(
        "--head", default=None, help="ComprExIT head: a directory or a shipped head's name (default: the 4x head)"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the backbone and the embedder")
    parser.add_argument("--batch-size", type=int, default=8, help="compressor batch size at indexing time")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="longest answer, in tokens")
    parser.add_argument("--warmup", type=int, default=1, help="untimed ask() calls per method before timing")
    parser.add_argument("--index-dir", type=Path, default=None, help="pipeline directory, reused if it holds one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.k < 1 or args.warmup < 0:
        parser.error("--limit and --k must be >= 1, --warmup >= 0")
    # Closed-book always runs (last): every quality table shows it.
    args.methods = [method for method in dict.fromkeys(args.methods) if method != "closed-book"]
    return args


def corpus_of(examples: Sequence[QAExample]) -> list[Passage]:
    """Every paragraph of ``examples``, de-duplicated by title + text, first occurrence first (ids dropped)."""
    unique = dict.fromkeys(Passage(text=p.text, title=p.title) for example in examples for p in example.passages)
    return list(unique)


@contextlib.contextmanager
def pipeline_directory(index_dir: Path | None) -> Iterator[Path]:
    """``index_dir`` (kept), or a temporary directory removed afterwards."""
    if index_dir is not None:
        yield index_dir
        return
    with tempfile.TemporaryDirectory(prefix="open-corpus-hotpotqa-") as tmp:
        yield Path(tmp)


def open_pipeline(directory: Path, args: argparse.Namespace) -> tuple[RAGPipeline, bool]:
    """Load the pipeline in ``directory`` (True) or build a new one there (False), embedder on ``--device``."""
    if (directory / PIPELINE_FILE).exists():
        embedder = SentenceTransformer(str(default_embedder_path()), device=args.device)
        pipeline = RAGPipeline.load(directory, head=args.head, ratio=args.ratio, embedder=embedder, device=args.device)
        return pipeline, True
    retriever = DenseRetriever(device=args.device)
    pipeline = RAGPipeline.build(directory, head=args.head, ratio=args.ratio, retriever=retriever, device=args.device)
    return pipeline, False


def retrieval_recall(pipeline: RAGPipeline, example: QAExample, answer: Answer) -> dict[str, Any]:
    """Supporting paragraphs of ``example`` among the retrieved ones (matched by formatted text)."""
    retrieved = {content_key(pipeline.retriever.get(source.id).text) for source in answer.sources}
    supporting = [content_key(p.formatted()) for p in example.gold_passages()]
    found = sum(key in retrieved for key in supporting)
    return {
        "supporting": len(supporting),
        "supporting_found": found,
        "recall": found / len(supporting) if supporting and answer.sources else None,  # closed-book retrieves none
        "all_supporting_found": bool(supporting) and found == len(supporting),
    }


def answer_row(pipeline: RAGPipeline, example: QAExample, answer: Answer, wall: float) -> dict[str, Any]:
    """One (question, method) row: prediction, scores, latency, context size and retrieval recall."""
    stats = answer.stats
    return {
        "id": example.id,
        "question": example.question,
        "gold": list(example.answers),
        "method": answer.method,
        "prediction": answer.answer,
        "em": exact_match(answer.answer, example.answers),
        "f1": f1_score(answer.answer, example.answers),
        "accuracy": answer_contained(answer.answer, example.answers),
        "latency_s": wall,
        "timings_s": dict(answer.timings),
        "answer_tokens": len(pipeline.backbone.tokenize([answer.answer])[0]) if answer.answer else 0,
        "context_tokens": stats.context_tokens,
        "slots": stats.slots,
        "context_vectors": stats.context_tokens if answer.method == "full" else stats.slots,
        "store_hits": stats.store_hits,
        "store_misses": stats.store_misses,
        "sources": [source.title for source in answer.sources],
        **retrieval_recall(pipeline, example, answer),
    }


def run_name(method: str, other: bool) -> str:
    return f"{method}/other" if other else method


def summarize(rows: list[dict[str, Any]], examples: Sequence[QAExample]) -> dict[str, Any]:
    """Per-method means (and latency medians) over the rows of one method, in the order of ``examples``."""
    by_id = {row["id"]: row for row in rows}
    ordered = [by_id[example.id] for example in examples]
    scores = compute_scores([row["prediction"] for row in ordered], examples)
    latencies = [row["latency_s"] for row in ordered]
    recalls = [row["recall"] for row in ordered if row["recall"] is not None]

    def mean(key: str) -> float:
        return statistics.fmean(row[key] for row in ordered)

    return {
        "n": len(ordered),
        **scores.as_dict(),
        "recall_at_k": statistics.fmean(recalls) if recalls else None,
        "all_supporting_found": statistics.fmean(float(row["all_supporting_found"]) for row in ordered),
        "latency_mean_s": statistics.fmean(latencies),
        "latency_median_s": statistics.median(latencies),
        "timings_mean_s": {key: statistics.fmean(row["timings_s"][key] for row in ordered) for key in TIMING_KEYS},
        "timings_median_s": {key: statistics.median(row["timings_s"][key] for row in ordered) for key in TIMING_KEYS},
        "context_vectors_mean": mean("context_vectors"),
        "context_tokens_mean": mean("context_tokens"),
        "slots_mean": mean("slots"),
        "answer_tokens_mean": mean("answer_tokens"),
        "store_hits": sum(row["store_hits"] for row in ordered),
        "store_misses": sum(row["store_misses"] for row in ordered),
    }


def add_latency_ratios(summary: dict[str, dict[str, Any]]) -> None:
    """Each method's mean / median latency (total and read) relative to ``full``, when ``full`` ran."""
    full = summary.get("full")
    if full is None:
        return
    for method in summary.values():
        method["latency_vs_full"] = {
            "mean": method["latency_mean_s"] / full["latency_mean_s"],
            "median": method["latency_median_s"] / full["latency_median_s"],
            "read_mean": method["timings_mean_s"]["read"] / full["timings_mean_s"]["read"],
        }


def table(summary: dict[str, dict[str, Any]], k: int) -> str:
    """The summary as a markdown table."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"| method | recall@{k} | both found | EM | F1 | acc | mean s | median s | retrieve s | compress s "
        "| read s | vs full (mean) | context vectors | answer tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary.items():
        timings = s["timings_mean_s"]
        ratio = s.get("latency_vs_full", {}).get("mean")
        versus = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(
            f"| {name} | {num(s['recall_at_k'], '.3f')} | {s['all_supporting_found']:.3f} | {s['em']:.3f} "
            f"| {s['f1']:.3f} | {s['accuracy']:.3f} | {s['latency_mean_s']:.2f} | {s['latency_median_s']:.2f} "
            f"| {timings['retrieve']:.3f} | {timings['compress']:.2f} | {timings['read']:.2f} "
            f"| {versus} | {s['context_vectors_mean']:.0f} | {s['answer_tokens_mean']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    env = machine_environment(torch.device(args.device))

    examples = load_split("hotpotqa", "dev")[: args.limit]
    corpus = corpus_of(examples)
    logger.info("%d questions, %d distinct paragraphs", len(examples), len(corpus))

    with pipeline_directory(args.index_dir) as directory:
        started = time.perf_counter()
        pipeline, reused = open_pipeline(directory, args)
        load_s = time.perf_counter() - started
        logger.info("pipeline %s in %.1f s (%s)", "loaded" if reused else "built", load_s, pipeline)

        report: IndexReport = pipeline.index(
            [{"title": p.title, "text": p.text} for p in corpus], batch_size=args.batch_size, show_progress=True
        )
        info = pipeline.info()
        logger.info(
            "indexed: %d new, %d compressed in %.1f s; %d passages in the index, %d with slots",
            report.added,
            report.compressed,
            report.seconds,
            info["passages"],
            info["stored"],
        )
        if info["passages"] != len(corpus):
            logger.warning("the index holds %d passages, the corpus %d", info["passages"], len(corpus))

        ask = {"k": args.k, "max_new_tokens": args.max_new_tokens}
        for method in args.methods:
            for _ in range(args.warmup):
                pipeline.ask(examples[0].question, method=method, **ask)

        # Each method reads the question's own passages, then another question's ("<method>/other"); then closed-book.
        runs = [(method, other) for method in args.methods for other in (False, True)] + [("closed-book", False)]
        rows: dict[str, list[dict[str, Any]]] = {run_name(*run): [] for run in runs}
        for index, example in enumerate(tqdm(examples, desc="questions", unit="question")):
            other_question = examples[(index + 1) % len(examples)].question
            for method, other in runs:
                started = time.perf_counter()
                search_query = other_question if other else None
                answer = pipeline.ask(example.question, method=method, search_query=search_query, **ask)
                wall = time.perf_counter() - started
                name = run_name(method, other)
                rows[name].append(answer_row(pipeline, example, answer, wall) | {"method": name})

    summary = {method: summarize(method_rows, examples) for method, method_rows in rows.items()}
    add_latency_ratios(summary)
    goal = None
    if "comprexit" in summary and "full" in summary:
        ratio = summary["comprexit"]["latency_vs_full"]["mean"]
        goal = {"comprexit_over_full_mean": ratio, "target": LATENCY_GOAL, "met": ratio <= LATENCY_GOAL}
    env["load_average_at_end"] = load_average()

    result = {
        "description": "Open-corpus HotpotQA RAG on CPU: retrieval recall@k, EM/F1/accuracy and ask() latency, "
        "with each method reading another question's passages (<method>/other) and closed-book",
        "config": {
            "questions": len(examples),
            "corpus": f'distinct paragraphs (title + text) of the first {args.limit} of load_split("hotpotqa", "dev")',
            "corpus_passages": len(corpus),
            "index_passages": info["passages"],
            "k": args.k,
            "methods": args.methods,
            "ratio": pipeline.ratio,
            "max_new_tokens": args.max_new_tokens,
            "warmup_calls_per_method": args.warmup,
            "device": args.device,
            "backbone": pipeline.backbone.name,
            "backbone_dtype": str(pipeline.backbone.dtype),
            "head": info["head"],
            "head_fingerprint": info["head_fingerprint"],
            "embedder": pipeline.retriever.embedder_name,
            "index_dir": str(args.index_dir) if args.index_dir is not None else None,
        },
        "environment": env,
        "indexing": {
            "reused_pipeline": reused,
            "pipeline_load_s": load_s,
            "passages_added": report.added,
            "passages_compressed": report.compressed,
            "seconds": report.seconds,
            "passages_per_s": report.compressed / report.seconds if report.compressed else None,
            "slot_bytes": info["slot_bytes"],
        },
        "latency_goal": goal,
        "summary": summary,
        "rows": [row for method_rows in rows.values() for row in method_rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))

    print(
        f"{len(examples)} questions, {info['passages']} passages indexed "
        f"({report.compressed} compressed in {report.seconds:.1f} s), k={args.k}, ratio={pipeline.ratio}, "
        f"{env['cpu_count']} CPUs / {env['torch_threads']} torch threads\n"
    )
    print(table(summary, args.k))
    if goal is not None:
        verdict = "met" if goal["met"] else "not met"
        ratio = goal["comprexit_over_full_mean"]
        print(f"\ncomprexit / full mean latency: {ratio:.2f}x (goal <= {LATENCY_GOAL}x: {verdict})")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
