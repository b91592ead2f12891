"""CPU cost of reading through the reader adapter: the same slots and questions, with and without it.

The adapter is a LoRA kept separate from the frozen weights (the pass that feeds the head must stay
frozen, so it cannot be merged into the shared backbone): every adapted linear layer adds two thin
matmuls. This times what that costs a reader answering from slots (prefill + greedy decoding), as
the pipeline does, one question at a time. The answers differ (the adapter changes them), so each
side decodes a fixed number of tokens (no early stop) and the times compare equal work.

    HF_HUB_OFFLINE=1 python benchmarks/adapter_read_cost.py --out benchmarks/results/adapter_read_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from benchmark_environment import median_seconds

from comprexit_rag import Backbone, ComprExITCompressor, Reader
from comprexit_rag.data import load_split


def timed_answers(reader: Reader, questions: list[str], contexts: list, new_tokens: int, repeats: int) -> float:
    reader.stop_token_ids = {-1}  # no real token stops decoding: both readers decode exactly new_tokens

    def answer_all() -> None:
        for question, context in zip(questions, contexts, strict=True):
            reader.generate(question, context, max_new_tokens=new_tokens)

    return median_seconds(answer_all, repeats=repeats) / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8, help="NQ dev questions (gold passage, 4x)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    backbone = Backbone.from_pretrained(device="cpu")
    compressor = ComprExITCompressor.from_pretrained(backbone=backbone)
    if compressor.reader_adapter is None:
        raise SystemExit("The default head has no reader adapter: nothing to compare.")
    examples = load_split("nq", "dev")[: args.questions]
    contexts = [compressor.compress([p.formatted() for p in e.passages], ratio=4) for e in examples]
    questions = [e.question for e in examples]
    # The frozen reader reads the same slot vectors; only the adapter differs.
    frozen_contexts = [context.embeddings() for context in contexts]
    with torch.inference_mode():
        adapted = timed_answers(Reader(backbone), questions, contexts, args.new_tokens, args.repeats)
        frozen = timed_answers(
            Reader(backbone, adapter=None), questions, frozen_contexts, args.new_tokens, args.repeats
        )
    report = {
        "questions": len(questions),
        "mean_slots": sum(c.num_slots for c in contexts) / len(contexts),
        "new_tokens": args.new_tokens,
        "seconds_per_question_with_adapter": round(adapted, 4),
        "seconds_per_question_frozen": round(frozen, 4),
        "ratio": round(adapted / frozen, 3),
        "goal": "<= 1.1",
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": "HF_HUB_OFFLINE=1 python benchmarks/adapter_read_cost.py --out " + str(args.out),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
