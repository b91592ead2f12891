"""Does standardising each layer's hidden states help a fresh ComprExIT head learn to carry content?

SmolLM2's hidden states are badly scaled for a head that mixes layers: the per-layer RMS rises from
about 0.1 (embeddings) to about 30 (layer 29), and about half of their energy lies in one shared
direction (a few outlier dimensions). METHOD.md's depth-wise attention mixes the raw states. This
probe trains two fresh heads with the same seed, data and schedule on the reconstruction objective
(regenerate the compressed text from the slots, ``ReconstructionPrompt``):

- ``raw``: the METHOD.md head on the raw states;
- ``standardised``: the same head on ``(h_l - mean_l) / std_l`` per layer and dimension, with the
  statistics measured once on calibration windows (excluding BOS) that are not trained on.

Reported: held-out reconstruction loss and teacher-forced token accuracy on fixed windows every
``--eval-every`` steps. Run on a GPU (one call)::

    python benchmarks/layer_standardisation_probe.py --arm raw --out raw.json &
    python benchmarks/layer_standardisation_probe.py --arm standardised --out standardised.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import torch

from comprexit_rag.backbone import Backbone
from comprexit_rag.head import ComprExITHead
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reader import Reader
from comprexit_rag.training.data import PretrainCorpus
from comprexit_rag.training.encoders import SlotHeadEncoder
from comprexit_rag.training.trainer import answer_loss, target_logits


class StandardisedBackbone(Backbone):
    """The same frozen model, whose ``hidden_states`` are standardised per layer and dimension."""

    def __init__(self, backbone: Backbone, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__(backbone.model, backbone.tokenizer, name=backbone.name)
        self.mean, self.inverse_std = mean, 1.0 / std

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = super().hidden_states(input_ids, attention_mask)
        return tuple(
            ((state.float() - self.mean[layer]) * self.inverse_std[layer]).to(state.dtype)
            for layer, state in enumerate(states)
        )


def layer_statistics(backbone: Backbone, windows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-dimension mean and standard deviation [L+1, H] over the windows' tokens (BOS excluded)."""
    ids = torch.tensor([[backbone.bos_token_id, *window] for window in windows])
    with torch.no_grad():
        states = backbone.hidden_states(ids, torch.ones_like(ids))
    flat = torch.stack([state[:, 1:].float().reshape(-1, state.shape[-1]) for state in states])  # [L+1, N, H]
    return flat.mean(dim=1), flat.std(dim=1).clamp(min=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=("raw", "standardised"), required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    backbone = Backbone.from_pretrained(device=args.device)
    corpus = PretrainCorpus.build(backbone.tokenizer)
    stop = answer_end_token_id(backbone.tokenizer)
    held_out = corpus.sample_reconstruction(random.Random(10_001), 64, 128, stop)
    if args.arm == "standardised":
        calibration = corpus.sample(random.Random(10_002), 32, 512, continuation=0)
        backbone = StandardisedBackbone(backbone, *layer_statistics(backbone, [e.passage_ids[0] for e in calibration]))
    torch.manual_seed(args.seed)
    head = ComprExITHead.for_backbone(backbone, ratio=args.ratio).train()
    encoder = SlotHeadEncoder(backbone, head, "comprexit")
    reader = Reader(backbone)
    prompt = ReconstructionPrompt()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def evaluate() -> dict[str, float]:
        losses, correct, total = [], 0, 0
        with torch.no_grad():
            for start in range(0, len(held_out), 16):
                batch = held_out[start : start + 16]
                contexts = encoder.encode(batch, args.ratio)
                inputs = reader.build_inputs(
                    [""] * len(batch), contexts, [e.target_ids for e in batch], prompt=prompt, padding_side="right"
                )
                logits, labels = target_logits(reader, inputs)
                losses.append(torch.nn.functional.cross_entropy(logits.float(), labels).item())
                correct += int((logits.argmax(-1) == labels).sum())
                total += labels.numel()
        return {"held_out_loss": round(sum(losses) / len(losses), 4), "token_accuracy": round(correct / total, 4)}

    curve, started = [{"step": 0, **evaluate()}], time.perf_counter()

    def report() -> None:  # after every evaluation, so a run stopped early keeps its curve
        print(json.dumps(curve[-1]), flush=True)
        if args.out:
            result = {
                "arm": args.arm,
                "config": vars(args) | {"out": str(args.out)},
                "device": str(backbone.device),
                "torch": torch.__version__,
                "train_seconds": round(time.perf_counter() - started, 1),
                "curve": curve,
            }
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    report()
    for step in range(1, args.steps + 1):
        warmup = min(1.0, step / 20)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        rng = random.Random(args.seed * 1_000_003 + step)
        batch = corpus.sample_reconstruction(rng, args.batch_size, rng.choice([128, 256]), stop)
        loss = answer_loss(reader, encoder, batch, args.ratio, prompt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            curve.append({"step": step, "train_loss": round(loss.item(), 4), **evaluate()})
            report()


if __name__ == "__main__":
    main()
