"""``comprexit-rag index``: read a corpus, index it for retrieval and store its slots (resumable)."""

from __future__ import annotations

import argparse
import logging
import sys

from ._args import positive_int

logger = logging.getLogger(__name__)


NAME = "index"
HELP = "index a corpus: dense retrieval + ComprExIT slots computed once and stored (reruns resume)"
DESCRIPTION = """\
Index CORPUS into the pipeline directory --out. CORPUS is a .jsonl/.json file of {"id"?, "title"?,
"text"} records, a folder of .txt/.md files, a HotpotQA file (every unique paragraph) or the 2Wiki
corpus.json.gz. Rerunning resumes an interrupted run; passages already indexed are skipped.
"""


def run(args: argparse.Namespace) -> int:
    from ..corpus import read_corpus
    from ..rag.pipeline import RAGPipeline

    passages = read_corpus(args.corpus, limit=args.limit)
    print(f"Read {len(passages)} passages from {args.corpus}", file=sys.stderr)
    logger.info("Loading the models (the first run converts the embedded SmolLM2 once, about a minute)")
    # An existing directory keeps its recorded ratio unless --switch-ratio says otherwise.
    switch = args.switch_ratio and args.ratio is not None
    ratio = None if switch else args.ratio
    pipeline = RAGPipeline.open(args.out, backbone=args.backbone, head=args.head, ratio=ratio, device=args.device)
    if switch and pipeline.ratio != args.ratio:
        pipeline.switch_ratio(args.ratio)
    logger.info(
        "Embedding the new passages for retrieval, then compressing them into slots (%d per batch): "
        "each stage shows a progress bar",
        args.batch_size,
    )
    report = pipeline.index(
        passages,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        show_progress=not args.no_progress,
        verify=args.verify,
    )
    info = pipeline.info()
    print(
        f"Indexed {report.passages} passages into {args.out}: {report.added} new, {report.compressed} compressed "
        f"in {report.seconds:.1f} s; {info['passages']} passages in the index, {info['stored']} with stored slots "
        f"(ratio {info['ratio']}, {info['slot_bytes'] / 2**20:.1f} MiB)."
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help="corpus file or folder")
    parser.add_argument("--out", required=True, help="pipeline directory (created, or resumed when it exists)")
    parser.add_argument(
        "--ratio",
        type=int,
        help="compression ratio of the stored slots (default: the head's for a new directory, else the recorded one)",
    )
    parser.add_argument(
        "--switch-ratio",
        action="store_true",
        help="with --ratio on an existing directory: make it the directory's ratio (its slots at the old ratio stay)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="passages per compressor batch")
    parser.add_argument(
        "--chunk-size", type=positive_int, help="passages compressed and committed together (default: 8 x batch size)"
    )
    parser.add_argument("--limit", type=positive_int, help="index only the first N passages of the corpus")
    parser.add_argument(
        "--head",
        help="ComprExIT head: a checkpoint directory or the name of a shipped one (default: the shipped head, "
        "trained at 4x; comprexit-smollm2-135m-multi-ratio reads 8x and 16x)",
    )
    parser.add_argument("--backbone", help="HF causal-LM name or path for a new pipeline (default: embedded SmolLM2)")
    parser.add_argument("--device", help="torch device of the backbone (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every stored shard's sha256 before indexing (default: sizes only) and repair the store",
    )
