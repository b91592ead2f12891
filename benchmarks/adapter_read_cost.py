"""CPU cost of reading through the reader adapter: the same slots and questions, with and without it.

The adapter is a LoRA kept apart from the frozen weights (the pass that feeds the head must stay
frozen). Read through the LoRA path, every adapted linear layer adds two thin matmuls; the default
reads through a merged copy of the adapted weights, swapped in for the reading pass only
(``ReaderAdapter.merged_reading``). This times both against the frozen reader, answering from slots
(prefill + greedy decoding) as the pipeline does, one question at a time, in interleaved rounds.
The answers differ (the adapter changes them), so each side decodes a fixed number of tokens (no
early stop) and the times compare equal work.

    HF_HUB_OFFLINE=1 python benchmarks/adapter_read_cost.py --out benchmarks/results/adapter_read_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchmark_environment import load_average

from comprexit_rag import Backbone, ComprExITCompressor, Reader
from comprexit_rag.data import load_split


def answer_all(reader: Reader, questions: list[str], contexts: list, new_tokens: int) -> float:
    """Seconds to answer every question once, decoding exactly ``new_tokens`` tokens each."""
    reader.stop_token_ids = {-1}  # no real token stops decoding: both readers decode exactly new_tokens
    started = time.perf_counter()
    for question, context in zip(questions, contexts, strict=True):
        reader.generate(question, context, max_new_tokens=new_tokens)
    return time.perf_counter() - started


def interleaved_medians(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each run over ``repeats`` rounds that alternate the runs' order.

    On a shared machine the load drifts: timing one side after the other would charge the drift to
    one of them, so every round times both, the first one alternating.
    """
    names = list(runs)
    for name in names:  # warm-up: allocator, kernels, caches
        runs[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            samples[name].append(runs[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8, help="NQ dev questions (gold passage, 4x)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="rounds, each timing both readers")
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
    adapter = compressor.reader_adapter
    adapted_reader, frozen_reader = Reader(backbone), Reader(backbone, adapter=None)

    def adapted(merged: bool) -> float:
        adapter.merged_reading = merged
        return answer_all(adapted_reader, questions, contexts, args.new_tokens)

    load_before = load_average()
    with torch.inference_mode():
        medians = interleaved_medians(
            {
                "merged": lambda: adapted(True),
                "lora_path": lambda: adapted(False),
                "frozen": lambda: answer_all(frozen_reader, questions, frozen_contexts, args.new_tokens),
            },
            args.repeats,
        )
    per_question = {name: seconds / len(questions) for name, seconds in medians.items()}
    report = {
        "questions": len(questions),
        "mean_slots": sum(c.num_slots for c in contexts) / len(contexts),
        "new_tokens": args.new_tokens,
        "seconds_per_question_with_adapter_merged": round(per_question["merged"], 4),
        "seconds_per_question_with_adapter_lora_path": round(per_question["lora_path"], 4),
        "seconds_per_question_frozen": round(per_question["frozen"], 4),
        "ratio": round(per_question["merged"] / per_question["frozen"], 3),
        "ratio_lora_path": round(per_question["lora_path"] / per_question["frozen"], 3),
        "goal": "<= 1.1",
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "load_average_before_after": [load_before, load_average()],
        "machine": platform.processor() or platform.machine(),
        "command": "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
