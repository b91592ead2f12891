"""Training throughput of an experiment config: sequences per second by context length and batch size.

Runs the real trainer (``comprexit_rag.training.trainer.train``) for a few steps per shape, in a
temporary directory, and times the steps after the warm-up ones from the trainer's own per-step log.
With ``--profile`` it also profiles a few steps of the first shape and writes the top operators
(by self device time and by self CPU time) and the kernel launches per step, which say whether a
step is bound by the GPU's arithmetic or by launching many small kernels. With ``--compile`` the
trainer compiles the backbone's decoder layers (``compile_layers``): the warm-up steps must cover the
compilation, and the results record the graphs compiled.

    python benchmarks/train_throughput.py --config experiments/reader_adapter/pretrain-4x.json \
        --shapes 512x16 512x64 128x64 128x256 --device cuda --profile --out throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import torch
from benchmark_environment import machine_environment
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode

from comprexit_rag.backbone import Backbone
from comprexit_rag.reading.reader import Reader
from comprexit_rag.training.linear_cross_entropy import linear_cross_entropy
from comprexit_rag.training.teacher_forcing import reader_inputs, target_states
from comprexit_rag.training.trainer import (
    TrainConfig,
    build_encoder,
    build_reader_adapter,
    make_sampler,
    train,
)

GOAL_SEQUENCES_PER_S = 300  # at 512-token contexts, 4x (the slots issue)


def parse_shape(text: str) -> tuple[int, int]:
    length, _, batch = text.partition("x")
    return int(length), int(batch)


def timed_run(config: TrainConfig, device: str, warmup: int, steps: int, backbone: str | None = None) -> dict:
    """Sequences per second over the steps after ``warmup``, from the trainer's per-step log."""
    model = fresh_backbone(device, backbone)
    graphs = compiled_graphs()
    with tempfile.TemporaryDirectory() as directory:
        run = replace(config, output_dir=directory, max_steps=warmup + steps, log_every=1, save_every=10**9)
        train(run, model)
        records = [json.loads(line) for line in (Path(directory) / "log.jsonl").read_text().splitlines()]
    by_step = {record["step"]: record for record in records}
    seconds = by_step[warmup + steps]["elapsed_s"] - by_step[warmup]["elapsed_s"]
    result = {
        "context_length": config.context_lengths[0],
        "batch_size": config.batch_size,
        "timed_steps": steps,
        "seconds_per_step": round(seconds / steps, 4),
        "sequences_per_s": round(steps * config.batch_size / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    if config.compile_layers:  # the warm-up's share of the time says whether it covered the compilation
        result["compiled_graphs"] = compiled_graphs() - graphs
        result["warmup_s"] = by_step[warmup]["elapsed_s"]
    return result


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def fresh_backbone(device: str, name: str | None = None) -> Backbone:
    """A backbone with no reader adapter attached yet (each run attaches its own); ``None``: the default."""
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    # Compiled layers (--compile) compile afresh in each run's warm-up: the graphs for earlier backbones would
    # count against dynamo's recompile limit, past which it runs the layers eagerly.
    torch._dynamo.reset()
    return Backbone.from_pretrained(name, device=device)


class TrainerParts:
    """The trainer's pieces (sampler, encoder, reader adapter, AdamW) driven step by step, since the
    trainer's loop has no profiler hook. ``step(index)`` is one optimiser step of batch ``index``."""

    def __init__(self, config: TrainConfig, device: str, backbone: str | None = None) -> None:
        self.config = config
        self.backbone = fresh_backbone(device, backbone)
        self.encoder = build_encoder(config, self.backbone)
        adapter = build_reader_adapter(config, self.backbone)
        self.reader = Reader(self.backbone, adapter=adapter)
        self.parameters = [p for p in self.encoder.trainable.parameters() if p.requires_grad]
        self.parameters += adapter.parameters() if adapter is not None else []
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, fused=self.backbone.device.type == "cuda")
        self.sample, _ = make_sampler(config, self.backbone)

    def step(self, index: int, phase: Callable[[str], AbstractContextManager] = contextlib.nullcontext) -> None:
        """One step; ``phase(name)`` is entered around each of its parts."""
        config = self.config
        with phase("sample"):
            batch, prompt = self.sample(random.Random(index))
        with phase("encode"):
            contexts = self.encoder.encode(batch, config.ratios[0])
        with phase("read"):  # reader inputs, the reader's pass, the states at the target positions
            hidden, labels = target_states(self.reader, reader_inputs(self.reader, batch, contexts, prompt))
        with phase("loss"):  # through the LM head, a chunk of positions at a time, as the trainer does
            head = self.backbone.model.get_output_embeddings()
            loss = linear_cross_entropy(hidden, head.weight, labels, head.bias)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(self.parameters, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def profile_steps(config: TrainConfig, device: str, steps: int, out: Path, backbone: str | None = None) -> dict:
    """Profile ``steps`` training steps (after two untimed ones); the operator tables go to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    parts = TrainerParts(config, device, backbone)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if parts.backbone.device.type == "cuda" else [])
    compiled = parts.backbone.compiled_layers() if config.compile_layers else contextlib.nullcontext()
    with compiled:
        for index in range(2):  # allocator, kernel selection, compilation and data warm-up stay out of the profile
            parts.step(index)
        with profile(activities=activities) as profiler:
            for index in range(2, 2 + steps):
                parts.step(index)
            if parts.backbone.device.type == "cuda":
                torch.cuda.synchronize()
    averages = profiler.key_averages()
    on_gpu = parts.backbone.device.type == "cuda"
    device_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    # An operator's row and its kernels' rows both carry the kernels' time: count the kernels only.
    kernels = [event for event in averages if event.device_type == DeviceType.CUDA] if on_gpu else averages
    out.write_text(
        "\n\n".join(averages.table(sort_by=key, row_limit=30) for key in (device_key, "self_cpu_time_total"))
    )
    launches = sum(event.count for event in averages if event.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    return {
        "profiled_steps": steps,
        "shape": f"{config.context_lengths[0]}x{config.batch_size}",
        "kernel_launches_per_step": launches // steps,
        "device_ms_per_step": round(sum(getattr(event, device_key) for event in kernels) / steps / 1000, 1),
        "host_ms_per_step": round(sum(event.self_cpu_time_total for event in averages) / steps / 1000, 1),
        "tables": out.name,
    }


class OperatorCount(TorchDispatchMode):
    """Counts the aten operators dispatched inside it (views included), and the reads of a tensor's value
    by the host (``_local_scalar_dense``: ``.item()``, ``bool(tensor)``; on a GPU each waits for the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.operators = 0
        self.scalar_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operators += 1
        self.scalar_reads += func.overloadpacket is torch.ops.aten._local_scalar_dense
        return func(*args, **(kwargs or {}))


def count_operators(config: TrainConfig, device: str, backbone: str | None = None) -> dict:
    """Operators dispatched by one training step (after one untimed step), in all and by part of the step."""
    parts = TrainerParts(config, device, backbone)
    parts.step(0)
    counts: dict[str, dict[str, int]] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        with OperatorCount() as count:
            yield
        counts[name] = {"operators": count.operators, "scalar_reads": count.scalar_reads}

    parts.step(1, phase)
    return {
        "shape": f"{config.context_lengths[0]}x{config.batch_size}",
        "operators_per_step": sum(count["operators"] for count in counts.values()),
        "scalar_reads_per_step": sum(count["scalar_reads"] for count in counts.values()),
        "by_part": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="an experiment file (TrainConfig fields)")
    parser.add_argument("--shapes", nargs="+", default=["512x16", "128x64"], help="CONTEXTxBATCH pairs")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", help="a causal LM (name or path); default: the embedded SmolLM2")
    parser.add_argument("--profile", action="store_true", help="also profile 5 steps of the first shape")
    parser.add_argument(
        "--ops", action="store_true", help="also count the operators of one (eager) step of every shape"
    )
    parser.add_argument(
        "--compile", action="store_true", help="compile the backbone's decoder layers (TrainConfig.compile_layers)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    overrides = {"output_dir": "unused", "piece_seconds": None} | ({"compile_layers": True} if args.compile else {})
    base = TrainConfig(**json.loads(args.config.read_text()) | overrides)
    shapes = []
    for shape in args.shapes:
        length, batch = parse_shape(shape)
        shapes.append(replace(base, context_lengths=[length], batch_size=batch, grad_accum=1))
    results = []
    for config in shapes:
        results.append(timed_run(config, args.device, args.warmup, args.steps, args.backbone))
        logging.warning("%s: %s", args.shapes[len(results) - 1], results[-1])
    record = {
        "command": "python " + " ".join(sys.argv),
        "config": str(args.config),
        "backbone": args.backbone or "embedded default",
        "environment": machine_environment(torch.device(args.device)),
        "compile_layers": base.compile_layers,
        "goal_sequences_per_s_at_512": GOAL_SEQUENCES_PER_S,
        "results": results,
    }
    if args.ops:
        record["operators"] = [count_operators(config, args.device, args.backbone) for config in shapes]
        for count in record["operators"]:
            logging.warning(
                "%s: %d operators, %d scalar reads per step",
                count["shape"],
                count["operators_per_step"],
                count["scalar_reads_per_step"],
            )
    if args.profile:
        out = args.out.with_suffix(".profile.txt")
        record["profile"] = profile_steps(shapes[0], args.device, 5, out, args.backbone)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
