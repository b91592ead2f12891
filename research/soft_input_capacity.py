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

With ``--head``, the reader reads through that head's reader adapter, the head's own slots of the same
passages are scored beside the free vectors, and ``--init head`` starts the vectors from those slots: how
much more of the passage this many vectors can make the reader give back than the head puts in them.
``--source nq`` takes NQ dev gold passages instead (their first ``--length`` tokens, answer inside), scores
the answer span's tokens apart and answers each question from the head's slots, the optimised vectors, the
raw text, another question's slots (the content gap) and no context. The 16x question of session 33 (about
20 s a step on this CPU; ``--steps 0`` scores the head alone, in a few minutes)::

    HF_HUB_OFFLINE=1 python research/soft_input_capacity.py --head comprexit-smollm2-135m-multi-ratio \
        --ratio 16 --source nq --passages 16 --init head --steps 100 \
        --out research/results/soft_input_capacity_16x_nq.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from reconstruction_by_token import token_groups  # research/ is on the path when run as a script
from tqdm.auto import tqdm

from comprexit_rag.backbone import Backbone
from comprexit_rag.data import QAExample, load_split
from comprexit_rag.evaluation.metrics import f1_score
from comprexit_rag.evaluation.reconstruction import reconstruction_scores
from comprexit_rag.methods.comprexit.compressor import ComprExITCompressor
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Context, Reader
from comprexit_rag.training.data import PretrainCorpus, tokenize_passages
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


def wikipedia_passages(backbone: Backbone, count: int, length: int, seed: int) -> list[list[int]]:
    corpus = PretrainCorpus.build(backbone.tokenizer, max_tokens=200_000)
    return [example.passage_ids[0] for example in corpus.sample(random.Random(seed), count, length, continuation=0)]


def nq_passages(backbone: Backbone, count: int, length: int) -> list[tuple[QAExample, list[int]]]:
    """The first ``count`` NQ dev questions whose gold passage's first ``length`` tokens hold an answer."""
    examples = load_split("nq", "dev")
    kept = []
    ids_of = tokenize_passages(backbone.tokenizer, [example.passages[0] for example in examples])
    for example, ids in zip(examples, ids_of, strict=True):
        window = ids[:length]
        if len(window) == length and any(
            "answer span" in groups for groups in token_groups(backbone.tokenizer, window, example.answers)
        ):
            kept.append((example, window))
            if len(kept) == count:
                break
    return kept


def scored(reader: Reader, passages: list[list[int]], contexts: list[Context], groups: list[list[list[str]]]) -> dict:
    """Teacher-forced nats and top-1 accuracy over all tokens and over the answer spans' tokens."""
    rows: dict[str, list[tuple[float, bool]]] = {"all tokens": [], "answer span": []}
    for (losses, hits), window_groups in zip(reconstruction_scores(reader, passages, contexts), groups, strict=True):
        for loss, hit, token_groups_ in zip(losses[:-1].tolist(), hits[:-1].tolist(), window_groups, strict=True):
            rows["all tokens"].append((loss, hit))
            if "answer span" in token_groups_:
                rows["answer span"].append((loss, hit))
    return {
        name: {
            "tokens": len(values),
            "nats": round(sum(loss for loss, _ in values) / len(values), 3),
            "token_accuracy": round(sum(hit for _, hit in values) / len(values), 3),
        }
        for name, values in rows.items()
        if values
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per passage")
    parser.add_argument("--ratio", type=int, default=4, help="tokens per free vector")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05, help="Adam step size, in units of the mean embedding norm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", help="read through this ComprExIT head's reader adapter (default: the frozen reader)")
    parser.add_argument("--init", choices=["segment-mean", "head"], default="segment-mean")
    parser.add_argument("--source", choices=["wikipedia", "nq"], default="wikipedia")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.init == "head" and not args.head:
        parser.error("--init head needs --head")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)

    backbone = Backbone.from_pretrained(device="cpu")
    compressor = ComprExITCompressor.from_pretrained(args.head, backbone) if args.head else None
    reader = Reader(backbone, adapter=compressor.reader_adapter if compressor else None)
    examples: list[QAExample] = []
    if args.source == "nq":
        examples, passages = map(list, zip(*nq_passages(backbone, args.passages, args.length), strict=True))
    else:
        passages = wikipedia_passages(backbone, args.passages, args.length, args.seed)
    targets = [[*ids, answer_end_token_id(backbone.tokenizer)] for ids in passages]
    answer_sets = [example.answers for example in examples] if examples else [()] * len(passages)
    tokenizer = backbone.tokenizer
    groups = [token_groups(tokenizer, ids, answers) for ids, answers in zip(passages, answer_sets, strict=True)]
    slots = -(-args.length // args.ratio)
    head_slots = None
    if compressor is not None:
        with torch.no_grad():
            context = compressor.compress_token_ids(passages, ratio=args.ratio)
        head_slots = torch.stack([context.passage(i) for i in range(len(passages))]).float()
        if head_slots.shape[1] != slots:
            raise SystemExit(f"the head gives {head_slots.shape[1]} slots a passage, not {slots}")
    start = head_slots if args.init == "head" else segment_mean_init(backbone, passages, slots)
    vectors = torch.nn.Parameter(start.clone())
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
    contexts: dict[str, list[Context]] = {"free vectors": list(vectors.detach()), "no context": [None] * len(passages)}
    if head_slots is not None:
        contexts["head's slots"] = list(head_slots)
        contexts["head's slots, another question's"] = list(head_slots.roll(-1, dims=0))  # i reads i+1's
    texts = [backbone.tokenizer.decode(ids) for ids in passages]
    contexts["raw text"] = texts
    with torch.no_grad():
        reconstruction_table = {name: scored(reader, passages, context, groups) for name, context in contexts.items()}
    answers = {}
    if examples:
        questions = [example.question for example in examples]
        answers = {name: reader.generate(questions, context) for name, context in contexts.items()}
    result = {
        "description": "free vectors optimised so the reader reconstructs each passage, against a head's slots",
        "command": "python " + " ".join(sys.argv),
        "config": vars(args) | {"out": str(args.out) if args.out else None, "slots_per_passage": slots},
        "backbone": backbone.name,
        "reader_adapter": args.head or "none (frozen reader)",
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "embedding_norm_mean": round(embedding_norm, 3),
        "vector_norm_mean": round(vectors.detach().norm(dim=-1).mean().item(), 3),
        "head_slot_norm_mean": round(head_slots.norm(dim=-1).mean().item(), 3) if head_slots is not None else None,
        "curve": curve,
        "reconstruction": reconstruction_table,
    }
    if examples:
        result["answers"] = [
            {"question": e.question, "gold": list(e.answers)}
            | {name: [answers[name][i], round(100 * f1_score(answers[name][i], e.answers), 1)] for name in answers}
            for i, e in enumerate(examples)
        ]
        result["f1"] = {
            name: round(sum(row[name][1] for row in result["answers"]) / len(examples), 1) for name in answers
        }
    print(json.dumps({key: result[key] for key in ("curve", "reconstruction", "f1") if key in result}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
