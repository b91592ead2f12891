"""Compression speed and memory, measured against the frozen forward pass.

For every ``BATCHxLENGTH`` shape, three cases run on random token ids under ``torch.inference_mode``:

``backbone``
    (a) the frozen forward alone, returning all L+1 hidden states (:meth:`Backbone.hidden_states`).
``compressor``
    (b) what :class:`~comprexit_rag.compressor.ComprExITCompressor` does per batch: the hidden
    states, then the head under :func:`~comprexit_rag.compressor.autocast_for`, then each row's slots.
``reference``
    (c) the same, with a head whose depth step is the reference
    :meth:`DepthTransmission.forward_direct` (stacks all L+1 layers and projects each one),
    followed by the same width step and projector. It shares the head's weights.

Each case is warmed up, then the timed repetitions run round-robin over the cases (so that drift on a
shared machine hits them alike) and the median is reported. Peak memory is
``torch.cuda.max_memory_allocated`` (reset before every call) on GPU; on CPU it is the process's
peak resident set size (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``, else a psutil
sampling thread, else ``null``), which is coarser: the allocator keeps freed pages.

Reported against the goals of the issue "Compression speed and memory: close to the frozen forward
pass": throughput (b)/(a) >= 0.9, and the head's extra peak memory, peak(b) - peak(a), at most
0.5x the memory of the hidden states themselves, (L+1) x B x T x H x bytes.

Rows are full-length sequences (BOS first where the tokenizer has one; every other token is
compressed). The head runs on the whole length: ComprExITCompressor would first cut passages longer
than the head's ``segment_length`` (512) into segments, so an 8x4096 batch there becomes 64x512.

Examples::

    python benchmarks/speed.py --device cuda --dtype bfloat16 --shapes 64x512 8x4096 --out results.json
    python benchmarks/speed.py --device cpu --dtype float32 --shapes 2x256
    # speed does not depend on the weights: a randomly initialised model from a config + tokenizer directory
    python benchmarks/speed.py --backbone path/to/config_and_tokenizer --random-weights --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark_environment import load_average, machine_environment
from torch import nn

from comprexit_rag.backbone import Backbone, autocast_for
from comprexit_rag.checkpoint import check_fingerprint
from comprexit_rag.methods.comprexit.depth import DepthTransmission
from comprexit_rag.methods.comprexit.head import ComprExITHead
from comprexit_rag.methods.slot_head import HeadOutput, row_slots

THROUGHPUT_GOAL = 0.9  # compressor tokens/s over backbone tokens/s, at least
MEMORY_GOAL = 0.5  # head's extra peak over the hidden states' memory, at most
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CASES = ("backbone", "compressor", "reference")


# --------------------------------------------------------------------------------------------
# Models


class DirectDepth(nn.Module):
    """Adapter whose ``forward`` is the wrapped module's reference :meth:`DepthTransmission.forward_direct`."""

    def __init__(self, depth: DepthTransmission) -> None:
        super().__init__()
        self.inner = depth

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.forward_direct(hidden_states)


def reference_head(head: ComprExITHead) -> ComprExITHead:
    """A head sharing ``head``'s weights whose depth step stacks and projects all L+1 layers."""
    reference = ComprExITHead(head.config, head.fingerprint)
    reference.depth = DirectDepth(head.depth)
    reference.width = head.width
    reference.projector = head.projector
    return reference.eval()


def load_backbone(source: str | None, device: torch.device, dtype: torch.dtype, random_weights: bool) -> Backbone:
    """The embedded default (``source=None``) or a local path; optionally randomly initialised from its config."""
    if not random_weights:
        return Backbone.from_pretrained(source, device=device, dtype=dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from comprexit_rag.default_model import DEFAULT_BACKBONE_NAME, default_backbone_dir

    directory = default_backbone_dir() if source is None else source
    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    name = DEFAULT_BACKBONE_NAME if source is None else str(source)
    return Backbone(model.to(device=device, dtype=dtype), tokenizer, name=f"{name} (random weights)")


def load_head(path: str | None, backbone: Backbone) -> ComprExITHead:
    """A trained head from ``path``, else a freshly initialised one (speed does not depend on the weights)."""
    if path is None:
        return ComprExITHead.for_backbone(backbone).eval()
    head = ComprExITHead.from_pretrained(path, device=backbone.device)
    check_fingerprint(head.fingerprint, backbone.fingerprint, f"The head at {path}")
    return head.eval()


# --------------------------------------------------------------------------------------------
# Measurement helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one call: CUDA allocator peak on GPU, peak resident set size on CPU (or ``None``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = self._choose_method()
        self._psutil_process: Any = None
        if self.method == "psutil-sampled-rss":
            import psutil

            self._psutil_process = psutil.Process()

    def _choose_method(self) -> str | None:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        if _read_status_kb("VmHWM") is not None and _reset_peak_rss():
            return "linux-vmhwm-rss"
        try:
            import psutil  # noqa: F401
        except ImportError:
            return None
        return "psutil-sampled-rss"

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, int | None]]:
        """Yield a dict that holds ``start`` and, once the block ends, ``peak`` (bytes)."""
        result: dict[str, int | None] = {"start": None, "peak": None}
        if self.method == "torch.cuda.max_memory_allocated":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            result["start"] = torch.cuda.memory_allocated(self.device)
            yield result
            synchronize(self.device)
            result["peak"] = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "linux-vmhwm-rss":
            _release_free_memory()
            _reset_peak_rss()
            result["start"] = 1024 * (_read_status_kb("VmRSS") or 0)
            yield result
            result["peak"] = 1024 * (_read_status_kb("VmHWM") or 0)
        elif self.method == "psutil-sampled-rss":
            _release_free_memory()
            result["start"] = self._psutil_process.memory_info().rss
            peak = [result["start"]]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], self._psutil_process.memory_info().rss)
                    stop.wait(0.002)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                yield result
            finally:
                stop.set()
                thread.join()
            result["peak"] = max(peak[0], self._psutil_process.memory_info().rss)
        else:
            yield result


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM) for this process; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS, so that RSS tracks live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class CaseResult:
    """Timings (seconds) and peak memory (bytes) of one case at one shape."""

    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    start_bytes: int | None = None
    error: str | None = None

    def summary(self, tokens: int) -> dict[str, Any]:
        median = statistics.median(self.times) if self.times else None
        peak_above_start = (
            self.peak_bytes - self.start_bytes if self.peak_bytes is not None and self.start_bytes is not None else None
        )
        return {
            "status": "error" if self.error else "ok",
            "error": self.error,
            "times_s": self.times,
            "median_s": median,
            "min_s": min(self.times) if self.times else None,
            "tokens_per_s": tokens / median if median else None,
            "peak_bytes": self.peak_bytes,
            "start_bytes": self.start_bytes,
            "peak_above_start_bytes": peak_above_start,
        }


def _short_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


# --------------------------------------------------------------------------------------------
# One shape


def make_inputs(
    backbone: Backbone, batch: int, length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random token ids [B, T] (BOS first where the tokenizer has one), an all-ones mask, the anchor mask.

    All three stay on the host, as :class:`~comprexit_rag.compressor.ComprExITCompressor` passes them: the
    backbone copies the ids to the device, and the head reads the window layout from the host-side anchor
    mask without waiting for the device. (Until round 5 the benchmark moved them to the device first, so the
    head's first step waited for the whole forward pass before it could queue any work.)
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = backbone.fingerprint.vocab_size
    input_ids = torch.randint(min(100, vocab - 1), vocab, (batch, length), generator=generator)
    anchor_mask = torch.ones(batch, length, dtype=torch.bool)
    if backbone.bos_token_id is not None:
        input_ids[:, 0] = backbone.bos_token_id
        anchor_mask[:, 0] = False
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    return input_ids, attention_mask, anchor_mask


def compress_batch(
    backbone: Backbone,
    head: Callable[..., HeadOutput],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    anchor_mask: torch.Tensor,
    ratio: int,
) -> list[torch.Tensor]:
    """ComprExITCompressor's per-batch work: hidden states, the head under autocast, each row's slots."""
    hidden_states = backbone.hidden_states(input_ids, attention_mask)
    with autocast_for(backbone):
        output = head(hidden_states, anchor_mask, ratio=ratio)
    return row_slots(output)


def relative_difference(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max over rows of ||actual - expected|| / ||expected|| (float32)."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        worst = max(worst, float((a - e).norm() / e.norm().clamp_min(1e-12)))
    return worst


def bench_shape(
    backbone: Backbone,
    heads: dict[str, Callable[..., HeadOutput]],
    batch: int,
    length: int,
    *,
    ratio: int,
    warmup: int,
    repeats: int,
    seed: int,
    memory: PeakMemory,
) -> dict[str, Any]:
    """Time and measure the three cases at one shape; returns the JSON-ready record."""
    device = backbone.device
    input_ids, attention_mask, anchor_mask = make_inputs(backbone, batch, length, seed)
    tokens = batch * length
    element_size = torch.empty((), dtype=backbone.dtype).element_size()
    hidden_bytes = backbone.num_hidden_states * batch * length * backbone.hidden_size * element_size

    runs: dict[str, Callable[[], Any]] = {
        "backbone": lambda: backbone.hidden_states(input_ids, attention_mask),
        "compressor": lambda: compress_batch(
            backbone, heads["compressor"], input_ids, attention_mask, anchor_mask, ratio
        ),
    }
    if "reference" in heads:
        runs["reference"] = lambda: compress_batch(
            backbone, heads["reference"], input_ids, attention_mask, anchor_mask, ratio
        )
    results = {name: CaseResult() for name in runs}
    measured_hidden_bytes = None
    outputs: dict[str, list[torch.Tensor]] = {}

    # Warm-up (and, for the backbone, the measured size of the hidden states it returns).
    for name, run in runs.items():
        try:
            for _ in range(warmup):
                value = run()
                synchronize(device)
            if name == "backbone":
                measured_hidden_bytes = sum(state.numel() * state.element_size() for state in value)
            else:
                outputs[name] = [row.cpu() for row in value]
            del value
        except (torch.OutOfMemoryError, RuntimeError) as error:
            results[name].error = _short_error(error)
        free_device_memory(device)

    # Timed repetitions, round-robin over the cases.
    for _ in range(repeats):
        for name, run in runs.items():
            result = results[name]
            if result.error:
                continue
            try:
                with memory.measure() as mem:
                    synchronize(device)
                    start = time.perf_counter()
                    value = run()
                    synchronize(device)
                    elapsed = time.perf_counter() - start
                    del value
                result.times.append(elapsed)
                if mem["peak"] is not None:
                    result.peak_bytes = max(result.peak_bytes or 0, mem["peak"])
                    result.start_bytes = mem["start"] if result.start_bytes is None else result.start_bytes
            except (torch.OutOfMemoryError, RuntimeError) as error:
                result.error = _short_error(error)
            free_device_memory(device)

    cases = {name: results[name].summary(tokens) for name in runs}
    base = cases["backbone"]
    comparison = {}
    for name in (name for name in cases if name != "backbone"):
        case = cases[name]
        throughput_ratio = (
            case["tokens_per_s"] / base["tokens_per_s"] if case["tokens_per_s"] and base["tokens_per_s"] else None
        )
        extra = (
            case["peak_bytes"] - base["peak_bytes"]
            if case["peak_bytes"] is not None and base["peak_bytes"] is not None
            else None
        )
        comparison[name] = {
            "throughput_ratio": throughput_ratio,
            "extra_peak_bytes": extra,
            "extra_over_hidden_states": extra / hidden_bytes if extra is not None else None,
            "meets_throughput_goal": throughput_ratio >= THROUGHPUT_GOAL if throughput_ratio is not None else None,
            "meets_memory_goal": extra / hidden_bytes <= MEMORY_GOAL if extra is not None else None,
        }
    reference_difference = (
        relative_difference(outputs["reference"], outputs["compressor"])
        if "reference" in outputs and "compressor" in outputs
        else None
    )
    return {
        "shape": f"{batch}x{length}",
        "batch": batch,
        "length": length,
        "tokens": tokens,
        "hidden_states": {
            "count": backbone.num_hidden_states,
            "bytes": hidden_bytes,
            "measured_bytes": measured_hidden_bytes,
        },
        "cases": cases,
        "comparison": comparison,
        "reference_vs_compressor_max_rel_diff": reference_difference,
    }


# --------------------------------------------------------------------------------------------
# Report


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(records: list[dict[str, Any]], memory_method: str | None) -> str:
    """A short table of the results, and the goal check."""
    lines = [
        f"Memory: {memory_method or 'not measured'}; GiB. Goals: throughput ratio >= {THROUGHPUT_GOAL}, "
        f"extra / hidden states <= {MEMORY_GOAL}.",
        "",
        "| shape | case | median s | tokens/s | peak GiB | ratio vs (a) | extra GiB | extra / hidden |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for record in records:
        for name, case in record["cases"].items():
            comparison = record["comparison"].get(name, {})
            if case["status"] == "error":
                lines.append(f"| {record['shape']} | {name} | {case['error']} | | | | | |")
                continue
            lines.append(
                f"| {record['shape']} | {name} | {_num(case['median_s'], '.4f')} | "
                f"{_num(case['tokens_per_s'], ',.0f')} | {_gib(case['peak_bytes'])} | "
                f"{_num(comparison.get('throughput_ratio'), '.3f') if comparison else '1'} | "
                f"{_gib(comparison.get('extra_peak_bytes')) if comparison else ''} | "
                f"{_num(comparison.get('extra_over_hidden_states'), '.3f') if comparison else ''} |"
            )
        lines.append(
            f"| {record['shape']} | hidden states | | | {_gib(record['hidden_states']['bytes'])} | | | "
            f"max rel diff (c) vs (b): {_num(record['reference_vs_compressor_max_rel_diff'], '.2e')} |"
        )
    for record in records:
        comparison = record["comparison"]["compressor"]
        lines.append(
            f"\n{record['shape']}: throughput goal "
            f"{_verdict(comparison['meets_throughput_goal'])}, memory goal {_verdict(comparison['meets_memory_goal'])}"
        )
    return "\n".join(lines)


def _verdict(value: bool | None) -> str:
    return "n/a" if value is None else ("met" if value else "MISSED")


# --------------------------------------------------------------------------------------------
# Entry point


def parse_shape(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"shape must look like 64x512, got {text!r}") from error
    if batch < 1 or length < 2:
        raise argparse.ArgumentTypeError(f"shape needs batch >= 1 and length >= 2, got {text!r}")
    return batch, length


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on GPU, else float32")
    parser.add_argument(
        "--backbone", default=None, help="local path or model name; omitted or 'none': the embedded default"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the backbone from its config with random weights (needs only config + tokenizer files)",
    )
    parser.add_argument("--head", default=None, help="trained head checkpoint directory (default: freshly initialised)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None, help="BATCHxLENGTH ...")
    parser.add_argument("--ratio", type=int, default=None, help="compression ratio (default: the head's)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per case, >= 1 (default 3 GPU, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10 GPU, 3 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the head (and the reference head)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out case (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.backbone is not None and args.backbone.lower() == "none":
        args.backbone = None
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available.")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = args.shapes or ([(64, 512), (8, 4096)] if device.type == "cuda" else [(2, 256)])
    warmup = max(1, args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1))
    repeats = args.repeats if args.repeats is not None else (10 if device.type == "cuda" else 3)
    if args.compile:
        warmup = max(warmup, 2)

    torch.manual_seed(args.seed)
    backbone = load_backbone(args.backbone, device, dtype, args.random_weights)
    head = load_head(args.head, backbone)
    ratio = args.ratio or head.config.ratio
    heads: dict[str, Callable[..., HeadOutput]] = {"compressor": head}
    if not args.skip_reference:
        heads["reference"] = reference_head(head)
    if args.compile:
        heads = {name: torch.compile(module) for name, module in heads.items()}
    memory = PeakMemory(device)
    print(
        f"backbone {backbone.name} ({backbone.num_parameters():,} parameters, {backbone.dtype}, {device}); "
        f"head {head.num_parameters():,} parameters; ratio {ratio}; memory: {memory.method}",
        file=sys.stderr,
    )

    records = []
    with torch.inference_mode():
        for batch, length in shapes:
            print(f"shape {batch}x{length} ...", file=sys.stderr)
            record = bench_shape(
                backbone,
                heads,
                batch,
                length,
                ratio=ratio,
                warmup=warmup,
                repeats=repeats,
                seed=args.seed,
                memory=memory,
            )
            records.append(record)
            free_device_memory(device)
            print(markdown([record], memory.method), file=sys.stderr)

    report = {
        "issue": "Compression speed and memory: close to the frozen forward pass",
        "goals": {"throughput_ratio_min": THROUGHPUT_GOAL, "extra_peak_over_hidden_states_max": MEMORY_GOAL},
        "environment": machine_environment(device),
        "settings": {
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "shapes": [f"{b}x{t}" for b, t in shapes],
            "warmup": warmup,
            "repeats": repeats,
            "compile": args.compile,
            "ratio": ratio,
            "seed": args.seed,
            "memory_method": memory.method,
            "inference_mode": True,
            "timing": "median of round-robin repetitions; perf_counter around synchronised calls",
        },
        "backbone": {
            "name": backbone.name,
            "source": args.backbone,
            "random_weights": args.random_weights,
            "parameters": backbone.num_parameters(),
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "num_hidden_states": backbone.num_hidden_states,
            "hidden_size": backbone.hidden_size,
            "attn_implementation": getattr(backbone.model.config, "_attn_implementation", None),
            "fingerprint": backbone.fingerprint.digest,
        },
        "head": {
            "source": args.head or "freshly initialised (ComprExITHead.for_backbone)",
            "parameters": head.num_parameters(),
            "config": head.config.to_dict(),
        },
        "results": records,
    }
    report["environment"]["load_average_at_end"] = load_average()
    print(markdown(records, memory.method))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
