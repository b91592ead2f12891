"""Can the frozen reader decode soft inputs at all? Free vectors optimised to make it reconstruct a passage.

No head is involved: for each passage, ``ceil(length / ratio)`` free vectors (initialised to the means
of contiguous segments of the passage's own token embeddings) are optimised with Adam so that the
frozen reader, reading them inside the reconstruction prompt (``ReconstructionPrompt``, the chat
frame of pretraining), regenerates the passage token by token. It measures the reader side of the
compression problem alone: if free vectors reach a low loss, the reader can decode that many soft
inputs, and what limits a trained head is the head and its training, not the reader.

Reported: the reconstruction loss and the teacher-forced token accuracy every 10 steps, and the
mean norm of the vectors against the token embeddings'. Wikipedia windows from the pretraining
corpus (``PretrainCorpus``), fixed seed. CPU, fp32, about 6 s per step for 4 passages of 128 tokens::

    HF_HUB_OFFLINE=1 python research/soft_input_capacity.py --out research/results/soft_input_capacity.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from comprexit_rag.backbone import Backbone
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.data import PretrainCorpus
from comprexit_rag.training.teacher_forcing import target_logits


def segment_mean_init(backbone: Backbone, passages: list[list[int]], slots: int) -> torch.Tensor:
    """[N, slots, H]: the mean token embedding of each of ``slots`` contiguous segments of each passage."""
    with torch.no_grad():
        rows = [backbone.embed(torch.tensor(ids)).chunk(slots) for ids in passages]
        return torch.stack([torch.stack([segment.mean(0) for segment in row]) for row in rows])


def reconstruction(reader: Reader, vectors: torch.Tensor, targets: list[list[int]]) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy of the target tokens and the share predicted right (teacher forcing)."""
    inputs = reader.build_inputs(
        [""] * len(targets), list(vectors), targets, prompt=ReconstructionPrompt(), padding_side="right"
    )
    logits, labels = target_logits(reader, inputs)
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per passage")
    parser.add_argument("--ratio", type=int, default=4, help="tokens per free vector")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05, help="Adam step size, in units of the mean embedding norm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    backbone = Backbone.from_pretrained(device="cpu")
    reader = Reader(backbone)
    corpus = PretrainCorpus.build(backbone.tokenizer, max_tokens=200_000)
    windows = corpus.sample(random.Random(args.seed), args.passages, args.length, continuation=0)
    passages = [example.passage_ids[0] for example in windows]
    targets = [[*ids, answer_end_token_id(backbone.tokenizer)] for ids in passages]
    slots = -(-args.length // args.ratio)
    vectors = torch.nn.Parameter(segment_mean_init(backbone, passages, slots))
    embedding_norm = backbone.input_embeddings.weight.norm(dim=-1).mean().item()
    optimizer = torch.optim.Adam([vectors], lr=args.lr * embedding_norm)

    curve, started = [], time.perf_counter()
    for step in tqdm(range(args.steps + 1), desc="free vectors"):
        loss, accuracy = reconstruction(reader, vectors, targets)
        if step % 10 == 0:
            curve.append({"step": step, "loss": round(loss.item(), 4), "token_accuracy": round(accuracy, 4)})
        if step < args.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    result = {
        "description": "free vectors (no head) optimised so the frozen reader reconstructs each passage",
        "config": vars(args) | {"out": str(args.out) if args.out else None, "slots_per_passage": slots},
        "backbone": backbone.name,
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "embedding_norm_mean": round(embedding_norm, 3),
        "vector_norm_mean": round(vectors.detach().norm(dim=-1).mean().item(), 3),
        "curve": curve,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
