"""What one reader forward costs on this machine: prefill throughput by length, and one decoding step.

The open-corpus latency (BENCHMARKS.md, issue 5) is a prefill over the context plus a few decoding steps;
this measures the two parts on their own, with the default backbone and a KV cache, as the Reader runs
them (last-position logits for the prefill, one token per decoding step). Medians of ``--repeats`` runs
after a warm-up::

    HF_HUB_OFFLINE=1 python benchmarks/reader_step_cost.py --out benchmarks/results/reader_step_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchmark_environment import machine_environment, median_seconds

from comprexit_rag import Backbone
from comprexit_rag.backbone import cache_keyword, returned_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 130, 200, 400, 680])
    parser.add_argument("--decode-steps", type=int, default=10, help="decoding steps timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    backbone = Backbone.from_pretrained(device=args.device)
    model = backbone.model
    cache = cache_keyword(model)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in args.lengths:
        ids = torch.randint(100, 10_000, (1, length), generator=generator).to(backbone.device)

        def prefill(ids: torch.Tensor = ids):
            return model(input_ids=ids, use_cache=True, logits_to_keep=1)

        def decode(ids: torch.Tensor = ids) -> None:
            output = prefill()
            token = ids[:, -1:]
            for step in range(args.decode_steps):
                positions = torch.tensor([[ids.shape[1] + step]], device=backbone.device)
                kv = {cache: returned_cache(output)}
                output = model(input_ids=token, position_ids=positions, use_cache=True, **kv)

        with torch.inference_mode():
            prefill_s = median_seconds(prefill, args.repeats)
            decode_s = (median_seconds(decode, args.repeats) - prefill_s) / args.decode_steps
        rows.append(
            {
                "context_positions": length,
                "prefill_s": round(prefill_s, 4),
                "prefill_positions_per_s": round(length / prefill_s, 1),
                "decode_step_s": round(decode_s, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "description": __doc__.split("\n\n")[0],
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "backbone_dtype": str(backbone.dtype),
        "environment": machine_environment(backbone.device),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
