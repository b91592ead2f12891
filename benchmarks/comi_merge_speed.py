"""COMI's merge, batched against row by row: the same slots, and how long each takes.

``COMIMerger.forward`` merges all rows of a batch at once (``mig_merge_batch``); the reference is the
per-row ``mig_merge`` loop it replaced. For a few batch shapes of random bf16 states this reports the
largest difference between the two (slots after the projector), whether the slot masks agree, the
median time of each path, and on CUDA the device-to-host synchronisations each one makes.

    python benchmarks/comi_merge_speed.py --device cuda --out benchmarks/results/comi_merge_speed_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from comprexit_rag.backbone import BackboneFingerprint
from comprexit_rag.methods.comi import COMIConfig, COMIMerger, mig_merge

SHAPES = ((16, 520), (128, 140), (256, 140))  # rows x positions: long segments, then many short passages
HIDDEN = 576  # SmolLM2-135M


def per_row(merger: COMIMerger, states, mask, query, ratio) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop ``COMIMerger.forward`` ran before ``mig_merge_batch``."""
    mask = mask.to(states.device)
    merged = [mig_merge(states[row][mask[row]], query[row], ratio)[0] for row in range(states.shape[0])]
    counts = torch.tensor([m.shape[0] for m in merged], device=states.device)
    slots = pad_sequence(list(torch.split(merger.projector(torch.cat(merged)), counts.tolist())), batch_first=True)
    return slots, torch.arange(slots.shape[1], device=states.device)[None] < counts[:, None]


def median_ms(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 2)


def host_syncs(run: Callable[[], object], device: torch.device) -> int | None:
    """Device-to-host synchronisations of one call (CUDA's sync debug mode warns once per sync)."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return len(caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    fingerprint = BackboneFingerprint("random", HIDDEN, 30, 10, "0" * 64)
    merger = COMIMerger(COMIConfig(hidden_size=HIDDEN, num_hidden_states=31), fingerprint).to(device)
    results = []
    with torch.no_grad():
        for rows, positions in SHAPES:
            lengths = torch.randint(positions * 2 // 3, positions - 2, (rows,))
            mask = torch.arange(positions)[None] < lengths[:, None] + 1
            mask[:, 0] = False  # BOS, as iter_query_batches lays rows out
            states = torch.randn(rows, positions, HIDDEN, device=device, dtype=torch.bfloat16)
            query = torch.randn(rows, HIDDEN, device=device)
            reference, reference_mask = per_row(merger, states, mask, query, args.ratio)
            slots, slot_mask = merger(states, mask, query, ratio=args.ratio)
            old = partial(per_row, merger, states, mask, query, args.ratio)
            new = partial(merger, states, mask, query, ratio=args.ratio)
            results.append(
                {
                    "rows": rows,
                    "positions": positions,
                    "max_abs_difference": (reference - slots).abs().max().item(),
                    "same_slot_mask": bool(torch.equal(reference_mask, slot_mask)),
                    "per_row_ms": median_ms(old, device, args.repeats),
                    "batched_ms": median_ms(new, device, args.repeats),
                    "per_row_host_syncs": host_syncs(old, device),
                    "batched_host_syncs": host_syncs(new, device),
                }
            )
            print(json.dumps(results[-1]))
    report = {
        "command": "python benchmarks/comi_merge_speed.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "ratio": args.ratio,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
