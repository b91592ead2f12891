"""``comprexit-rag train``: train a head, a projector or a soft prompt over the frozen backbone."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import InvalidInputError
from ..training.config import TrainConfig
from ._args import GIVEN, add_dataclass_options

NAME = "train"
HELP = "train a ComprExIT head (or a baseline's trainable part)"
DESCRIPTION = """\
Stage 'pretrain' compresses up to 512 tokens and either regenerates them or predicts the next 128;
stage 'sft' trains on answer tokens given slots + question. The backbone stays frozen.
"""


def options(args: argparse.Namespace) -> dict:
    """TrainConfig fields: the --config file's, then every option given explicitly on the command line."""
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
        flags = values
        values = from_file | {key: value for key, value in flags.items() if key in getattr(args, GIVEN, ())}
        for field in fields(TrainConfig):  # a required field the file leaves out takes its flag's default
            if field.default is MISSING and field.default_factory is MISSING and field.name not in values:
                values[field.name] = flags.get(field.name)
    for required in ("stage", "output_dir"):
        if values.get(required) is None:
            raise InvalidInputError(f"--{required.replace('_', '-')} is required (on the command line or in --config).")
    return values


def run(args: argparse.Namespace) -> int:
    from ..backbone import Backbone
    from ..training.trainer import train

    # Built (and validated) first: a wrong --method/--stage pair fails before the backbone loads.
    config = TrainConfig(**options(args))
    backbone = Backbone.from_pretrained(args.backbone, device=args.device)
    summary = train(config, backbone)
    print(json.dumps({key: summary[key] for key in ("method", "stage", "steps", "wall_time_s")}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON file of training options (experiments/*.json); options given on the command line override it",
    )
    parser.add_argument("--backbone", help="HF causal-LM name or path (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_dataclass_options(parser, TrainConfig)
