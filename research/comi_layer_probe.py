"""Which hidden state should COMI score? A retrieval probe of cos(h_i, q) against SQuAD answer spans.

For SQuAD questions (train split, one question per context, chosen by SHA-1 of the example id)
the frozen default backbone reads ``[BOS] + context + "\\nQuestion: {q}"`` exactly as
:class:`comprexit_rag.comi.COMICompressor` does; the context is truncated to
``--max-context-tokens``. For every candidate layer the query vector is the mean of the question
tokens' states and each context token's relevance is cos(h_i, q). Reported per layer:

- ``top1``: the most relevant token lies inside the gold answer span;
- ``hit@10%``: at least one of the top 10% most relevant tokens lies inside the span;
- ``recall@10%``: the fraction of answer tokens among the top 10%;
- ``MIG group hit@10%``: COMI's coarse stage scores G = ceil(n / m) initial groups by
  MIG = relevance - redundancy; at least one of the top 10% groups by MIG holds an answer token;
- ``group size``: after COMI's coarse stage (ratio ``--ratio``), the mean size of the groups
  holding answer tokens divided by the initial size n / G (below 1: the answer is compressed less);
- ``weight lift``: after the fine stage, the merge weight of answer tokens times their group size
  (1 = a uniform average; above 1: the answer tokens dominate their slot).

A ``chance`` row gives the expected values of the first three for a random ranking.

Run (about 2-4 minutes on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python research/comi_layer_probe.py --examples 150
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from comprexit_rag.backbone import Backbone
from comprexit_rag.data.records import QAExample
from comprexit_rag.data.splits import load_split, sha1_hex
from comprexit_rag.methods.comi import (
    group_index,
    group_mig,
    iter_query_batches,
    mig_merge,
    near_equal_sizes,
    num_groups,
    query_vectors,
    question_token_ids,
)

logger = logging.getLogger("comi_layer_probe")

DEFAULT_LAYERS = (0, 2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 30)


@dataclass
class ProbeItem:
    """One question with its (truncated) context tokens and the answer's token positions."""

    context_ids: list[int]
    question_ids: list[int]
    answer_positions: torch.Tensor  # indices into context_ids


@dataclass
class LayerScores:
    top1: list[float] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    group_hit: list[float] = field(default_factory=list)
    group_size: list[float] = field(default_factory=list)
    weight_lift: list[float] = field(default_factory=list)

    def row(self) -> list[float]:
        values = (self.top1, self.hit, self.recall, self.group_hit, self.group_size, self.weight_lift)
        return [sum(v) / len(v) for v in values]


def select_examples(examples: list[QAExample], count: int) -> list[QAExample]:
    """``count`` examples with distinct contexts, in SHA-1 order of their ids (stable everywhere)."""
    chosen, seen = [], set()
    for example in sorted(examples, key=lambda e: (sha1_hex(e.id), e.id)):
        context = example.passages[0].text
        if context not in seen:
            seen.add(context)
            chosen.append(example)
    return chosen[:count]


def build_item(backbone: Backbone, example: QAExample, max_tokens: int) -> ProbeItem | None:
    """Tokenise context and question; None when no answer occurs within the first ``max_tokens`` tokens."""
    context = example.passages[0].text
    encoded = backbone.tokenizer(  # as Backbone.tokenize: special-token strings in the passage are text
        context, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
    )
    ids, offsets = encoded["input_ids"][:max_tokens], encoded["offset_mapping"][:max_tokens]
    for answer in example.answers:
        start = context.find(answer)
        if start < 0 or not answer.strip():
            continue
        end = start + len(answer)
        positions = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if positions and offsets[-1][1] >= end:
            question_ids = question_token_ids(backbone, [example.question])[0]
            return ProbeItem(ids, question_ids, torch.tensor(positions))
    return None


def score(
    states: torch.Tensor, query: torch.Tensor, answer: torch.Tensor, ratio: int, fraction: float, out: LayerScores
):
    """Add one example's scores at one layer to ``out``."""
    n = states.shape[0]
    units = torch.nn.functional.normalize(states.float(), dim=-1)
    relevance = units @ torch.nn.functional.normalize(query, dim=-1)
    k = max(1, math.ceil(fraction * n))
    top = relevance.topk(k).indices
    in_answer = torch.isin(top, answer)
    out.top1.append(float(in_answer[0]))
    out.hit.append(float(in_answer.any()))
    out.recall.append(float(torch.isin(answer, top).float().mean()))

    initial_sizes = near_equal_sizes(n, num_groups(n, ratio))
    answer_groups = group_index(initial_sizes)[answer].unique()
    mig = group_mig(states, query, initial_sizes)
    best_groups = mig.topk(max(1, math.ceil(fraction * mig.numel()))).indices
    out.group_hit.append(float(torch.isin(best_groups, answer_groups).any()))

    _, sizes, weights = mig_merge(states, query, ratio)
    owner = group_index(sizes)
    initial = n / sizes.numel()
    out.group_size.append(float(sizes[owner[answer]].float().mean()) / initial)
    out.weight_lift.append(float((weights[answer] * sizes[owner[answer]]).mean()))


def chance(items: list[ProbeItem], fraction: float, ratio: int) -> list[float]:
    """Expected top1, hit@k, recall@k and group hit@k of a uniformly random ranking."""
    top1, hit, recall, group_hit = [], [], [], []
    for item in items:
        n, a = len(item.context_ids), item.answer_positions.numel()
        k = max(1, math.ceil(fraction * n))
        top1.append(a / n)
        hit.append(1 - math.comb(n - a, k) / math.comb(n, k))
        recall.append(k / n)
        sizes = near_equal_sizes(n, num_groups(n, ratio))
        groups, answer_groups = sizes.numel(), group_index(sizes)[item.answer_positions].unique().numel()
        kg = max(1, math.ceil(fraction * groups))
        group_hit.append(1 - math.comb(groups - answer_groups, kg) / math.comb(groups, kg))
    return [sum(v) / len(v) for v in (top1, hit, recall, group_hit)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=150, help="SQuAD questions (distinct contexts)")
    parser.add_argument("--max-context-tokens", type=int, default=256)
    parser.add_argument("--layers", type=str, default=",".join(map(str, DEFAULT_LAYERS)))
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]

    backbone = Backbone.from_pretrained(device="cpu")
    pool = select_examples(load_split("squad", "train"), 2 * args.examples)
    items = [item for e in pool if (item := build_item(backbone, e, args.max_context_tokens)) is not None]
    items = items[: args.examples]
    logger.info("Probing %d examples, layers %s", len(items), layers)

    scores = {layer: LayerScores() for layer in layers}
    started = time.perf_counter()
    batches = iter_query_batches(
        [i.context_ids for i in items], [i.question_ids for i in items], args.batch_size, backbone.bos_token_id
    )
    with torch.no_grad():
        for done, batch in enumerate(batches, start=1):
            hidden_states = backbone.hidden_states(batch.input_ids, batch.attention_mask)
            for layer in layers:
                states = hidden_states[layer]
                queries = query_vectors(states, batch.question_mask, batch.context_mask)
                for row, index in enumerate(batch.items):
                    context_states = states[row][batch.context_mask[row]]
                    answer = items[index].answer_positions
                    score(context_states, queries[row], answer, args.ratio, args.top_fraction, scores[layer])
            logger.info("batch %d done (%.0f s)", done, time.perf_counter() - started)

    percent = round(100 * args.top_fraction)
    print(f"\n{len(items)} SQuAD train questions, contexts <= {args.max_context_tokens} tokens, ratio {args.ratio}\n")
    print(
        f"| layer | top1 | hit@{percent}% | recall@{percent}% | MIG group hit@{percent}% "
        "| answer group size | answer weight lift |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for layer in layers:
        values = " | ".join(f"{v:.3f}" for v in scores[layer].row())
        print(f"| {layer} | {values} |")
    values = " | ".join(f"{v:.3f}" for v in chance(items, args.top_fraction, args.ratio))
    print(f"| chance | {values} | 1 | 1 |")
    print(f"\nElapsed: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
