"""Seconds, on this CPU, to compress a 512-token passage and to answer from its slots vs its raw text.

HF_HUB_OFFLINE=1 python benchmarks/cpu_latency.py --out benchmarks/results/cpu_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from benchmark_environment import median_seconds

from comprexit_rag import Backbone, ComprExITCompressor, ComprExITHead, Reader
from comprexit_rag.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", help="head checkpoint (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    backbone = Backbone.from_pretrained(device="cpu")
    try:
        head = ComprExITHead.from_pretrained(args.head)
    except Exception:  # timing does not depend on the weights
        head = ComprExITHead.for_backbone(backbone)
    compressor = ComprExITCompressor(backbone, head)
    reader = Reader(backbone, max_new_tokens=20)

    # A real 512-token passage: consecutive SQuAD dev contexts, cut to exactly 512 tokens.
    ids: list[int] = []
    for example in load_split("squad", "dev"):
        ids += backbone.tokenize([example.passages[0].text + "\n"])[0]
        if len(ids) >= 512:
            break
    passage = backbone.tokenizer.decode(ids[:512])
    question = "What is this passage about?"
    soft = compressor.compress([passage], ratio=4)

    results = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "passage_tokens": soft.num_tokens,
        "slots": soft.num_slots,
        "compress_512_tokens_s": median_seconds(lambda: compressor.compress([passage], ratio=4), args.repeats),
        "answer_from_slots_s": median_seconds(lambda: reader.generate(question, soft), args.repeats),
        "answer_from_text_s": median_seconds(lambda: reader.generate(question, passage), args.repeats),
        # Answers may differ in length (greedy, up to 20 tokens): report them with the times.
        "answer_from_slots": reader.generate(question, soft),
        "answer_from_text": reader.generate(question, passage),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
