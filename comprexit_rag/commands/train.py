"""``comprexit-rag train``: train a head, a projector or a soft prompt over the frozen backbone."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from ..errors import InvalidInputError
from ..names import TRAIN_METHODS as METHODS
from ._args import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a ComprExIT head (or a baseline's trainable part)",
        description="Stage 'pretrain' compresses up to 512 tokens and either regenerates them or predicts the "
        "next 128; stage 'sft' trains on answer tokens given slots + question. The backbone stays frozen.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON file of training options (experiments/*.json); options given on the command line override it",
    )
    parser.add_argument("--stage", choices=("pretrain", "sft"))
    parser.add_argument("--method", choices=METHODS, default="comprexit")
    parser.add_argument("--output-dir", help="checkpoints, log.jsonl, summary.json, final/ (required)")
    parser.add_argument("--init-from", help="checkpoint directory to start from (e.g. the pretrain stage's final/)")
    parser.add_argument("--backbone", help="HF causal-LM name or path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--data", dest="data_root", help="data directory (default: $COMPREXIT_DATA or ../shared/data)")
    parser.add_argument("--ratios", type=int, nargs="+", default=[4, 8, 16], help="one is sampled per step")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per optimiser micro-batch")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps")
    parser.add_argument("--max-steps", type=positive_int, default=2000, help="optimiser steps")
    parser.add_argument("--time-budget", type=float, dest="time_budget_s", help="seconds; shortens the schedule")
    parser.add_argument(
        "--piece-seconds",
        type=float,
        help="end this piece of a long run after N seconds, keeping its schedule; rerun the same command to resume",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--reconstruction-prob",
        type=float,
        default=0.5,
        help="pretrain: share of steps that regenerate the compressed text instead of continuing it",
    )
    parser.add_argument(
        "--reading-task-prob",
        type=float,
        default=0.0,
        help="pretrain: share of steps that ask about the compressed window (span cloze, what follows a phrase)",
    )
    parser.add_argument(
        "--text-share",
        type=float,
        default=0.0,
        help="sft: share of steps drawn from the pretraining text (objectives as in pretraining) instead of QA",
    )
    parser.add_argument(
        "--window", type=int, help="comprexit: tokens per transport window (default: the head's own, 128 when fresh)"
    )
    parser.add_argument(
        "--standardize-layers",
        action="store_true",
        help="comprexit, fresh head: standardise each layer's hidden states (calibrated on Wikipedia) before mixing",
    )
    parser.add_argument(
        "--locality-weight",
        type=float,
        help="comprexit: weight of the token-slot distance (in segments) in the transport cost "
        "(default: the head's own, 0 when fresh)",
    )
    parser.add_argument(
        "--max-slot-norm",
        type=float,
        help="comprexit: smooth bound on each slot's L2 norm (default: the head's own, none when fresh)",
    )
    parser.add_argument(
        "--reader-adapter",
        action="store_true",
        help="train a LoRA on the reader (peft) with the head; the pass that feeds the head stays frozen",
    )
    parser.add_argument("--adapter-rank", type=int, default=16, help="reader adapter: LoRA rank")
    parser.add_argument("--adapter-alpha", type=float, default=32.0, help="reader adapter: LoRA alpha")
    parser.add_argument(
        "--adapter-scope",
        choices=("all", "slots"),
        default="all",
        help="reader adapter: apply the LoRA at every position of the reading pass, or at slot positions only",
    )
    parser.add_argument("--adapter-lr", type=float, help="reader adapter: peak lr (default: half of --lr)")
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="comprexit/mean-pool: weight of KL to the same reader reading the raw passages (0: off)",
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    parser.add_argument(
        "--context-lengths",
        type=int,
        nargs="+",
        help="pretrain: tokens compressed per example, one length drawn per step (default: 128 256 384 512)",
    )
    parser.add_argument(
        "--wikipedia",
        nargs="+",
        help="pretrain: Wikipedia shard globs under the data directory, e.g. 'wiki/enwiki_2015_AB_shard*.txt.gz' "
        "(default: the AA shards and the 2Wiki passages)",
    )
    parser.add_argument("--distractor-prob", type=float, default=0.5, help="SFT: chance of adding distractors")
    parser.add_argument("--max-distractors", type=int, default=9, help="SFT: most random passages added")
    parser.add_argument("--save-every", type=positive_int, default=200, help="steps between checkpoints")
    parser.add_argument("--max-pretrain-tokens", type=int, help="cap the pretraining corpus (smoke runs)")
    parser.add_argument("--limit-per-family", type=int, help="cap SFT examples per data family (smoke runs)")
    parser.set_defaults(run=run, parser=parser)


def options(args: argparse.Namespace) -> dict:
    """TrainConfig fields: the --config file's, then every option given explicitly on the command line."""
    from ..training.trainer import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    values = {key: value for key, value in vars(args).items() if key in names}
    if args.config is not None:
        try:
            from_file = json.loads(args.config.read_text())
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"Cannot read the training config {args.config}: {error}") from error
        if not isinstance(from_file, dict):
            raise InvalidInputError(f"{args.config} must hold a JSON object of training options.")
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise InvalidInputError(f"{args.config}: unknown training options {unknown}; see `comprexit-rag train -h`.")
        defaults = {key: args.parser.get_default(key) for key in values}
        values = from_file | {key: value for key, value in values.items() if value != defaults[key]}
    for required in ("stage", "output_dir"):
        if values.get(required) is None:
            raise InvalidInputError(f"--{required.replace('_', '-')} is required (on the command line or in --config).")
    return values


def run(args: argparse.Namespace) -> int:
    from ..backbone import Backbone
    from ..training.trainer import TrainConfig, train

    # Built (and validated) first: a wrong --method/--stage pair fails before the backbone loads.
    config = TrainConfig(**options(args))
    backbone = Backbone.from_pretrained(args.backbone, device=args.device)
    summary = train(config, backbone)
    print(json.dumps({key: summary[key] for key in ("method", "stage", "steps", "wall_time_s")}))
    return 0
