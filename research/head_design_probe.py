"""Which head design learns to carry a passage's content fastest? Fresh heads on the reconstruction objective.

Each arm trains a fresh ComprExIT head with the same seed, data and schedule to regenerate the compressed
text from its slots (``ReconstructionPrompt``) and reports the held-out reconstruction loss and the
teacher-forced token accuracy on 64 fixed windows every ``--eval-every`` steps. The arms differ only in
the head's configuration (``ARMS``):

- ``raw``: METHOD.md's head on the raw hidden states;
- ``standardised``: each layer's states standardised per dimension (``standardize_layers``, calibrated
  like ``comprexit-rag train --standardize-layers`` does);
- ``standardised-local``: plus a locality term in the transport cost (``locality_weight`` 0.25);
- ``standardised-sharp``: plus a sharper transport plan (Sinkhorn epsilon 0.03 instead of 0.1).

Round 5 also tried token-offset gates on the slots' inputs (``gate_radius``, removed since: no gain, and the
compressor ran at 0.62x of the forward); they are in the library at commit 45fe0c6.

Run on a GPU, the arms side by side (one call)::

    for arm in raw standardised standardised-local standardised-sharp; do
      python research/head_design_probe.py --arm $arm --steps 300 --out $arm.json &
    done; wait

``--head DIR`` evaluates a trained head instead (``--steps 0``), e.g. after ``comprexit-rag train --stage
pretrain``. Besides the Wikipedia windows of the pretraining corpus (which a long pretraining run has seen), the
loss is measured on the first 128 tokens of 64 NQ dev gold passages, which no training stage reads.

Round 4's two-arm version of this probe (``layer_standardisation_probe.py`` at commit 7b4d118) standardised
through a wrapper of the backbone; the library's ``standardize_layers`` does the same inside the head.
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
from comprexit_rag.data import load_split
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.prompts import ReconstructionPrompt, answer_end_token_id
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.data import PretrainCorpus, calibration_passages, tokenize_passages
from comprexit_rag.training.encoders import SlotHeadEncoder
from comprexit_rag.training.examples import TrainExample
from comprexit_rag.training.losses import answer_loss
from comprexit_rag.training.teacher_forcing import target_logits

ARMS: dict[str, dict] = {
    "raw": {},
    "standardised": {"standardize_layers": True},
    "standardised-local": {"standardize_layers": True, "locality_weight": 0.25},
    "standardised-sharp": {"standardize_layers": True, "sinkhorn_epsilon": 0.03},
}


def nq_dev_windows(backbone: Backbone, stop: int, count: int = 64, length: int = 128) -> list[TrainExample]:
    """Reconstruction targets no training stage reads: the first ``length`` tokens of NQ dev gold passages."""
    passages = [example.passages[0] for example in load_split("nq", "dev")]
    windows = [ids[:length] for ids in tokenize_passages(backbone.tokenizer, passages) if len(ids) >= length // 2]
    return [TrainExample([ids], "", [*ids, stop]) for ids in windows[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=tuple(ARMS), help="train a fresh head of this design")
    parser.add_argument("--head", type=Path, help="evaluate this trained head instead (no training)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if (args.arm is None) == (args.head is None):
        parser.error("give exactly one of --arm and --head")
    logging.basicConfig(level=logging.WARNING)

    backbone = Backbone.from_pretrained(device=args.device)
    corpus = PretrainCorpus.build(backbone.tokenizer)
    stop = answer_end_token_id(backbone.tokenizer)
    held_out = {
        "held_out": corpus.sample_reconstruction(random.Random(10_001), 64, 128, stop),
        "nq_dev": nq_dev_windows(backbone, stop),
    }
    torch.manual_seed(args.seed)
    if args.head:
        head, args.steps = ComprExITHead.from_pretrained(args.head, device=backbone.device), 0
    else:
        head = ComprExITHead.for_backbone(backbone, ratio=args.ratio, **ARMS[args.arm])
        if head.config.standardize_layers:
            head.calibrate(backbone, calibration_passages(backbone, None))
    head.train()
    encoder = SlotHeadEncoder(backbone, head, "comprexit")
    reader = Reader(backbone)
    prompt = ReconstructionPrompt()
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def evaluate() -> dict[str, float]:
        return {key: value for name, windows in held_out.items() for key, value in evaluate_on(name, windows).items()}

    def evaluate_on(name: str, windows: list) -> dict[str, float]:
        losses, correct, total = [], 0, 0
        with torch.no_grad():
            for start in range(0, len(windows), 16):
                batch = windows[start : start + 16]
                contexts = encoder.encode(batch, args.ratio)
                inputs = reader.build_inputs(
                    [""] * len(batch), contexts, [e.target_ids for e in batch], prompt=prompt, padding_side="right"
                )
                logits, labels = target_logits(reader, inputs)
                losses.append(torch.nn.functional.cross_entropy(logits.float(), labels).item())
                correct += int((logits.argmax(-1) == labels).sum())
                total += labels.numel()
        accuracy_key = "token_accuracy" if name == "held_out" else f"{name}_token_accuracy"
        return {f"{name}_loss": round(sum(losses) / len(losses), 4), accuracy_key: round(correct / total, 4)}

    curve, started = [{"step": 0, **evaluate()}], time.perf_counter()

    def report() -> None:  # after every evaluation, so a run stopped early keeps its curve
        print(json.dumps(curve[-1]), flush=True)
        if args.out:
            result = {
                "arm": args.arm,
                "head": str(args.head) if args.head else None,
                "head_config": head.config.to_dict(),
                "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
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
