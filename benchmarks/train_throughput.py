"""Training throughput of an experiment config: sequences per second by context length and batch size.

Runs the real trainer (``comprexit_rag.training.trainer.train``) for a few steps per shape, in a
temporary directory, and times the steps after the warm-up ones from the trainer's own per-step log.
With ``--profile`` it also profiles a few steps of the first shape and writes the top operators
(by self device time and by self CPU time) and the kernel launches per step, which say whether a
step is bound by the GPU's arithmetic or by launching many small kernels.

    python benchmarks/train_throughput.py --config experiments/reader_adapter/pretrain-4x.json \
        --shapes 512x16 512x64 128x64 128x256 --device cuda --profile --out throughput.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from benchmark_environment import machine_environment

from comprexit_rag.backbone import Backbone
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.trainer import (
    TrainConfig,
    answer_loss,
    build_encoder,
    build_reader_adapter,
    make_sampler,
    train,
)

GOAL_SEQUENCES_PER_S = 300  # at 512-token contexts, 4x (the slots issue)


def parse_shape(text: str) -> tuple[int, int]:
    length, _, batch = text.partition("x")
    return int(length), int(batch)


def timed_run(config: TrainConfig, device: str, warmup: int, steps: int) -> dict:
    """Sequences per second over the steps after ``warmup``, from the trainer's per-step log."""
    backbone = fresh_backbone(device)
    with tempfile.TemporaryDirectory() as directory:
        run = replace(config, output_dir=directory, max_steps=warmup + steps, log_every=1, save_every=10**9)
        train(run, backbone)
        records = [json.loads(line) for line in (Path(directory) / "log.jsonl").read_text().splitlines()]
    by_step = {record["step"]: record for record in records}
    seconds = by_step[warmup + steps]["elapsed_s"] - by_step[warmup]["elapsed_s"]
    return {
        "context_length": config.context_lengths[0],
        "batch_size": config.batch_size,
        "timed_steps": steps,
        "seconds_per_step": round(seconds / steps, 4),
        "sequences_per_s": round(steps * config.batch_size / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def fresh_backbone(device: str) -> Backbone:
    """A backbone with no reader adapter attached yet (each run attaches its own)."""
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return Backbone.from_pretrained(device=device)


def profile_steps(config: TrainConfig, device: str, steps: int, out: Path) -> dict:
    """Profile ``steps`` training steps (after two untimed ones); the operator tables go to ``out``.

    The steps are the trainer's own pieces (sampler, encoder, reader adapter, loss, clipping, AdamW)
    driven here, since the trainer's loop has no profiler hook.
    """
    from torch.profiler import ProfilerActivity, profile

    backbone = fresh_backbone(device)
    encoder = build_encoder(config, backbone)
    adapter = build_reader_adapter(config, backbone)
    reader = Reader(backbone, adapter=adapter)
    parameters = [p for p in encoder.trainable.parameters() if p.requires_grad]
    parameters += adapter.parameters() if adapter is not None else []
    optimizer = torch.optim.AdamW(parameters, lr=config.lr)
    sample, _ = make_sampler(config, backbone)

    def step(index: int) -> None:
        batch, prompt = sample(random.Random(index))
        answer_loss(reader, encoder, batch, config.ratios[0], prompt).backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if backbone.device.type == "cuda" else [])
    for index in range(2):  # allocator, kernel selection and data warm-up stay out of the profile
        step(index)
    with profile(activities=activities) as profiler:
        for index in range(2, 2 + steps):
            step(index)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
    averages = profiler.key_averages()
    device_key = "self_device_time_total" if backbone.device.type == "cuda" else "self_cpu_time_total"
    out.write_text(
        "\n\n".join(averages.table(sort_by=key, row_limit=30) for key in (device_key, "self_cpu_time_total"))
    )
    launches = sum(event.count for event in averages if event.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    return {
        "profiled_steps": steps,
        "shape": f"{config.context_lengths[0]}x{config.batch_size}",
        "kernel_launches_per_step": launches // steps,
        "device_busy_ms_per_step": round(sum(getattr(event, device_key) for event in averages) / steps / 1000, 1),
        "tables": out.name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="an experiment file (TrainConfig fields)")
    parser.add_argument("--shapes", nargs="+", default=["512x16", "128x64"], help="CONTEXTxBATCH pairs")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="also profile 5 steps of the first shape")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = TrainConfig(**json.loads(args.config.read_text()) | {"output_dir": "unused", "piece_seconds": None})
    results = []
    for shape in args.shapes:
        length, batch = parse_shape(shape)
        config = replace(base, context_lengths=[length], batch_size=batch, grad_accum=1)
        results.append(timed_run(config, args.device, args.warmup, args.steps))
        logging.warning("%s: %s", shape, results[-1])
    record = {
        "command": "python " + " ".join(sys.argv),
        "config": str(args.config),
        "environment": machine_environment(torch.device(args.device)),
        "goal_sequences_per_s_at_512": GOAL_SEQUENCES_PER_S,
        "results": results,
    }
    if args.profile:
        length, batch = parse_shape(args.shapes[0])
        config = replace(base, context_lengths=[length], batch_size=batch, grad_accum=1)
        record["profile"] = profile_steps(config, args.device, 5, args.out.with_suffix(".profile.txt"))
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
