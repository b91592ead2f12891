"""How local are a head's slots, and how saturated is its attention over layers? No training, CPU.

For a few Wikipedia windows of 128 tokens, compressed at 4x (one transport window, 32 slots of 4 tokens):

- ``own_segment_share``: the share of each slot's transported mass that comes from the 4 tokens of its
  own segment (a uniform plan gives 4 / 128 = 0.031; a plan that keeps each segment together gives 1);
- ``slot_cosine``: the mean cosine similarity between two different slots of a passage (slots that are all
  the window's mean give 1);
- ``layer_weight_max``: the mean over tokens of the largest depth-wise attention weight (1 / 31 = 0.032 is a
  uniform mixture, 1 a single layer);
- ``mean_layer``: the mean over tokens of the hidden-state index the depth-wise attention draws from (0: the
  embeddings, 30: the last layer), weighted by its weights.

Rows: the shipped head, fresh heads of each design in ``head_design_probe.ARMS``, then any trained heads given
with ``--head NAME=DIR``::

    HF_HUB_OFFLINE=1 python research/transport_diagnostics.py --out research/results/transport_diagnostics.json \
        [--head round5-raw=runs/comprexit-raw/final ...]

Session 35, the lengths run's head before and after its QA stage (`git archive 639975d training-state`, then
`git archive fdea39e training-state`)::

    HF_HUB_OFFLINE=1 python research/transport_diagnostics.py \
        --out research/results/transport_diagnostics_lengths.json \
        --head lengths-pretrained=training-state/lengths-run/pretrain/final \
        --head lengths-qa=training-state/lengths-run/sft/final
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import torch
from head_design_probe import ARMS

from comprexit_rag.backbone import Backbone
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.training.data import PretrainCorpus, calibration_passages


def diagnose(head: ComprExITHead, states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> dict[str, float]:
    head.eval()
    with torch.no_grad():
        output = head(states, mask, ratio=4)
    plans = output.transport_plans  # [N, 128, 32]: one full window per passage
    segment = torch.arange(plans.shape[1]) * plans.shape[2] // plans.shape[1]
    own = plans * (segment.unsqueeze(1) == torch.arange(plans.shape[2])).to(plans.dtype)
    share = own.sum(dim=1) / plans.sum(dim=1)  # [N, K]
    slots = torch.nn.functional.normalize(output.slots, dim=-1)
    cosine = slots @ slots.transpose(1, 2)
    off_diagonal = ~torch.eye(cosine.shape[1], dtype=torch.bool)
    weights = output.layer_weights[mask]  # [tokens, layers]
    layer_index = weights @ torch.arange(weights.shape[-1], dtype=weights.dtype)
    return {
        "own_segment_share": round(share.mean().item(), 3),
        "slot_cosine": round(cosine[:, off_diagonal].mean().item(), 3),
        "layer_weight_max": round(weights.max(dim=-1).values.mean().item(), 3),
        "mean_layer": round(layer_index.mean().item(), 2),
        "slot_norm": round(output.slots.norm(dim=-1).mean().item(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", action="append", default=[], help="NAME=DIR of a trained head to diagnose too")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    backbone = Backbone.from_pretrained(device="cpu")
    corpus = PretrainCorpus.build(backbone.tokenizer, max_tokens=200_000)
    windows = corpus.sample(random.Random(args.seed), args.passages, 128, continuation=0)
    ids = torch.tensor([[backbone.bos_token_id, *example.passage_ids[0]] for example in windows])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False  # BOS is not compressed
    with torch.no_grad():
        states = backbone.hidden_states(ids, torch.ones_like(ids))

    rows = {"shipped": diagnose(ComprExITHead.from_pretrained(), states, mask)}
    calibration = calibration_passages(backbone, None)
    for arm, overrides in ARMS.items():
        torch.manual_seed(args.seed)
        head = ComprExITHead.for_backbone(backbone, **overrides)
        if head.config.standardize_layers:
            head.calibrate(backbone, calibration)
        rows[f"fresh {arm}"] = diagnose(head, states, mask)
    for named in args.head:
        name, directory = named.split("=", 1)
        rows[name] = diagnose(ComprExITHead.from_pretrained(directory), states, mask)
    for name, row in rows.items():
        print(f"{name:26s} {json.dumps(row)}")
    if args.out:
        args.out.write_text(json.dumps({"passages": args.passages, "seed": args.seed, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
