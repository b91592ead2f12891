"""Write a backbone with the default model's architecture and tokenizer and random weights.

A training step's time depends on the architecture, the shapes and the tokens, not on the weights' values,
so a speed measurement (``benchmarks/train_throughput.py --backbone DIR``) can run on a machine the 98 MB of
weights cannot reach in time. The default backbone's files without its weights (``config.json`` and the
tokenizer's, a few MB) travel instead, and this builds the twin where the measurement runs:

    python benchmarks/gpu/architecture_twin.py --source /tmp/twin-files --out /tmp/twin

Never use a twin for anything whose result depends on the weights (quality, loss values).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="config.json and the tokenizer's files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.source)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (args.source / name).exists():
            shutil.copy(args.source / name, args.out / name)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} parameters, random weights")


if __name__ == "__main__":
    main()
